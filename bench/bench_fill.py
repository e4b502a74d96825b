"""Does a running read-through fill slow down frames served from the bucket?

One run on one machine: an embedded SeaweedFS, a real Orthanc (Debian's ``orthanc`` with
``orthanc-dicomweb``, ``tests/orthanc_fixtures.py``) holding N tomosynthesis instances
that are *not* in the bucket, and one "hot" instance that is. ``framecdn serve`` runs
with ``FRAMECDN_UPSTREAM_URL`` set to Orthanc's DICOMweb root, so it starts its own fill
service (``framecdn fill``, a process of its own, niced) exactly as in production.

The measure is the latency of single frames of the hot instance, one request at a time
on one keep-alive connection (OHIF's multipart Accept, ``stream`` delivery), taken

1. before any fill (baseline),
2. while fills run: the series metadata of every cold instance is asked through the
   origin (the upstream answers it, and each instance is queued for a fill: download of
   the Part 10 file from Orthanc, split, upload), and frames are timed until the last
   fill has committed,
3. after the fills (to see drift).

It prints p50/p90 of each phase and the ratio during/baseline (aim: at most 1.20). CPU
is shared by everything here (clients, origin, fill, Orthanc, SeaweedFS): run it on a
quiet machine for numbers worth keeping.

Usage::

    .venv/bin/python bench/bench_fill.py            # 4 cold instances of 20 full-size frames
    .venv/bin/python bench/bench_fill.py --small    # smoke run: tiny frames, a few seconds
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))  # tests.orthanc_fixtures and bench_origin: shared harnesses

from bench_origin import Fetcher, free_port, percentile, wait_until_serving  # noqa: E402

from framecdn.embedded_s3 import EmbeddedS3  # noqa: E402
from framecdn.framestore.bucket import Bucket  # noqa: E402
from framecdn.framestore.keys import InstanceKey, KeyLayout  # noqa: E402
from framecdn.ingest.pipeline import ingest_file  # noqa: E402
from framecdn.process_stop import stop_process  # noqa: E402
from framecdn.synthetic import GeneratedInstance, write_tomosynthesis  # noqa: E402
from tests.orthanc_fixtures import OrthancServer, missing_reason  # noqa: E402

OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def start_serve(
    store: EmbeddedS3, env_extra: dict[str, str], log: Path
) -> tuple[subprocess.Popen, str]:
    """``framecdn serve`` (one worker, stream) with an upstream: it starts its fill service."""
    port = free_port()
    env = {**os.environ, **store.environment(), **env_extra, "FRAMECDN_PORT": str(port)}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "framecdn", "serve"], env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    wait_until_serving(process, base, log, timeout=60)
    return process, base


def instance_path(g: GeneratedInstance) -> str:
    return f"/studies/{g.study_uid}/series/{g.series_uid}/instances/{g.sop_uid}"


class FrameTimer:
    """Sequential single-frame requests of the hot instance; milliseconds per request."""

    def __init__(self, root: str, hot: GeneratedInstance) -> None:
        self.url = f"{root}{instance_path(hot)}/frames/"
        self.frames = hot.number_of_frames
        self.expect = hot.frame_length or 0
        self.fetcher = Fetcher()
        self.count = 0

    def one(self) -> float:
        number = 1 + (self.count * 7) % self.frames
        self.count += 1
        started = time.perf_counter()
        status, size = self.fetcher.get(f"{self.url}{number}", {"Accept": OHIF_ACCEPT})
        elapsed = (time.perf_counter() - started) * 1000
        if status != 200 or size < self.expect:
            raise RuntimeError(f"hot frame {number}: {status}, {size} bytes")
        return elapsed

    def samples(self, n: int) -> list[float]:
        return [self.one() for _ in range(n)]

    def until(self, done: threading.Event) -> list[float]:
        out = []
        while not done.is_set():
            out.append(self.one())
        return out


def summary(name: str, values: list[float]) -> str:
    return (f"{name:<22} n={len(values):4d}  p50 {percentile(values, 50):8.2f} ms  "
            f"p90 {percentile(values, 90):8.2f} ms")


def run(args: argparse.Namespace, workdir: Path) -> int:
    reason = missing_reason()
    if reason is not None:
        raise SystemExit(reason)
    size = dict(rows=args.rows, columns=args.columns)
    print(f"generating 1 hot + {args.instances} cold instances of {args.frames} frames "
          f"({args.rows}x{args.columns} 16-bit) ...", flush=True)
    hot = write_tomosynthesis(workdir / "hot.dcm", frames=args.frames, seed=1, **size)
    cold = [write_tomosynthesis(workdir / f"cold{n}.dcm", frames=args.frames, seed=10 + n,
                                **size) for n in range(args.instances)]
    with EmbeddedS3(workdir / "s3", bucket="framecdn-fill") as store, \
            OrthancServer(workdir / "orthanc", stable_age=3600) as orthanc:
        settings = store.settings(prefix="fill-bench")
        ingest_file(hot.path, settings)
        for generated in cold:
            orthanc.upload(generated.path)
        env = {
            "FRAMECDN_PREFIX": settings.prefix,
            "FRAMECDN_UPSTREAM_URL": orthanc.dicomweb_root,
            "FRAMECDN_UPSTREAM_USERNAME": orthanc.username,
            "FRAMECDN_UPSTREAM_PASSWORD": orthanc.password,
            "FRAMECDN_FILL_CONCURRENCY": str(args.fill_concurrency),
            "FRAMECDN_FILL_URL": "",
        }
        process, base = start_serve(store, env, workdir / "serve.log")
        try:
            root = f"{base}/dicom-web"
            timer = FrameTimer(root, hot)
            timer.samples(args.warmup)
            baseline = timer.samples(args.samples)

            bucket = Bucket.from_settings(settings)
            layout = KeyLayout(settings.prefix)
            keys = [InstanceKey(g.study_uid, g.series_uid, g.sop_uid) for g in cold]
            done = threading.Event()

            def watch() -> None:
                deadline = time.monotonic() + args.timeout
                while time.monotonic() < deadline:
                    if all(bucket.get_or_none(layout.index(k)) is not None for k in keys):
                        break
                    time.sleep(0.1)
                done.set()

            started = time.perf_counter()
            for g in cold:  # what OHIF asks first: the series' metadata
                with urllib.request.urlopen(urllib.request.Request(
                    f"{root}/studies/{g.study_uid}/series/{g.series_uid}/metadata",
                    headers={"Accept": "application/dicom+json"},
                ), timeout=60) as answer:
                    answer.read()
            watcher = threading.Thread(target=watch)
            watcher.start()
            during = timer.until(done)
            watcher.join()
            fill_seconds = time.perf_counter() - started
            filled = sum(bucket.get_or_none(layout.index(k)) is not None for k in keys)
            after = timer.samples(args.samples)
        finally:
            stop_process(process, 60)
    megabytes = args.instances * args.frames * args.rows * args.columns * 2 / 1e6
    print()
    print(f"fills: {filled}/{len(keys)} instances ({megabytes:.0f} MB of frames) in "
          f"{fill_seconds:.1f} s, fill concurrency {args.fill_concurrency}")
    print(summary("bucket frames, before", baseline))
    print(summary("  while fills run", during))
    print(summary("  after", after))
    if not during:
        print("the fills ended before a frame could be timed: use more or bigger instances")
        return 1
    ratio = percentile(during, 50) / percentile(baseline, 50)
    ratio90 = percentile(during, 90) / percentile(baseline, 90)
    verdict = "within" if ratio <= 1.2 else "OVER"
    print(f"p50 during/before: {ratio:.2f} (p90: {ratio90:.2f}): {verdict} the 20 % aim")
    return 0 if filled == len(keys) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=4, help="cold instances to fill")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--rows", type=int, default=2457)
    parser.add_argument("--columns", type=int, default=1890)
    parser.add_argument("--samples", type=int, default=100, help="frames timed before/after")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--fill-concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for fills")
    parser.add_argument("--small", action="store_true", help="smoke run: small frames")
    parser.add_argument("--workdir", help="where instances, stores and logs go (default TMP)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if args.small:
        args.instances, args.frames, args.rows, args.columns = 3, 8, 512, 512
        args.samples, args.warmup = 30, 5
    workdir = Path(tempfile.mkdtemp(prefix="framecdn-fill-", dir=args.workdir))
    try:
        return run(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
