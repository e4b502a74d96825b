"""Load: many fast clients on 9 MB frames, plus slow readers, against one origin worker.

One embedded SeaweedFS on loopback, a generated tomosynthesis instance of 9.3 MB frames
(2457 x 1890, 16-bit) ingested, and ``framecdn serve`` (one worker) in a subprocess. Two
phases of ``--seconds`` each, after a warm-up:

1. ``--clients`` fast clients (64) each fetch frames back to back (single part, whole
   frame, byte count checked), cycling through the instance;
2. the same fast clients, plus ``--slow`` clients (8) that each read a frame at
   ``--slow-rate`` bytes per second (100 KB/s): they hold a stream open for the whole
   phase, as a viewer on a bad link does.

The phases alternate in ``--rounds`` rounds (each phase ``--seconds / --rounds`` a
round), so drift of the machine (another job starting) weighs on both alike. FRAMECDN_*
variables in the environment (``FRAMECDN_S3_MAX_CONNECTIONS``...) reach the origin.

It prints, per phase, the fast clients' throughput and latency, the errors, and the
origin's peak RSS; then the goals: zero errors, the origin's peak RSS under
``--max-rss-mb``, and the fast clients' throughput with the slow clients at least 90 % of
their throughput without them (the slow clients must not slow the others by more than
10 %). Exit status 0 when every goal holds. Everything listens on 127.0.0.1 only.

Usage::

    .venv/bin/python bench/bench_load.py [--seconds 60] [--clients 64] [--slow 8]
    .venv/bin/python bench/bench_load.py --seconds 5 --clients 8     # a smoke run

Numbers depend on the machine: run it on a quiet one before recording any.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
from bench_origin import free_port, wait_until_serving

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex
from framecdn.process_stop import stop_process
from framecdn.synthetic import write_tomosynthesis

SINGLE = {"Accept": "application/octet-stream"}
GOAL_SLOWDOWN = 0.90  # fast throughput with slow clients / without, at least
READ_CHUNK = 1 << 20
SLOW_CHUNK = 10_000


@dataclass
class Phase:
    """What the fast clients (and the slow ones) did in one phase."""

    name: str
    seconds: float = 0.0
    frames: int = 0
    bytes: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    slow_bytes: int = 0
    slow_clients: int = 0
    peak_rss: int = 0

    def add(self, other: Phase) -> None:
        """Sum up one round of this phase."""
        self.seconds += other.seconds
        self.frames += other.frames
        self.bytes += other.bytes
        self.latencies += other.latencies
        self.errors += other.errors
        self.slow_bytes += other.slow_bytes
        self.peak_rss = max(self.peak_rss, other.peak_rss)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


# The origin -----------------------------------------------------------------------------


def start_origin(store: EmbeddedS3, settings: Settings, log: Path) -> tuple[subprocess.Popen, str]:
    """``framecdn serve`` (one worker) on a free loopback port; its process and root URL."""
    port = free_port()
    env = {**os.environ, **store.environment(prefix=settings.prefix)}
    command = [sys.executable, "-m", "framecdn", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_until_serving(process, base, log, timeout=30)
    return process, base + settings.root_path.rstrip("/")


class RssWatch:
    """Samples a process's resident size (with its children) every 0.2 s; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                family = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in family))
            except psutil.Error:
                return

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(2)


# Clients --------------------------------------------------------------------------------


async def fast_client(
    session: aiohttp.ClientSession, urls: list[str], sizes: list[int], start: int,
    until: float, phase: Phase,
) -> None:
    """Fetch frames back to back until ``until``; every frame must arrive whole."""
    n = start
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        index = n % len(urls)
        n += 1
        began = loop.time()
        try:
            async with session.get(urls[index], headers=SINGLE) as response:
                received = 0
                async for chunk in response.content.iter_chunked(READ_CHUNK):
                    received += len(chunk)
                if response.status != 200 or received != sizes[index]:
                    phase.errors.append(f"{response.status}, {received} of {sizes[index]} bytes")
                    continue
        except (aiohttp.ClientError, TimeoutError) as exc:
            phase.errors.append(repr(exc))
            continue
        if loop.time() <= until:  # a frame that ends after the phase is not counted
            phase.frames += 1
            phase.bytes += received
            phase.latencies.append(loop.time() - began)


