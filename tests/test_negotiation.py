"""Accept negotiation for frames (PS3.18 §8.7), as real clients send it."""

from __future__ import annotations

import pytest

from framecdn.origin.negotiation import (
    NotAcceptable,
    Representation,
    negotiate,
    parse_accept,
)

EVLE = "1.2.840.10008.1.2.1"
J2K = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
NATIVE = Representation(False, "application/octet-stream", EVLE)
JP2 = Representation(False, "image/jp2", J2K)
JP2_LOSSY = Representation(False, "image/jp2", J2K_LOSSY)
RLE_STORED = Representation(False, "image/dicom-rle", RLE)

OHIF = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'


def multi(stored: Representation) -> Representation:
    return Representation(True, stored.media_type, stored.transfer_syntax_uid)


def single(stored: Representation) -> Representation:
    return Representation(False, stored.media_type, stored.transfer_syntax_uid)


@pytest.mark.parametrize(
    "accept",
    [
        OHIF,
        "multipart/related; type=application/octet-stream; transfer-syntax=*",
        'multipart/related; type="application/octet-stream"',
        "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
        'multipart/related; type="application/octet-stream"; transfer-syntax="1.2.840.10008.1.2.1"',
        'Multipart/Related; TYPE="application/octet-stream"; Transfer-Syntax=*',
        "multipart/related",
        'multipart/related; type="*/*"',
        "multipart/related; type=*/*; transfer-syntax=*",
        "*/*",
        "",
        None,
    ],
)
def test_native_multipart_forms(accept: str | None) -> None:
    assert negotiate(accept, NATIVE, 3) == multi(NATIVE)


def test_ohif_default_on_compressed_frames_gets_the_stored_codestream() -> None:
    # transfer-syntax=* lets the server choose: the codestream as stored, labelled
    # application/octet-stream with its real UID (Cornerstone decodes by the UID).
    chosen = negotiate(OHIF, JP2, 2)
    assert chosen == Representation(True, "application/octet-stream", J2K)
    assert chosen.part_content_type == f"application/octet-stream; transfer-syntax={J2K}"
    assert negotiate(
        f'multipart/related; type="application/octet-stream"; transfer-syntax={J2K}', JP2, 1
    ) == Representation(True, "application/octet-stream", J2K)
    assert negotiate("application/octet-stream; transfer-syntax=*", JP2, 1) == Representation(
        False, "application/octet-stream", J2K
    )


def test_plain_octet_stream_on_compressed_frames_is_406() -> None:
    # No transfer-syntax means the default, Explicit VR Little Endian: that needs transcoding.
    with pytest.raises(NotAcceptable) as info:
        negotiate('multipart/related; type="application/octet-stream"', JP2, 1)
    assert any("image/jp2" in offer and J2K in offer for offer in info.value.available)
    with pytest.raises(NotAcceptable):
        negotiate(
            'multipart/related; type="application/octet-stream"; '
            "transfer-syntax=1.2.840.10008.1.2.1",
            JP2,
            1,
        )


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90',
        "multipart/related; type=image/jp2",  # absent ts = the media type's default (.90)
        'multipart/related; type="image/jp2"; transfer-syntax="*"',
        'multipart/related; type="image/*"',
        "multipart/related; type=*/*",
        "*/*",
    ],
)
def test_compressed_multipart(accept: str) -> None:
    assert negotiate(accept, JP2, 2) == multi(JP2)


def test_absent_transfer_syntax_means_the_default_one() -> None:
    with pytest.raises(NotAcceptable):
        negotiate('multipart/related; type="image/jp2"', JP2_LOSSY, 1)
    assert negotiate('multipart/related; type="image/jp2"; transfer-syntax=*', JP2_LOSSY, 1) == (
        multi(JP2_LOSSY)
    )


def test_explicit_other_syntax_is_406_naming_what_is_available() -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate('multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.91',
                  JP2, 1)
    assert info.value.available == [
        f'multipart/related; type="image/jp2"; transfer-syntax={J2K}',
        f"image/jp2; transfer-syntax={J2K}",
    ]
    assert J2K in str(info.value)


