"""The shared contract: keys, UIDs, index schema, transfer syntaxes, clients.

Configuration is tested in test_config.py, presigning in test_sigv4.py.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from pydicom import uid

from framecdn.framestore.index import FrameEntry, InstanceIndex, InvalidIndex, SourceInfo
from framecdn.framestore.keys import InstanceKey, InvalidUID, KeyLayout, validate_uid
from framecdn.framestore.s3 import Presigner, make_client
from framecdn.framestore.transfer_syntax import (
    DEFAULT_SYNTAX_FOR_MEDIA_TYPE,
    MEDIA_TYPE_SYNTAXES,
    UnsupportedTransferSyntax,
    content_type,
    stored_representation,
)

KEY = InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4.5")
GENERATION = "5eed" * 8


@pytest.mark.parametrize(
    "uid",
    ["", "1.2.a", "1..2", "../etc", "1.2/3", "1" * 65, "1.2.3 ", ".1.2", "1.2."],
)
def test_bad_uids_never_become_keys(uid: str) -> None:
    with pytest.raises(InvalidUID):
        validate_uid(uid)


def test_uid_of_64_characters_is_accepted() -> None:
    uid = "1." + "2" * 62
    assert validate_uid(uid) == uid


def test_key_layout_mirrors_dicomweb_urls() -> None:
    layout = KeyLayout("clinic-a")
    index = _index()
    assert layout.frame_of(index, 7) == (
        f"clinic-a/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/{GENERATION}/frames/7"
    )
    assert layout.metadata_of(index).endswith(f"/instances/1.2.3.4.5/{GENERATION}/metadata")
    assert layout.index(KEY).endswith("/instances/1.2.3.4.5/index.json")
    assert KeyLayout("").frame_of(index, 1).startswith("studies/1.2.3/")
    assert KeyLayout("/a/b/").prefix == "a/b/"
    with pytest.raises(ValueError, match="1-based"):
        layout.frame_of(index, 0)
    with pytest.raises(ValueError, match="prefix"):
        KeyLayout("a/../b")


def test_parse_index_key_round_trips_and_rejects_others() -> None:
    layout = KeyLayout("p")
    assert layout.parse_index_key(layout.index(KEY)) == KEY
    assert layout.parse_index_key(layout.frame_of(_index(), 1)) is None
    assert layout.parse_index_key("q/" + layout.index(KEY)[2:]) is None


def _index(frames: int = 2) -> InstanceIndex:
    return InstanceIndex(
        study_instance_uid=KEY.study,
        series_instance_uid=KEY.series,
        sop_instance_uid=KEY.instance,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.13.1.3",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        media_type="application/octet-stream",
        number_of_frames=frames,
        rows=2,
        columns=2,
        bits_allocated=16,
        bits_stored=12,
        samples_per_pixel=1,
        photometric_interpretation="MONOCHROME2",
        frames=tuple(FrameEntry(8, f"{i:064x}") for i in range(frames)),
        metadata_size=10,
        metadata_sha256="0" * 64,
        source=SourceInfo("a.dcm", 100, "1.2.840.10008.1.2", "f" * 64),
        ingested_at="2026-11-25T00:00:00+00:00",
        ingest_id=GENERATION,
    )


def test_schema_1_indexes_are_read_with_their_objects_under_the_instance() -> None:
    """Instances written before generations stay readable, at their old keys."""
    raw = _index().to_json().replace(b'"schema":2', b'"schema":1').replace(
        GENERATION.encode(), b"c0ffee"
    )
    old = InstanceIndex.from_json(raw)
    assert old.schema == 1 and old.generation is None
    assert KeyLayout("p").frame_of(old, 2).endswith("/instances/1.2.3.4.5/frames/2")
    assert old.identity != _index().identity


def test_a_schema_2_index_must_name_a_valid_generation() -> None:
    with pytest.raises(InvalidIndex, match="generation"):
        InstanceIndex.from_json(_index().to_json().replace(GENERATION.encode(), b"../x"))


def test_index_round_trips_through_json() -> None:
    index = _index()
    again = InstanceIndex.from_json(index.to_json())
    assert again == index
    assert again.frame(2).sha256 == f"{1:064x}"
    assert again.total_frame_bytes == 16
    with pytest.raises(IndexError):
        again.frame(3)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda raw: raw.replace(b'"schema":2', b'"schema":99'),
        lambda raw: raw.replace(b'"number_of_frames":2', b'"number_of_frames":3'),
        lambda raw: raw[:-5],
        lambda raw: raw.replace(b'"frames":', b'"framez":'),
    ],
)
def test_malformed_index_is_refused(mutate) -> None:
    with pytest.raises(InvalidIndex):
        InstanceIndex.from_json(mutate(_index().to_json()))


def test_transfer_syntax_representations() -> None:
    assert stored_representation("1.2.840.10008.1.2.2") == (
        "1.2.840.10008.1.2.1",
        "application/octet-stream",
    )
    assert stored_representation("1.2.840.10008.1.2.4.90") == (
        "1.2.840.10008.1.2.4.90",
        "image/jp2",
    )
    assert stored_representation("1.2.840.10008.1.2.4.201")[1] == "image/jphc"
    with pytest.raises(UnsupportedTransferSyntax):
        stored_representation("1.2.840.10008.1.2.4.100")  # MPEG2 video
    assert (
        content_type("image/jls", "1.2.840.10008.1.2.4.80")
        == "image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"
    )


@pytest.mark.parametrize(
    ("group", "media_types"),
    [
        (uid.JPEGTransferSyntaxes, {"image/jpeg"}),
        (uid.JPEGLSTransferSyntaxes, {"image/jls"}),
        (uid.JPEG2000TransferSyntaxes, {"image/jp2", "image/jpx", "image/jphc"}),
        (uid.RLETransferSyntaxes, {"image/dicom-rle"}),
    ],
)
def test_every_syntax_of_pydicoms_image_groups_is_served(group, media_types) -> None:
    assert {stored_representation(s)[1] for s in group} == media_types
    assert all(stored_representation(s)[0] == s for s in group)  # kept as is


def test_native_syntaxes_become_explicit_little_endian_and_video_is_refused() -> None:
    for syntax in uid.UncompressedTransferSyntaxes:
        stored = stored_representation(syntax)
        assert stored == (uid.ExplicitVRLittleEndian, "application/octet-stream")
    for syntax in uid.MPEGTransferSyntaxes:
        with pytest.raises(UnsupportedTransferSyntax):
            stored_representation(syntax)


def test_each_media_types_default_syntax_is_one_it_carries() -> None:
    assert set(DEFAULT_SYNTAX_FOR_MEDIA_TYPE) == set(MEDIA_TYPE_SYNTAXES)
    for media_type, syntax in DEFAULT_SYNTAX_FOR_MEDIA_TYPE.items():
        assert syntax in MEDIA_TYPE_SYNTAXES[media_type]
    assert MEDIA_TYPE_SYNTAXES["image/jpx"] == {uid.JPEG2000MCLossless, uid.JPEG2000MC}
    assert MEDIA_TYPE_SYNTAXES["image/jp2"] == {uid.JPEG2000Lossless, uid.JPEG2000}


def test_store_checks_signatures(s3_store, settings) -> None:
    wrong = make_client(settings.with_overrides(aws_secret_access_key="not-the-secret"))
    with pytest.raises(ClientError) as caught:
        wrong.list_objects_v2(Bucket=settings.bucket)
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_store_verifies_checksums(s3_client, settings) -> None:
    import base64
    import hashlib

    with pytest.raises(ClientError) as caught:
        s3_client.put_object(
            Bucket=settings.bucket,
            Key=f"{settings.prefix}/bad",
            Body=b"frame bytes",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(b"other").digest()).decode(),
        )
    assert caught.value.response["Error"]["Code"] == "BadDigest"


def test_presigned_url_uses_the_public_endpoint(settings) -> None:
    public = settings.with_overrides(s3_public_endpoint="https://frames.example.org")
    assert Presigner.public(public).url("a/b").startswith("https://frames.example.org/")
