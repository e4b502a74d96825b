"""``framecdn follow-orthanc`` as a process: credentials, signals, one-shot runs, backfill bar."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.ingest.follower import Follower, Shard, cursor_key
from framecdn.ingest.orthanc import OrthancClient
from framecdn.synthetic import GeneratedInstance, write_tomosynthesis

FRAMECDN = str(Path(sys.executable).parent / "framecdn")


def instance(tmp_path: Path, seed: int) -> GeneratedInstance:
    return write_tomosynthesis(tmp_path / f"i{seed}.dcm", frames=2, rows=32, columns=32, seed=seed)


def environment(s3_store, settings, orthanc=None, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        **s3_store.environment(),
        "FRAMECDN_PREFIX": settings.prefix,
        "FRAMECDN_FOLLOW_RETRY_SECONDS": "0.05",
        "FRAMECDN_FOLLOW_RETRY_MAX_SECONDS": "0.2",
        "FRAMECDN_FOLLOW_POLL_SECONDS": "0.1",
        **extra,
    }
    if orthanc is not None:
        env["FRAMECDN_ORTHANC_USERNAME"] = orthanc.username
        env["FRAMECDN_ORTHANC_PASSWORD"] = orthanc.password
    return env


def is_stored(s3_client, settings, inst: GeneratedInstance) -> bool:
    key = InstanceKey(inst.study_uid, inst.series_uid, inst.sop_uid)
    try:
        s3_client.head_object(Bucket=settings.bucket, Key=KeyLayout(settings.prefix).index(key))
    except s3_client.exceptions.ClientError:
        return False
    return True


def wait_stored(s3_client, settings, insts: list[GeneratedInstance], process) -> None:
    deadline = time.monotonic() + 60
    while not all(is_stored(s3_client, settings, inst) for inst in insts):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the follower did not store the instances"
        time.sleep(0.1)


def cursor_seq(s3_client, settings, feed: str) -> int:
    key = cursor_key(KeyLayout(settings.prefix), feed, Shard())
    return int(
        json.loads(s3_client.get_object(Bucket=settings.bucket, Key=key)["Body"].read())["seq"]
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_follows_until_a_signal_then_saves_the_cursor(
    signum, orthanc, s3_store, settings, s3_client, tmp_path
) -> None:
    before = [instance(tmp_path, 1), instance(tmp_path, 2)]
    for inst in before:
        orthanc.upload(inst.path)

    # Started the way a shell starts a background job: with SIGINT ignored.
    command = f'trap "" INT; exec {FRAMECDN} follow-orthanc --url {orthanc.url} --feed-id cli'
    process = subprocess.Popen(
        ["sh", "-c", command],
        env=environment(s3_store, settings, orthanc),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_stored(s3_client, settings, before, process)
        later = instance(tmp_path, 3)
        orthanc.upload(later.path)
        wait_stored(s3_client, settings, [later], process)
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "3 ingested" in out
    assert signal.Signals(signum).name in err
    assert orthanc.password not in out + err
    last = int(orthanc.get_json("/changes?last")["Last"])
    assert cursor_seq(s3_client, settings, "cli") == last


def test_once_with_a_credentials_file(orthanc, s3_store, settings, s3_client, tmp_path) -> None:
    inst = instance(tmp_path, 4)
    orthanc.upload(inst.path)
    credentials = tmp_path / "orthanc.credentials"
    credentials.write_text(f"{orthanc.username}:{orthanc.password}\n")
    result = subprocess.run(
        [
            FRAMECDN,
            "follow-orthanc",
            "--url",
            orthanc.url,
            "--credentials-file",
            str(credentials),
            "--once",
        ],
        env=environment(s3_store, settings),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "1 ingested" in result.stdout
    assert is_stored(s3_client, settings, inst)


def test_wrong_credentials_are_one_line_and_exit_1(orthanc, s3_store, settings, tmp_path) -> None:
    result = subprocess.run(
        [FRAMECDN, "follow-orthanc", "--url", orthanc.url, "--once"],
        env=environment(
            s3_store,
            settings,
            FRAMECDN_ORTHANC_USERNAME=orthanc.username,
            FRAMECDN_ORTHANC_PASSWORD="wrong",
        ),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "refused the credentials (401)" in last_line and "wrong" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "2024-01-01"], "--since goes with --backfill"),
        (["--shard", "2/2"], "K must be 0..N-1"),
        (["--credentials-file", "/nonexistent/creds"], "cannot read Orthanc credentials file"),
        (["--url", "http://user:secret@127.0.0.1:9"], "the Orthanc URL carries credentials"),
        (["--url", "orthanc:8042"], "must be an http:// or https:// URL"),
    ],
)
def test_usage_errors(argv, message, s3_store, settings) -> None:
    result = subprocess.run(
        [FRAMECDN, "follow-orthanc", "--url", "http://127.0.0.1:9", "--once", *argv],
        env=environment(s3_store, settings),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_backfill_shows_progress_and_eta(orthanc, settings, s3_client, tmp_path, capsys) -> None:
    for seed in (5, 6, 7):
        orthanc.upload(instance(tmp_path, seed).path)
    client = OrthancClient(orthanc.url, username=orthanc.username, password=orthanc.password)
    with client, Follower(settings, client) as follower:
        stats = follower.backfill(since=date(2024, 1, 7), progress=True)
    assert stats.ingested == 2  # seeds 6 and 7 are dated 2024-01-07 and -08
    bar = capsys.readouterr().err
    assert "backfill" in bar and "2/2" in bar and "<" in bar  # elapsed<remaining: the ETA


_PEAK_RSS_CHILD = """
import sys
from framecdn.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:  # this process's own peak (not the parent's)
    print("VmHWM", [line.split()[1] for line in status if line.startswith("VmHWM:")][0])
sys.exit(code)
"""


def _follow_peak_rss_mb(orthanc, s3_store, settings, feed: str) -> int:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK_RSS_CHILD,
            "follow-orthanc",
            "--url",
            orthanc.url,
            "--once",
            "--feed-id",
            feed,
        ],
        env=environment(s3_store, settings, orthanc),
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "1 ingested" in done.stdout, done.stdout + done.stderr
    return int(done.stdout.split("VmHWM")[1].split()[0]) // 1024


def test_peak_memory_does_not_grow_with_instance_size(
    orthanc, s3_store, settings, s3_client, tmp_path
) -> None:
    """9.3 MB frames: an 8-frame (74 MB) and a 32-frame (297 MB) instance through Orthanc."""
    shape = {"rows": 2457, "columns": 1890}
    small = write_tomosynthesis(tmp_path / "small.dcm", frames=8, seed=1, **shape)
    big = write_tomosynthesis(tmp_path / "big.dcm", frames=32, seed=2, **shape)
    orthanc.upload(small.path)
    small.path.unlink()
    rss_small = _follow_peak_rss_mb(orthanc, s3_store, settings, "small")
    orthanc.upload(big.path)
    big.path.unlink()
    # Same feed id: this run resumes after the small instance and takes only the big one.
    rss_big = _follow_peak_rss_mb(orthanc, s3_store, settings, "small")
    print(f"follower peak RSS: 74 MB instance {rss_small} MB, 297 MB instance {rss_big} MB")
    assert is_stored(s3_client, settings, big)
    assert rss_big < 250
    assert rss_big - rss_small < 40
