"""``framecdn receive`` with real senders: DCMTK's storescu and pynetdicom.

Each test starts the receiver as a child process on a free loopback port against the
session's SeaweedFS, sends to it, and reads the bucket back: every frame byte-exact
against pydicom, and nothing committed for what the sender was told failed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.framestore.s3 import make_client
from framecdn.ingest.pipeline import IngestResult
from framecdn.process_stop import stop_process
from framecdn.receive import status
from framecdn.receive.storescp import _contradiction
from framecdn.synthetic import write_encapsulated
from tests.cli_fixtures import cli_environment, framecdn_command
from tests.dicom_factory import small_instance
from tests.origin_fixtures import free_port
from tests.store_faults import own_store

TITLE = "FRAMECDN"


class Receiver:
    def __init__(self, process: subprocess.Popen[str], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def start_receiver(settings, tmp_path) -> Iterator:
    started: list[Receiver] = []

    def start(store: Settings | None = None, **env: str) -> Receiver:
        port = free_port()
        log = tmp_path / f"receive-{port}.log"
        environ = dict(
            cli_environment(store or settings), FRAMECDN_RECEIVE_PORT=str(port),
            FRAMECDN_RECEIVE_SPOOL_DIR=str(tmp_path / "spool"), **env,
        )
        with log.open("w") as out:
            process = subprocess.Popen(
                framecdn_command("receive"), env=environ, stdout=out, stderr=subprocess.STDOUT,
                text=True,
            )
        receiver = Receiver(process, port, log)
        started.append(receiver)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, receiver.output()
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return receiver
            time.sleep(0.1)
        raise AssertionError(f"receiver did not listen: {receiver.output()}")

    yield start
    for receiver in started:
        stop_process(receiver.process, timeout=15)


def stored_index(s3_client, settings, path: Path) -> InstanceIndex | None:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    key = InstanceKey(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    try:
        raw = s3_client.get_object(
            Bucket=settings.bucket, Key=KeyLayout(settings.prefix).index(key)
        )["Body"].read()
    except s3_client.exceptions.NoSuchKey:
        return None
    return InstanceIndex.from_json(raw)


def source_frames(path: Path) -> list[bytes]:
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames", 1))
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=frames))
    size = len(ds.PixelData) // frames
    return [ds.PixelData[i * size:(i + 1) * size] for i in range(frames)]


def assert_frames_stored(s3_client, settings, path: Path) -> None:
    index = stored_index(s3_client, settings, path)
    assert index is not None, f"{path.name} is not committed in the bucket"
    layout = KeyLayout(settings.prefix)
    stored = [
        s3_client.get_object(Bucket=settings.bucket, Key=layout.frame_of(index, n))[
            "Body"
        ].read()
        for n in range(1, index.number_of_frames + 1)
    ]
    assert stored == source_frames(path)


def send(port: int, *paths: Path, calling: str = "SENDER") -> list[int]:
    """C-STORE each file with pynetdicom; the status of each (-1: no response)."""
    ae = AE(ae_title=calling)
    datasets = [pydicom.dcmread(path) for path in paths]
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=TITLE)
    assert assoc.is_established, "association refused"
    try:
        return [
            int(status.Status) if status else -1
            for status in (assoc.send_c_store(ds) for ds in datasets)
        ]
    finally:
        assoc.release()


@pytest.mark.skipif(
    shutil.which("storescu") is None and not os.environ.get("CI"), reason="needs Debian's dcmtk"
)
def test_storescu_sends_a_multiframe_instance_that_is_then_stored_byte_exact(
    start_receiver, s3_client, settings, tmp_path
) -> None:
    receiver = start_receiver()
    native = small_instance(tmp_path / "native.dcm", frames=5, rows=32, columns=24)
    jpeg = write_encapsulated(
        tmp_path / "jpeg.dcm", [b"\xff\xd8frame-one\xff\xd9", b"\xff\xd8frame-two!\xff\xd9"],
        transfer_syntax_uid=str(JPEGBaseline8Bit), rows=8, columns=8, fragments_per_frame=2,
    ).path
    done = subprocess.run(
        ["storescu", "-R", "-aec", TITLE, "-aet", "MODALITY",
         "127.0.0.1", str(receiver.port), str(native)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        ["storescu", "-R", "-aec", TITLE, "-xy", "127.0.0.1", str(receiver.port), str(jpeg)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert_frames_stored(s3_client, settings, native)
    assert_frames_stored(s3_client, settings, jpeg)
    assert "stored" in receiver.output()


def test_echo_and_a_resend_succeed_and_the_instance_is_stored_once(
    start_receiver, s3_client, settings, tmp_path
) -> None:
    receiver = start_receiver()
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title=TITLE)
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()
    path = small_instance(tmp_path / "one.dcm", frames=3)
    assert send(receiver.port, path) == [0x0000]
    first = stored_index(s3_client, settings, path)
    assert send(receiver.port, path) == [0x0000]
    again = stored_index(s3_client, settings, path)
    assert first is not None and again is not None and again.generation == first.generation
    assert_frames_stored(s3_client, settings, path)


def test_a_dataset_that_is_not_the_announced_instance_is_refused(tmp_path) -> None:
    path = small_instance(tmp_path / "one.dcm", frames=2)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert _contradiction(path, ds.SOPClassUID, ds.SOPInstanceUID) is None
    other = _contradiction(path, ds.SOPClassUID, generate_uid())
    assert other is not None and other.Status == status.INVALID_SOP_INSTANCE
    wrong_class = _contradiction(path, "1.2.840.10008.5.1.4.1.1.2", ds.SOPInstanceUID)
    assert wrong_class is not None
    assert wrong_class.Status == status.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_success_is_only_said_of_a_committed_instance() -> None:
    assert status.status_of(IngestResult("x", "ingested")) == status.SUCCESS
    assert status.status_of(IngestResult("x", "skipped")) == status.SUCCESS
    assert status.status_of(IngestResult("x", "failed", retryable=True)) == (
        status.OUT_OF_RESOURCES
    )
    assert status.status_of(IngestResult("x", "failed")) == status.CANNOT_UNDERSTAND
    assert len(status.response(0xC000, "é\\x" * 40).ErrorComment) == 64


def test_a_file_the_splitter_refuses_gets_cannot_understand_and_nothing_in_the_bucket(
    start_receiver, s3_client, settings, tmp_path
) -> None:
    receiver = start_receiver()
    bad = small_instance(tmp_path / "bad.dcm", frames=4)
    ds = pydicom.dcmread(bad)
    ds.NumberOfFrames = 9  # Pixel Data holds 4 frames' worth: the splitter refuses it
    ds.save_as(bad, enforce_file_format=True)
    good = small_instance(tmp_path / "good.dcm", frames=2)
    statuses = send(receiver.port, bad, good)
    assert statuses[0] & 0xF000 == 0xC000, hex(statuses[0])
    assert statuses[1] == 0x0000
    assert stored_index(s3_client, settings, bad) is None
    assert_frames_stored(s3_client, settings, good)
    assert "refused" in receiver.output()


def test_an_unknown_calling_ae_is_refused_and_a_site_caller_writes_under_its_site(
    start_receiver, s3_client, settings, tmp_path
) -> None:
    receiver = start_receiver(
        FRAMECDN_AUTH_SITES="north,south=clinic-s",
        FRAMECDN_RECEIVE_CALLING_AES="PACS_N=north,PACS_S=south",
    )
    path = small_instance(tmp_path / "one.dcm", frames=2)
    ae = AE(ae_title="STRANGER")
    ds = pydicom.dcmread(path)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title=TITLE)
    assert assoc.is_rejected
    assert send(receiver.port, path, calling="PACS_S") == [0x0000]
    south = settings.with_overrides(prefix=f"{settings.prefix}/clinic-s")
    assert stored_index(s3_client, settings, path) is None
    assert_frames_stored(s3_client, south, path)


def test_with_the_store_down_the_sender_hears_out_of_resources_and_a_resend_stores_it(
    start_receiver, tmp_path
) -> None:
    with own_store(tmp_path / "store") as store:
        store_settings = store.settings(prefix="received")
        receiver = start_receiver(store_settings, FRAMECDN_S3_CONNECT_TIMEOUT="2")
        client = make_client(store_settings)
        first = small_instance(tmp_path / "first.dcm", frames=2)
        assert send(receiver.port, first) == [0x0000]
        store.stop()
        second = small_instance(tmp_path / "second.dcm", frames=3)
        assert send(receiver.port, second) == [0xA700]
        assert "store_failed" in receiver.output()
        store.start()
        assert stored_index(client, store_settings, second) is None
        assert send(receiver.port, second) == [0x0000]
        assert_frames_stored(client, store_settings, first)
        assert_frames_stored(client, store_settings, second)


def test_an_orthanc_forwards_a_study_to_the_receiver_as_a_dicom_modality(
    start_receiver, orthanc, s3_client, settings, tmp_path
) -> None:
    """Orthanc's own C-STORE SCU (``/modalities/{id}/store``), as a routing rule sends."""
    receiver = start_receiver(FRAMECDN_RECEIVE_CALLING_AES="ORTHANC")
    study = generate_uid()
    paths = [
        small_instance(tmp_path / f"i{n}.dcm", study=study, frames=2 + n, seed=n)
        for n in range(3)
    ]
    ids = [orthanc.upload(path) for path in paths]
    with orthanc.client(timeout=120) as http:
        http.put(
            "/modalities/framecdn",
            json={"AET": TITLE, "Host": "127.0.0.1", "Port": receiver.port},
        ).raise_for_status()
        echo = http.post("/modalities/framecdn/echo", json={})
        assert echo.status_code == 200, echo.text
        sent = http.post("/modalities/framecdn/store", json={"Resources": ids})
    assert sent.status_code == 200, sent.text
    assert sent.json()["InstancesCount"] == 3, sent.text
    for path in paths:
        assert_frames_stored(s3_client, settings, path)