@pytest.mark.parametrize(
    "accept",
    [
        "application/octet-stream",
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
        'application/octet-stream; transfer-syntax="*"',
        "application/*",
    ],
)
def test_single_part_native_for_one_frame(accept: str) -> None:
    assert negotiate(accept, NATIVE, 1) == single(NATIVE)


def test_single_part_cannot_carry_several_frames() -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate("application/octet-stream", NATIVE, 2)
    assert len(info.value.available) == 1  # multipart only
    # ...but a multipart alternative in the same header is taken.
    assert negotiate(f"application/octet-stream, {OHIF}", NATIVE, 2) == multi(NATIVE)


def test_single_part_compressed() -> None:
    assert negotiate("image/jp2", JP2, 1) == single(JP2)
    assert negotiate("image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90", JP2, 1) == single(JP2)
    assert negotiate("image/*", JP2, 1) == single(JP2)
    assert negotiate("image/x-dicom-rle", RLE_STORED, 1) == single(RLE_STORED)
    with pytest.raises(NotAcceptable):
        negotiate("image/jpeg", JP2, 1)


def test_q_values_order_and_exclude() -> None:
    accept = f"application/octet-stream; q=0.5, {OHIF}; q=0.9"
    assert negotiate(accept, NATIVE, 1) == multi(NATIVE)
    accept = f"application/octet-stream; q=1, {OHIF}; q=0.9"
    assert negotiate(accept, NATIVE, 1) == single(NATIVE)
    with pytest.raises(NotAcceptable):
        negotiate("multipart/related; q=0, */*; q=0", NATIVE, 1)


def test_equal_q_keeps_header_order() -> None:
    assert negotiate(f"application/octet-stream, {OHIF}", NATIVE, 1) == single(NATIVE)
    assert negotiate(f"{OHIF}, application/octet-stream", NATIVE, 1) == multi(NATIVE)


def test_several_media_types_pick_the_one_that_is_stored() -> None:
    accept = (
        'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80, '
        'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90, '
        f"{OHIF}"
    )
    assert negotiate(accept, JP2, 4) == multi(JP2)
    assert negotiate(accept, NATIVE, 4) == multi(NATIVE)
    # OHIF's transfer-syntax=* takes what the others do not: RLE as octet-stream.
    assert negotiate(accept, RLE_STORED, 4) == Representation(True, "application/octet-stream", RLE)
    with pytest.raises(NotAcceptable):
        negotiate(accept.rsplit(", ", 1)[0], RLE_STORED, 4)


def test_duplicate_parameters_are_alternatives() -> None:
    accept = (
        'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.91; '
        "transfer-syntax=1.2.840.10008.1.2.4.90"
    )
    assert negotiate(accept, JP2, 1) == multi(JP2)
    accept = 'multipart/related; type="image/jls"; type="image/jp2"; transfer-syntax=*'
    assert negotiate(accept, JP2, 1) == multi(JP2)


def test_parse_tolerates_quotes_commas_and_garbage() -> None:
    ranges = parse_accept('multipart/related; type="a/b, c"; q=0.3, garbage, text/plain;q=x')
    assert [r.media_type for r in ranges] == ["text/plain", "multipart/related"]
    assert ranges[1].values("type") == ["a/b, c"]
    assert ranges[1].q == pytest.approx(0.3)


def test_unrelated_accept_is_406() -> None:
    with pytest.raises(NotAcceptable):
        negotiate("application/dicom", NATIVE, 1)
    with pytest.raises(NotAcceptable):
        negotiate("multipart/related; type=application/dicom", NATIVE, 1)


def test_content_types() -> None:
    rep = multi(JP2)
    assert rep.response_content_type("B") == 'multipart/related; type="image/jp2"; boundary=B'
    assert rep.part_content_type == f"image/jp2; transfer-syntax={J2K}"
    native = single(NATIVE).response_content_type()
    assert native == f"application/octet-stream; transfer-syntax={EVLE}"
