"""Ingest throughput and memory, against plain parallel boto3 PUTs of the same bytes.

One run, one embedded SeaweedFS: generate a 60-frame 2457x1890 16-bit tomosynthesis
instance (~557 MB), then alternately

- baseline: put every frame's bytes (read from the file at its offset) as its own
  object with boto3 from a pool of threads, nothing else;
- ingest in this process: ``ingest_paths`` (header parse, split, SHA-256, checksummed
  and tagged PUTs, metadata, index) — the same warm interpreter as the baseline;
- ingest as a command: ``framecdn ingest`` in a subprocess (adds interpreter start and
  imports, ~0.4 s), its peak RSS read from the OS while it runs.

The figures are the ratio ingest MB/s / baseline MB/s (aim >= 0.8) and the peak RSS
(aim < 200 MB, flat in the frame count). Usage::

    .venv/bin/python bench/bench_ingest.py [--frames 60] [--repeats 3] [--workers 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.s3 import make_client
from framecdn.ingest.pipeline import ingest_paths
from framecdn.synthetic import write_tomosynthesis


def pixel_data_offset(path: Path) -> int:
    """File offset of the first Pixel Data byte (the generated file's last element)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    frames, length = int(ds.NumberOfFrames), ds.Rows * ds.Columns * ds.BitsAllocated // 8
    return path.stat().st_size - frames * length - (frames * length) % 2


def baseline_puts(store: EmbeddedS3, path: Path, frames: int, length: int, workers: int) -> float:
    """Seconds to PUT every frame's bytes as plain objects from ``workers`` threads."""
    client = make_client(store.settings(), max_connections=workers + 4)
    offset = pixel_data_offset(path)
    prefix = f"baseline-{uuid.uuid4().hex[:8]}"

    def put(number: int) -> None:
        with open(path, "rb") as handle:
            handle.seek(offset + (number - 1) * length)
            body = handle.read(length)
        client.put_object(Bucket=store.bucket, Key=f"{prefix}/{number}", Body=body)

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, range(1, frames + 1)))
    return time.perf_counter() - started


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


def framecdn_ingest(store: EmbeddedS3, path: Path, workers: int) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one ``framecdn ingest`` subprocess.

    VmHWM is read while the process runs (it only grows), because rusage's
    ru_maxrss would also count the parent's memory copied by fork before exec.
    """
    env = dict(os.environ, **store.environment(), FRAMECDN_PREFIX=f"bench-{uuid.uuid4().hex[:8]}")
    command = [sys.executable, "-m", "framecdn", "ingest", "--no-progress",
               "--workers", str(workers), str(path)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, peak_rss_mb(process.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"ingest failed with {process.returncode}")
    return seconds, peak


def in_process_ingest(store: EmbeddedS3, path: Path, workers: int) -> float:
    """Seconds of ``ingest_paths`` on a fresh prefix, in this (warm) process."""
    settings = store.settings(prefix=f"bench-{uuid.uuid4().hex[:8]}", ingest_workers=workers)
    started = time.perf_counter()
    report = ingest_paths([path], settings, progress=False)
    seconds = time.perf_counter() - started
    if not report.ok:
        raise SystemExit(f"ingest failed: {report.results}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rows", type=int, default=2457)
    parser.add_argument("--columns", type=int, default=1890)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="framecdn-bench-") as tmp:
        tmp_path = Path(tmp)
        big = write_tomosynthesis(tmp_path / "tomo.dcm", frames=args.frames, rows=args.rows,
                                  columns=args.columns)
        small = write_tomosynthesis(tmp_path / "tomo-small.dcm", frames=max(1, args.frames // 3),
                                    rows=args.rows, columns=args.columns, seed=7)
        length = big.frame_length
        total_mb = args.frames * length / 1e6
        with EmbeddedS3(tmp_path / "s3", bucket="bench") as store:
            base_s, inproc_s, ingest_s, rss = [], [], [], []
            for _ in range(args.repeats):
                base_s.append(baseline_puts(store, big.path, args.frames, length, args.workers))
                inproc_s.append(in_process_ingest(store, big.path, args.workers))
                seconds, peak = framecdn_ingest(store, big.path, args.workers)
                ingest_s.append(seconds)
                rss.append(peak)
            _, small_rss = framecdn_ingest(store, small.path, args.workers)

    base_med, ingest_med = statistics.median(base_s), statistics.median(ingest_s)
    inproc_med = statistics.median(inproc_s)
    ratio = base_med / inproc_med
    runs = zip(base_s, inproc_s, ingest_s, strict=True)
    rows = [
        ("instance",
         f"{args.frames} frames x {args.rows}x{args.columns} x 16 bit = {total_mb:.0f} MB"),
        ("baseline: plain parallel PUTs (median)",
         f"{base_med:.2f} s, {total_mb / base_med:.0f} MB/s"),
        ("framecdn ingest in-process (median)",
         f"{inproc_med:.2f} s, {total_mb / inproc_med:.0f} MB/s"),
        ("ratio ingest / baseline throughput", f"{ratio:.2f} (aim >= 0.8)"),
        ("`framecdn ingest` command, incl. interpreter start (median)",
         f"{ingest_med:.2f} s, {total_mb / ingest_med:.0f} MB/s"
         f" (ratio {base_med / ingest_med:.2f})"),
        (f"peak RSS, {args.frames} frames (max of {args.repeats})",
         f"{max(rss):.0f} MB (aim < 200 MB)"),
        (f"peak RSS, {small.number_of_frames} frames", f"{small_rss:.0f} MB"),
        ("runs (baseline / in-process / command, s)",
         ", ".join(f"{b:.2f}/{p:.2f}/{i:.2f}" for b, p, i in runs)),
    ]
    print(f"\n{time.strftime('%Y-%m-%d')} · {platform.node()} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()} · {args.workers} upload workers\n")
    print("| measure | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
