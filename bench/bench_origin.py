"""Origin latency and throughput against direct presigned GETs from the same S3.

One run, one embedded SeaweedFS: generate and ingest a 60-frame 2457x1890 16-bit
tomosynthesis instance (~9.3 MB per frame), start the origin (``framecdn serve``,
one worker, in a subprocess) in ``stream`` and in ``redirect`` mode, then measure

- latency of one single-part frame: origin (stream) vs a direct presigned GET;
- the origin's answer time in redirect mode (the 307, not followed);
- throughput for 1, 8 and 32 concurrent clients each scrolling all frames, origin
  vs direct, with the origin's peak RSS (process tree) during the runs.

Clients are threads using ``http.client`` reading into a reused buffer (the socket
reads release the GIL), the same code for both targets. Usage::

    .venv/bin/python bench/bench_origin.py [--frames 60] [--samples 120] [--clients 1,8,32]

It prints a table with ratios and Markdown for docs/benchmarks.md, and writes
docs/bench_origin.png.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.keys import KeyLayout
from framecdn.framestore.s3 import Presigner, resolve_credentials
from framecdn.synthetic import write_tomosynthesis

ROOT = Path(__file__).resolve().parent.parent
SINGLE = {"Accept": "application/octet-stream"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Fetcher:
    """One keep-alive connection per (thread, host); reads bodies into a reused buffer."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _conn(self, netloc: str) -> http.client.HTTPConnection:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
            self._local.buffer = bytearray(1 << 20)
        conn = conns.get(netloc)
        if conn is None:
            host, port = netloc.split(":")
            conn = conns[netloc] = http.client.HTTPConnection(host, int(port), timeout=60)
        return conn

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, int]:
        """(status, body bytes) of a GET, body read and dropped."""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in range(2):
            conn = self._conn(parts.netloc)
            try:
                conn.request("GET", path, headers=headers or {})
                response = conn.getresponse()
                view = memoryview(self._local.buffer)
                total = 0
                while True:
                    n = response.readinto(view)
                    if not n:
                        break
                    total += n
                return response.status, total
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conns.pop(parts.netloc, None)
                if attempt:
                    raise
        raise AssertionError("unreachable")


@dataclass
class Origin:
    process: subprocess.Popen
    base: str
    root: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def rss_bytes(self) -> int:
        try:
            proc = psutil.Process(self.process.pid)
            return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        except psutil.Error:
            return 0


def start_origin(store: EmbeddedS3, prefix: str, delivery: str, log: Path) -> Origin:
    port = free_port()
    env = {**os.environ, **store.environment(), "FRAMECDN_PREFIX": prefix}
    env["FRAMECDN_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "framecdn", "serve", "--port", str(port), "--delivery", delivery],
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"origin did not start; see {log}") from None
            time.sleep(0.1)
    return Origin(process, base, f"{base}/dicom-web")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latencies(fetch: Callable[[int], tuple[int, int]], frames: int, samples: int, expect: int) -> list[float]:
    out: list[float] = []
    for i in range(samples):
        started = time.perf_counter()
        status, _ = fetch(i % frames + 1)
        out.append((time.perf_counter() - started) * 1000)
        if status != expect:
            raise RuntimeError(f"status {status}, expected {expect}")
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    try:
        proc = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0.0


@dataclass
class Throughput:
    clients: int
    seconds: float
    bytes: int
    peak_rss: int = 0
    #: CPU seconds spent during the run by: the clients, SeaweedFS, the origin.
    cpu: dict[str, float] = field(default_factory=dict)

    def cpu_per_gb(self, who: str) -> float:
        return self.cpu.get(who, 0.0) / (self.bytes / 1e9)

    @property
    def cores_busy(self) -> float:
        return sum(self.cpu.values()) / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6


