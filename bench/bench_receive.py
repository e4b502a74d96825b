"""C-STORE into the bucket: ``storescu`` to ``framecdn receive`` against ``framecdn ingest``.

One run, one embedded SeaweedFS: generate a 60-frame 2457x1890 16-bit tomosynthesis
instance (~557 MB), then alternately

- baseline: ``framecdn ingest`` of the file (a subprocess, as an operator runs it);
- receive: DCMTK's ``storescu`` sends the same file over loopback to a running
  ``framecdn receive`` (each time under a new SOP Instance UID, so it is stored, not
  skipped as a resend); the time is storescu's, which ends when the receiver has
  committed the instance and answered. The receiver's peak RSS is read from the OS.

The figures are the ratio ingest seconds / receive seconds (issue 17's aim: >= 0.8) and
the receiver's peak RSS (aim < 250 MB). Usage::

    .venv/bin/python bench/bench_receive.py [--frames 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pydicom.uid import generate_uid

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.synthetic import write_tomosynthesis


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MB; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def framecdn_ingest(store: EmbeddedS3, path: Path) -> float:
    env = dict(os.environ, **store.environment(), FRAMECDN_PREFIX=f"ingest-{uuid.uuid4().hex[:8]}")
    command = [sys.executable, "-m", "framecdn", "ingest", "--no-progress", str(path)]
    started = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def start_receiver(store: EmbeddedS3, spool: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(
        os.environ, **store.environment(), FRAMECDN_PREFIX="received",
        FRAMECDN_RECEIVE_PORT=str(port), FRAMECDN_RECEIVE_SPOOL_DIR=str(spool),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "framecdn", "receive"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the receiver did not start")


def storescu(path: Path, port: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["storescu", "-R", "-aec", "FRAMECDN", "127.0.0.1", str(port), str(path)],
        check=True, stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rows", type=int, default=2457)
    parser.add_argument("--columns", type=int, default=1890)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="framecdn-bench-") as tmp:
        tmp_path = Path(tmp)
        study, series = generate_uid(), generate_uid()
        files = [
            write_tomosynthesis(
                tmp_path / f"tomo-{n}.dcm", frames=args.frames, rows=args.rows,
                columns=args.columns, study_uid=study, series_uid=series, sop_uid=generate_uid(),
            )
            for n in range(args.repeats)
        ]
        size_mb = files[0].path.stat().st_size / 1e6
        with EmbeddedS3(tmp_path / "s3", bucket="bench") as store:
            receiver, port = start_receiver(store, tmp_path / "spool")
            try:
                ingest_s, receive_s, rss = [], [], []
                for generated in files:
                    ingest_s.append(framecdn_ingest(store, generated.path))
                    receive_s.append(storescu(generated.path, port))
                    rss.append(peak_rss_mb(receiver.pid))
            finally:
                receiver.terminate()
                receiver.wait(30)

    ingest_med, receive_med = statistics.median(ingest_s), statistics.median(receive_s)
    print(f"machine: {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"instance: {args.frames} frames, {size_mb:.0f} MB")
    for n, (a, b) in enumerate(zip(ingest_s, receive_s, strict=True), 1):
        print(f"run {n}: framecdn ingest {a:.2f} s, storescu -> receive {b:.2f} s")
    print(f"framecdn ingest: {size_mb / ingest_med:.0f} MB/s (median {ingest_med:.2f} s)")
    print(f"C-STORE receive: {size_mb / receive_med:.0f} MB/s (median {receive_med:.2f} s)")
    print(f"ratio receive/ingest throughput: {ingest_med / receive_med:.2f} (aim >= 0.8)")
    print(f"receiver peak RSS: {max(rss):.0f} MB (aim < 250)")


if __name__ == "__main__":
    main()
