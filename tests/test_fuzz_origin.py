"""Fuzzing the origin's request parsing: whatever a client sends, never a 5xx, never slow.

Hypothesis (derandomized: the same examples on every run) builds requests from pieces
real clients send and pieces they should not: UIDs valid, mangled, percent-encoded,
with control characters or other scripts' digits; frame lists with ``%2C``, huge
numbers, signs, spaces, duplicates, hundreds of items; Accept headers of every media
type and parameter, quoted or not, with odd q-values; Range, If-None-Match and If-Range
valid or garbage. Each is sent as raw bytes on its own connection to a real origin
(uvicorn, the bounded httptools protocol) over a small instance in the real store, and:

- the status is below 500, and the answer comes within :data:`BOUND` seconds;
- a body announced with a Content-Length is that long (never a short body sent as
  complete);
- a frame answered 200 or 206 as a single part is exactly the frame's bytes (or the
  range the Content-Range names).

``FRAMECDN_FUZZ_EXAMPLES`` sets the examples per property (default 200); a long run is
described in docs/fuzzing.md.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.synthetic import write_tomosynthesis
from tests.origin_fixtures import Expected, RunningOrigin, ingest, run_origin

EXAMPLES = int(os.environ.get("FRAMECDN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,  # BOUND below is checked per request; hypothesis' deadline is per example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
#: Seconds any one answer may take (all are local; a stalled worker would show here).
BOUND = 3.0
FRAMES = 3
EVLE = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Target(tuple[RunningOrigin, Expected]):
    """The origin and its instance; printed short (hypothesis prints its arguments)."""

    def __repr__(self) -> str:
        return f"Target({self[0].base})"


@pytest.fixture(scope="module")
def target(s3_store: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    settings_ = s3_store.settings(prefix=f"fuzz-{uuid.uuid4().hex[:10]}")
    path = tmp_path_factory.mktemp("fuzz-origin") / "tomo.dcm"
    uids = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_uid": "1.2.3.4.5"}
    write_tomosynthesis(path, frames=FRAMES, rows=16, columns=16, seed=21, **uids)
    inst = ingest(path, settings_)
    with run_origin(settings_) as served:
        yield Target((served, inst))


def send(
    served: RunningOrigin, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]]
) -> Answer:
    """One raw HTTP/1.1 request on its own connection; the whole answer, within BOUND."""
    port = int(served.base.rsplit(":", 1)[1])
    head = method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
        sock.sendall(head)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    took = time.monotonic() - started
    assert took < BOUND, f"{took:.2f} s for {path[:200]!r}"
    status_line, _, rest = raw.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    parsed = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        parsed[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    status = int(status_line.split(b" ")[1])
    if method == b"GET" and "content-length" in parsed and status not in (204, 304):
        assert len(body) == int(parsed["content-length"]), "a body shorter than announced"
    return Answer(status, parsed, body)


# Strategies ---------------------------------------------------------------------------

#: Characters that look like digits or separators to someone, not to a UID.
ODD = [
    "\u00b2", "\u0661", "\u0663", "\uff10", "\U0001d7d9",
    "\n", "\r", "\t", " ", "%", "/", "..", "\x00", "\u200b", "+", "-",
]


def mangled(valid: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(valid),
        st.builds(lambda odd, at: valid[:at] + odd + valid[at:], st.sampled_from(ODD),
                  st.integers(0, len(valid))),
        st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4}){0,8}", fullmatch=True),
        st.text(max_size=70),
        st.just("1." + "2" * 80),
    )


def segment(text: str, encode: bool) -> bytes:
    """A path segment: percent-encoded, or as raw UTF-8 bytes (invalid ones included)."""
    return quote(text, safe="").encode() if encode else text.encode("utf-8", "surrogatepass")


number = st.one_of(
    st.integers(1, FRAMES + 1).map(str),
    st.integers(-10, 10**40).map(str),
    st.sampled_from(
        ["", "0", "01", " 1", "1 ", "+1", "1.0", "1e3", "\u00b2", "\u0661", "%31", "1%0A", "\u2170"]
    ),
)
frame_list = st.builds(
    lambda items, sep: sep.join(items),
    st.lists(number, min_size=1, max_size=300),
    st.sampled_from([",", "%2C", "%2c", ";", ", ", ",,"]),
)
header_text = st.text(
    alphabet=st.characters(max_codepoint=255, blacklist_characters="\r\n"), max_size=60
)
media = st.one_of(
    st.sampled_from(
        [
            "multipart/related", "application/octet-stream", "image/jp2", "image/jpeg", "*/*",
            "image/*", "multipart/*", "application/dicom+json", "application/json", "text/html",
            "", "*", "/", "a/b/c", "MULTIPART/RELATED",
        ]
    ),
    header_text,
)
param_value = st.one_of(
    st.sampled_from(
        [
            '"application/octet-stream"', "application/octet-stream", '"image/jp2"', "*", '"*"',
            EVLE, f'"{EVLE}"', "1.2.840.10008.1.2.4.90", "0", "0.5", "1", "-1", "nan", "inf",
            "1e400", '"unterminated', '"\\"', '""',
        ]
    ),
    header_text,
)
param = st.builds(
    lambda name, value: f"{name}={value}",
    st.one_of(
        st.sampled_from(["type", "transfer-syntax", "q", "boundary", "TYPE", "Q"]), header_text
    ),
    param_value,
)
media_range = st.builds(
    lambda m, params: "; ".join([m, *params]), media, st.lists(param, max_size=4)
)
#: What real clients send (OHIF, Cornerstone, dicomweb-client, curl).
REAL_ACCEPTS = [
    "application/octet-stream",
    "application/octet-stream; transfer-syntax=*",
    f"application/octet-stream; transfer-syntax={EVLE}",
    'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    "multipart/related; type=application/octet-stream",
    "*/*",
    "image/jp2",
]
accept = st.one_of(
    st.none(),
    st.sampled_from(REAL_ACCEPTS),
    st.builds(", ".join, st.lists(media_range, min_size=1, max_size=6)),
    header_text,
)
#: Digits of other scripts and superscripts: ``str.isdigit`` says yes to all of them.
OTHER_DIGITS = [
    "\u00b2", "\u00b3", "\u00b9", "\u0661", "\u0663", "\uff10", "\U0001d7d9", "1\u00b2", "\u00b20"
]
position = st.one_of(
    st.integers(0, 600).map(str), st.integers(0, 10**30).map(str),
    st.sampled_from(["", "-1", " 1", "0x10", "1.5", *OTHER_DIGITS]),
)
byte_range = st.one_of(
    st.none(),
    st.builds(lambda a, b: f"bytes={a}-{b}", position, position),
    st.builds(lambda a: f"bytes={a}-", position),
    st.builds(lambda b: f"bytes=-{b}", position),
    st.builds(lambda a, b, c, d: f"bytes={a}-{b},{c}-{d}", position, position, position, position),
    st.builds(lambda unit, rest: f"{unit}={rest}", st.sampled_from(["BYTES", "items", "bytes "]),
              header_text),
    header_text,
)
validator = st.one_of(
    st.none(),
    st.sampled_from(["*", "W/*", '""', '"x"', 'W/"x"', ",", '"a", W/"b"']),
    header_text,
)


def encode(value: str) -> bytes:
    """A header value as bytes: latin-1 (as the server reads them) when it can be, else UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def frame_headers(
    accept_: str | None, range_: str | None, if_none_match: str | None, if_range: str | None
) -> list[tuple[bytes, bytes]]:
    named = (
        (b"Accept", accept_),
        (b"Range", range_),
        (b"If-None-Match", if_none_match),
        (b"If-Range", if_range),
    )
    return [(name, encode(value)) for name, value in named if value is not None]