def throughput(
    fetch: Callable[[int], tuple[int, int]],
    frames: int,
    clients: int,
    origin: Origin | None,
    store_pid: int,
) -> Throughput:
    """``clients`` threads, each fetching frames 1..N (staggered start frame)."""
    totals = [0] * clients
    errors: list[BaseException] = []
    peak = [0]
    done = threading.Event()

    def client(n: int) -> None:
        try:
            for k in range(frames):
                status, size = fetch((n + k) % frames + 1)
                if status != 200:
                    raise RuntimeError(f"status {status}")
                totals[n] += size
        except BaseException as exc:  # report after the run
            errors.append(exc)

    def sample_rss() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], origin.rss_bytes())

    sampler = threading.Thread(target=sample_rss, daemon=True) if origin else None
    if sampler:
        sampler.start()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    pids = {"clients": os.getpid(), "SeaweedFS": store_pid}
    if origin:
        pids["origin"] = origin.process.pid
    before = {who: cpu_seconds(pid) for who, pid in pids.items()}
    before["clients"] = sum(os.times()[:2])
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    after = {who: cpu_seconds(pid) for who, pid in pids.items()}
    after["clients"] = sum(os.times()[:2])  # this process only (the store is a child of it)
    cpu = {who: after[who] - before[who] for who in pids}
    done.set()
    if sampler:
        sampler.join()
    if errors:
        raise errors[0]
    return Throughput(clients, seconds, sum(totals), peak[0], cpu)