async def slow_client(
    session: aiohttp.ClientSession, urls: list[str], start: int, rate: float, phase: Phase
) -> None:
    """Read frames at ``rate`` bytes per second until cancelled (the phase's end)."""
    n = start
    loop = asyncio.get_running_loop()
    while True:
        url = urls[n % len(urls)]
        n += 1
        try:
            async with session.get(url, headers=SINGLE) as response:
                if response.status != 200:
                    phase.errors.append(f"slow client: {response.status}")
                    return
                began, read = loop.time(), 0
                while chunk := await response.content.read(SLOW_CHUNK):
                    read += len(chunk)
                    phase.slow_bytes += len(chunk)
                    ahead = read / rate - (loop.time() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except (aiohttp.ClientError, TimeoutError) as exc:
            phase.errors.append(f"slow client: {exc!r}")
            return


async def run_phase(
    name: str, urls: list[str], sizes: list[int], args: argparse.Namespace, slow: int,
    seconds: float, origin_pid: int,
) -> Phase:
    phase = Phase(name, slow_clients=slow)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    fast = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False), timeout=timeout,
        auto_decompress=False,
    )
    slow_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout, auto_decompress=False
    )
    loop = asyncio.get_running_loop()
    with RssWatch(origin_pid) as watch:
        try:
            slow_tasks = [
                asyncio.create_task(slow_client(slow_session, urls, i, args.slow_rate, phase))
                for i in range(slow)
            ]
            await asyncio.sleep(0.5 if slow else 0)  # the slow streams are open first
            started = loop.time()
            until = started + seconds
            await asyncio.gather(
                *(fast_client(fast, urls, sizes, i, until, phase) for i in range(args.clients))
            )
            phase.seconds = loop.time() - started
            for task in slow_tasks:
                task.cancel()
            await asyncio.gather(*slow_tasks, return_exceptions=True)
        finally:
            await fast.close()
            await slow_session.close()
    phase.peak_rss = watch.peak
    return phase


# The run --------------------------------------------------------------------------------


def ingest(tmp: Path, settings: Settings, args: argparse.Namespace) -> InstanceIndex:
    from framecdn.ingest.pipeline import ingest_file  # the bench sees both sides

    print(f"generating {args.frames} frames of {args.rows}x{args.columns} ...", flush=True)
    made = write_tomosynthesis(
        tmp / "tomo.dcm", frames=args.frames, rows=args.rows, columns=args.columns
    )
    index = ingest_file(made.path, settings)
    made.path.unlink()
    return index


def report(phases: list[Phase], args: argparse.Namespace) -> bool:
    print()
    print("| Phase | fast clients | frames | MB/s | p50 ms | p95 ms | slow clients | "
          "slow KB/s each | errors | origin peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in phases:
        ordered = sorted(p.latencies) or [0.0]
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        slow_rate = p.slow_bytes / 1e3 / p.seconds / p.slow_clients if p.slow_clients else 0
        print(
            f"| {p.name} | {args.clients} | {p.frames} | {p.mb_per_s:.0f} | "
            f"{statistics.median(ordered) * 1000:.0f} | {p95 * 1000:.0f} | {p.slow_clients} | "
            f"{slow_rate:.0f} | {len(p.errors)} | {p.peak_rss / 1e6:.0f} MB |"
        )
    without, with_slow = phases
    ratio = with_slow.mb_per_s / without.mb_per_s if without.mb_per_s else 0.0
    errors = [e for p in phases for e in p.errors]
    peak = max(p.peak_rss for p in phases)
    goals = [
        (f"fast throughput with {args.slow} slow clients / without: {ratio:.2f} "
         f"(goal >= {GOAL_SLOWDOWN})", ratio >= GOAL_SLOWDOWN),
        (f"errors: {len(errors)} (goal 0)", not errors),
        (f"origin peak RSS: {peak / 1e6:.0f} MB (goal <= {args.max_rss_mb} MB)",
         peak <= args.max_rss_mb * 1e6),
    ]
    print()
    for text, ok in goals:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    for error in errors[:10]:
        print(f"      error: {error}")
    return all(ok for _, ok in goals)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds the phases alternate in")
    parser.add_argument("--clients", type=int, default=64, help="fast clients")
    parser.add_argument("--slow", type=int, default=8, help="slow clients in phase 2")
    parser.add_argument(
        "--slow-rate", type=float, default=100_000, help="bytes/s a slow client reads"
    )
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--rows", type=int, default=2457)
    parser.add_argument("--columns", type=int, default=1890)
    parser.add_argument("--max-rss-mb", type=float, default=512.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="framecdn-bench-load-") as tmp_dir:
        tmp = Path(tmp_dir)
        store = EmbeddedS3(tmp / "s3", bucket="framecdn-bench").start()
        origin: subprocess.Popen | None = None
        try:
            settings = store.settings(prefix=f"load-{uuid.uuid4().hex[:8]}")
            index = ingest(tmp, settings, args)
            origin, root = start_origin(store, settings, tmp / "origin.log")
            key = index.key
            instance = f"{root}/studies/{key.study}/series/{key.series}/instances/{key.instance}"
            urls = [f"{instance}/frames/{n}" for n in range(1, index.number_of_frames + 1)]
            sizes = [frame.size for frame in index.frames]
            print(f"{len(urls)} frames of {sizes[0] / 1e6:.1f} MB; warming up ...", flush=True)
            asyncio.run(run_phase("warm-up", urls, sizes, args, 0, 2.0, origin.pid))
            kinds = (("fast only", 0), (f"fast + {args.slow} slow", args.slow))
            phases = [Phase(name, slow_clients=slow) for name, slow in kinds]
            share = args.seconds / args.rounds
            for round_ in range(1, args.rounds + 1):
                for total, (name, slow) in zip(phases, kinds, strict=True):
                    print(f"round {round_}/{args.rounds}, {name}: {share:g} s ...", flush=True)
                    part = asyncio.run(
                        run_phase(name, urls, sizes, args, slow, share, origin.pid)
                    )
                    total.add(part)
            ok = report(phases, args)
        finally:
            if origin is not None:
                stop_process(origin, 15)
            store.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