def check_frame_body(answer: Answer, frame: bytes) -> None:
    """A single-part 200 is the frame, a 206 the range its Content-Range names."""
    if answer.headers.get("content-type", "").startswith("multipart/"):
        return
    if answer.status == 206:
        first, last = answer.headers["content-range"].split()[1].split("/")[0].split("-")
        assert answer.body == frame[int(first) : int(last) + 1]
    elif answer.status == 200:
        assert answer.body == frame


# Properties ---------------------------------------------------------------------------


@FUZZ
@given(
    number=st.integers(1, FRAMES),
    accept_=accept,
    range_=byte_range,
    if_none_match=validator,
    if_range=validator,
    head=st.booleans(),
)
def test_frame_request_headers_never_fail_on_our_side(
    target, number, accept_, range_, if_none_match, if_range, head
) -> None:
    """One frame of the instance, every header fuzzed; the bytes checked when served."""
    served, inst = target
    path = served.frames_url(inst, str(number)).removeprefix(served.base).encode()
    headers = frame_headers(accept_, range_, if_none_match, if_range)
    answer = send(served, b"HEAD" if head else b"GET", path, headers)
    assert answer.status < 500, answer
    if not head:
        check_frame_body(answer, inst.frames[number - 1])


@FUZZ
@given(
    number=st.integers(1, FRAMES),
    range_=byte_range,
    if_range=st.one_of(st.none(), st.none(), validator),
)
def test_ranges_of_a_single_frame_are_exact_or_ignored(target, number, range_, if_range) -> None:
    """Single-part answers, where ranges apply: a 206 is exactly the range it names."""
    served, inst = target
    path = served.frames_url(inst, str(number)).removeprefix(served.base).encode()
    headers = frame_headers("application/octet-stream", range_, None, if_range)
    answer = send(served, b"GET", path, headers)
    assert answer.status < 500, answer  # 400 too: the server refuses control characters
    check_frame_body(answer, inst.frames[number - 1])