def plot(path: Path, direct: list[float], stream: list[float], redirect: list[float], rows: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    ax = axes[0]
    ax.boxplot([direct, stream], tick_labels=["direct S3\n(presigned GET)", "origin\n(stream)"],
               showfliers=True, whis=(5, 95))
    ax.set_ylabel("ms per 9.3 MB frame")
    ax.set_title("Single-frame latency")
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.hist(redirect, bins=40, color="tab:green")
    ax.set_xlabel("ms (307 answer, not followed)")
    ax.set_title("Origin answer time, redirect mode")
    ax.grid(alpha=0.3)
    ax = axes[2]
    labels = [str(r[0]) for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r[1] for r in rows], width=0.4, label="direct S3")
    ax.bar([i + 0.2 for i in x], [r[2] for r in rows], width=0.4, label="origin (stream)")
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("concurrent clients scrolling all frames")
    ax.set_ylabel("MB/s")
    ax.set_title("Throughput")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rows", type=int, default=2457)
    parser.add_argument("--columns", type=int, default=1890)
    parser.add_argument("--samples", type=int, default=120, help="latency samples per target")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "bench_origin.png"))
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="framecdn-bench-origin-") as tmp:
        tmp_path = Path(tmp)
        store = EmbeddedS3(tmp_path / "s3", bucket="framecdn-bench").start()
        origins: list[Origin] = []
        try:
            prefix = f"bench-{uuid.uuid4().hex[:8]}"
            settings = store.settings(prefix=prefix)
            print(f"generating {args.frames} frames {args.rows}x{args.columns} ...", flush=True)
            inst = write_tomosynthesis(
                tmp_path / "tomo.dcm", frames=args.frames, rows=args.rows, columns=args.columns
            )
            from framecdn.ingest.pipeline import ingest_file  # the bench sees both sides

            index = ingest_file(inst.path, settings)
            inst.path.unlink()
            frame_mb = index.frames[0].size / 1e6
            layout = KeyLayout(prefix)
            presigner = Presigner(
                store.endpoint, store.bucket, resolve_credentials(settings), "us-east-1", 3600
            )
            direct_urls = [presigner.url(layout.frame(index.key, n)) for n in range(1, args.frames + 1)]
            stream = start_origin(store, prefix, "stream", tmp_path / "origin-stream.log")
            origins.append(stream)
            redirect = start_origin(store, prefix, "redirect", tmp_path / "origin-redirect.log")
            origins.append(redirect)
            instance = (
                f"studies/{index.study_instance_uid}/series/{index.series_instance_uid}"
                f"/instances/{index.sop_instance_uid}"
            )
            fetcher = Fetcher()

            def direct(n: int) -> tuple[int, int]:
                return fetcher.get(direct_urls[n - 1])

            def via_origin(n: int) -> tuple[int, int]:
                return fetcher.get(f"{stream.root}/{instance}/frames/{n}", SINGLE)

            def via_redirect(n: int) -> tuple[int, int]:
                return fetcher.get(f"{redirect.root}/{instance}/frames/{n}", SINGLE)

            rss_idle = stream.rss_bytes()
            # Warm both paths (page cache, index cache, connections), then interleave.
            for n in range(1, args.frames + 1):
                direct(n), via_origin(n)
            print("latency ...", flush=True)
            lat_direct: list[float] = []
            lat_stream: list[float] = []
            for _ in range(4):
                lat_direct += latencies(direct, args.frames, args.samples // 4, 200)
                lat_stream += latencies(via_origin, args.frames, args.samples // 4, 200)
            via_redirect(1)
            lat_redirect = latencies(via_redirect, args.frames, max(args.samples, 500), 307)

            rows = []
            results = []
            for clients in client_counts:
                print(f"throughput, {clients} clients ...", flush=True)
                store_pid = store._process.pid  # the weed process the bench started
                d = throughput(direct, args.frames, clients, None, store_pid)
                o = throughput(via_origin, args.frames, clients, stream, store_pid)
                results.append((d, o))
                rows.append((clients, d.mb_per_s, o.mb_per_s))
        finally:
            for origin in origins:
                origin.stop()
            store.stop()

    p50 = lambda v: percentile(v, 50)  # noqa: E731
    p95 = lambda v: percentile(v, 95)  # noqa: E731
    md: list[str] = []
    md.append(f"Frame: {frame_mb:.2f} MB ({args.rows}x{args.columns}x16 bit), {args.frames} frames, "
              f"{len(lat_direct)} latency samples per target (interleaved blocks), "
              f"{len(lat_redirect)} redirect samples.")
    md.append("")
    md.append("| Single frame | p50 ms | p95 ms | ratio p50 vs direct | goal |")
    md.append("| --- | ---: | ---: | ---: | --- |")
    md.append(f"| direct presigned GET from S3 | {p50(lat_direct):.1f} | {p95(lat_direct):.1f} | 1.00 | |")
    r = p50(lat_stream) / p50(lat_direct)
    md.append(f"| origin, `stream` | {p50(lat_stream):.1f} | {p95(lat_stream):.1f} | "
              f"{r:.2f} | ≤ 1.2 {'✅' if r <= 1.2 else '❌'} |")
    md.append(f"| origin, `redirect` (307 answer) | {p50(lat_redirect):.2f} | {p95(lat_redirect):.2f} | "
              f"— | p50 ≤ 2 ms {'✅' if p50(lat_redirect) <= 2 else '❌'} |")
    md.append("")
    md.append("| Clients scrolling all frames | direct MB/s | origin MB/s | ratio | origin peak RSS |")
    md.append("| ---: | ---: | ---: | ---: | ---: |")
    for (d, o) in results:
        ratio = o.mb_per_s / d.mb_per_s
        goal = f" (goal ≥ 0.8 {'✅' if ratio >= 0.8 else '❌'})" if d.clients == max(client_counts) else ""
        md.append(f"| {d.clients} | {d.mb_per_s:.0f} | {o.mb_per_s:.0f} | {ratio:.2f}{goal} | "
                  f"{o.peak_rss / 1e6:.0f} MB |")
    md.append("")
    md.append("Where the CPU goes (CPU seconds per GB delivered; cores busy out of "
              f"{os.cpu_count()}):")
    md.append("")
    md.append("| Clients | path | clients | SeaweedFS | origin | cores busy |")
    md.append("| ---: | --- | ---: | ---: | ---: | ---: |")
    for (d, o) in results:
        for name, t in (("direct", d), ("origin", o)):
            origin_cpu = f"{t.cpu_per_gb('origin'):.2f}" if "origin" in t.cpu else "—"
            md.append(f"| {t.clients} | {name} | {t.cpu_per_gb('clients'):.2f} | "
                      f"{t.cpu_per_gb('SeaweedFS'):.2f} | {origin_cpu} | {t.cores_busy:.2f} |")
    md.append("")
    md.append(f"Origin RSS idle (after warm-up of the stream origin): {rss_idle / 1e6:.0f} MB.")
    text = "\n".join(md)
    print()
    print(text)
    print()
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"{platform.platform()}, Python {platform.python_version()}")
    plot(Path(args.plot), lat_direct, lat_stream, lat_redirect, rows)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