@FUZZ
@given(
    study=st.data(),
    frames=frame_list,
    accept_=accept,
    range_=byte_range,
    if_none_match=validator,
    if_range=validator,
    head=st.booleans(),
    encode_path=st.booleans(),
)
def test_frame_request_paths_never_fail_on_our_side(
    target, study, frames, accept_, range_, if_none_match, if_range, head, encode_path
) -> None:
    """UIDs and frame lists fuzzed (with the headers)."""
    served, inst = target
    uids = [
        study.draw(mangled(inst.study)),
        study.draw(mangled(inst.series)),
        study.draw(mangled(inst.sop)),
    ]
    root = served.root.removeprefix(served.base).encode()
    path = (
        root + b"/studies/" + segment(uids[0], encode_path) + b"/series/"
        + segment(uids[1], encode_path) + b"/instances/" + segment(uids[2], encode_path)
        + b"/frames/"
        + (quote(frames, safe=",%").encode() if encode_path else frames.encode("utf-8"))
    )
    headers = frame_headers(accept_, range_, if_none_match, if_range)
    answer = send(served, b"HEAD" if head else b"GET", path, headers)
    assert answer.status < 500, answer
    if head or answer.status not in (200, 206) or uids != [inst.study, inst.series, inst.sop]:
        return
    if frames.isascii() and frames.isdigit():
        check_frame_body(answer, inst.frames[int(frames) - 1])


@FUZZ
@given(
    level=st.sampled_from(["study", "series", "instance"]),
    data=st.data(),
    accept_=accept,
    encoding=st.one_of(st.none(), header_text, st.sampled_from(["gzip", "gzip;q=0", "*", "br"])),
    if_none_match=validator,
    encode_path=st.booleans(),
)
def test_metadata_requests_never_fail_on_our_side(
    target, level, data, accept_, encoding, if_none_match, encode_path
) -> None:
    served, inst = target
    root = served.root.removeprefix(served.base).encode()
    path = root + b"/studies/" + segment(data.draw(mangled(inst.study)), encode_path)
    if level in ("series", "instance"):
        path += b"/series/" + segment(data.draw(mangled(inst.series)), encode_path)
    if level == "instance":
        path += b"/instances/" + segment(data.draw(mangled(inst.sop)), encode_path)
    headers = [
        (name, encode(value))
        for name, value in (
            (b"Accept", accept_),
            (b"Accept-Encoding", encoding),
            (b"If-None-Match", if_none_match),
        )
        if value is not None
    ]
    answer = send(served, b"GET", path + b"/metadata", headers)
    assert answer.status < 500, answer


@FUZZ
@given(
    path=st.binary(max_size=300), method=st.sampled_from([b"GET", b"HEAD", b"OPTIONS", b"POST"])
)
def test_any_request_target_is_answered_below_500(target, path: bytes, method: bytes) -> None:
    """Whatever bytes follow the method (but a line break), the origin answers a 4xx."""
    served, _ = target
    path = b"/" + path.replace(b"\r", b"").replace(b"\n", b"").replace(b" ", b"%20")
    answer = send(served, method, path, [])
    assert answer.status < 500, answer
