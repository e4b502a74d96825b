"""Origin latency and throughput against direct presigned GETs from the same S3.

One run, one embedded SeaweedFS: generate and ingest a 60-frame 2457x1890 16-bit
tomosynthesis instance (~9.3 MB per frame), start the origin (``framecdn serve``,
one worker, in a subprocess) in ``stream``, ``redirect`` and ``accel`` mode, the
last behind the real nginx config (``infra/nginx/framecdn.conf.template``, run by
``tests/nginx_fixtures.py``, ``worker_processes auto``), then measure

- latency of one single-part frame: direct presigned GET, origin (stream), and
  accel through nginx, cold (nginx's object cache empty: every request is a MISS,
  nginx fetches the object from S3 and writes its cache) and warm (HIT);
- the origin's answer time in redirect mode (the 307, not followed);
- throughput for 1, 8 and 32 concurrent clients each scrolling all frames: direct,
  stream, accel warm (every request a HIT) and accel cold (a fresh nginx with an
  empty cache per run: each frame comes from S3 once, for whichever client asks
  first; the others hit the cache or wait on its lock), with peak RSS and the CPU
  seconds per GB of the clients, SeaweedFS, the origin and nginx (master + workers).

Before the accel numbers, every frame through nginx is checked: MISS then HIT, and
both bodies' SHA-256 equal to the one ingest stored in the index.

Clients are threads using ``http.client`` reading into a reused buffer (the socket
reads release the GIL), the same code for every target. Usage::

    .venv/bin/python bench/bench_origin.py [--frames 60] [--samples 120] [--clients 1,8,32]

It prints tables with ratios and Markdown for docs/benchmarks.md, and writes
docs/bench_origin.png. It needs nginx (``apt-get install nginx-light``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from repo_root import ROOT  # first: tests.nginx_fixtures, the nginx the tests check

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex
from framecdn.framestore.keys import KeyLayout
from framecdn.framestore.s3 import Presigner, resolve_credentials
from framecdn.process_stop import stop_process
from framecdn.synthetic import write_tomosynthesis
from tests.nginx_fixtures import RunningNginx, nginx_binary_or_none, run_nginx

SINGLE = {"Accept": "application/octet-stream"}
GOAL_P50_RATIO = 1.2  # the goals, for stream mode
GOAL_THROUGHPUT_RATIO = 0.8

#: A frame fetch for the latency and throughput loops: frame number -> (status, bytes).
Fetch = Callable[[int], tuple[int, int]]


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
        status, total, _ = self.get_with_cache_status(url, headers)
        return status, total

    def get_with_cache_status(
        self, url: str, headers: dict[str, str] | None = None
    ) -> tuple[int, int, str | None]:
        """(status, body bytes, X-Cache-Status) of a GET, body read and dropped."""
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
                return response.status, total, response.getheader("X-Cache-Status")
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
        stop_process(self.process, 15)


def start_origin(store: EmbeddedS3, settings: Settings, delivery: str, log: Path) -> Origin:
    """``framecdn serve`` in a subprocess (1 worker), configured like ``settings``."""
    port = free_port()
    env = {**os.environ, **store.environment(), "FRAMECDN_PREFIX": settings.prefix}
    env["FRAMECDN_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    env["FRAMECDN_ROOT_PATH"] = settings.root_path  # nginx is rendered from these
    env["FRAMECDN_ACCEL_LOCATION"] = settings.accel_location
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "framecdn", "serve",
             "--port", str(port), "--delivery", delivery],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    wait_until_serving(process, base, log, timeout=30)
    return Origin(process, base, base + settings.root_path.rstrip("/"))


def wait_until_serving(process: subprocess.Popen, base: str, log: Path, timeout: float) -> None:
    """Return once ``framecdn serve`` at ``base`` answers ``/healthz``. One that exits, or
    does not answer within ``timeout`` seconds, is killed and RuntimeError names its log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                process.wait(10)
                raise RuntimeError(f"framecdn serve did not start on {base}; see {log}") from None
            time.sleep(0.1)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (nginx: master + workers)."""
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    try:
        proc = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def p50(values: list[float]) -> float:
    return percentile(values, 50)


def p95(values: list[float]) -> float:
    return percentile(values, 95)


def latencies(fetch: Fetch, frames: int, samples: int, expect: int, first: int = 1) -> list[float]:
    """ms per request for ``samples`` requests over frames first.., wrapping at ``frames``."""
    out: list[float] = []
    for i in range(samples):
        started = time.perf_counter()
        status, _ = fetch((first - 1 + i) % frames + 1)
        out.append((time.perf_counter() - started) * 1000)
        if status != expect:
            raise RuntimeError(f"status {status}, expected {expect}")
    return out


@dataclass
class Throughput:
    clients: int
    seconds: float
    bytes: int
    #: Peak RSS during the run of each server process tree (origin, nginx).
    peak_rss: dict[str, int] = field(default_factory=dict)
    #: CPU seconds spent during the run by: the clients, SeaweedFS, the origin, nginx.
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
    fetch: Fetch, frames: int, clients: int, store_pid: int, servers: dict[str, int] | None = None
) -> Throughput:
    """``clients`` threads, each fetching frames 1..N (staggered start frame).

    ``servers`` (name -> pid: origin, nginx) are sampled for peak RSS and charged CPU
    time, like SeaweedFS and this process (the clients)."""
    servers = servers or {}
    totals = [0] * clients
    errors: list[BaseException] = []
    peak = dict.fromkeys(servers, 0)
    done = threading.Event()

    def client(n: int) -> None:
        try:
            for k in range(frames):
                status, size = fetch((n + k) % frames + 1)
                if status != 200:
                    raise RuntimeError(f"status {status}")
                totals[n] += size
        except BaseException as exc:  # noqa: BLE001 — re-raised in the main thread after the run
            errors.append(exc)

    def sample_rss() -> None:
        while True:
            for name, pid in servers.items():
                peak[name] = max(peak[name], rss_bytes(pid))
            if done.wait(0.05):
                return

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    pids = {"SeaweedFS": store_pid, **servers}
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
    cpu = {who: after[who] - before[who] for who in before}
    done.set()
    sampler.join()
    if errors:
        raise errors[0]
    return Throughput(clients, seconds, sum(totals), peak, cpu)


# --- accel behind nginx -------------------------------------------------------------


@dataclass
class Frames:
    """The ingested instance as the bench addresses it."""

    index: InstanceIndex
    count: int

    @property
    def study(self) -> str:
        return self.index.study_instance_uid

    @property
    def series(self) -> str:
        return self.index.series_instance_uid

    @property
    def sop(self) -> str:
        return self.index.sop_instance_uid

    def sha256(self, number: int) -> str:
        return self.index.frames[number - 1].sha256


class NginxFleet:
    """Fresh nginx instances (own directory, hence an empty cache) in front of one accel
    origin. A cold measurement needs an empty object cache; a new directory is the
    honest way to get one (the template has no bypass, and deleting cache files behind
    nginx's back leaves its shared-memory index stale)."""

    def __init__(self, binary: str, workdir: Path, origin: Origin, settings: Settings) -> None:
        self.binary, self.workdir, self.origin, self.settings = binary, workdir, origin, settings
        self._serial = 0

    @contextlib.contextmanager
    def fresh(self, tag: str) -> Iterator[RunningNginx]:
        """A new nginx with an empty cache; its directory (cache included) goes afterwards."""
        self._serial += 1
        directory = self.workdir / f"nginx-{self._serial:02d}-{tag}"
        directory.mkdir(parents=True)
        try:
            with run_nginx(
                self.binary, directory, self.origin.base, self.settings,
                worker_processes="auto",
            ) as proxy:
                urllib.request.urlopen(f"{proxy.base}/healthz", timeout=5).close()
                yield proxy
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def nginx_fetch(fetcher: Fetcher, proxy: RunningNginx, frames: Frames, expect: set[str]) -> Fetch:
    """A frame fetch through ``proxy`` that fails unless X-Cache-Status is in ``expect``
    (so a "warm" number can never silently include misses, nor a "cold" one hits)."""

    def fetch(n: int) -> tuple[int, int]:
        url = proxy.frames_url(frames, str(n))
        status, size, cache = fetcher.get_with_cache_status(url, SINGLE)
        if status == 200 and cache not in expect:
            raise RuntimeError(f"frame {n}: X-Cache-Status {cache}, expected {sorted(expect)}")
        return status, size

    return fetch


def get_body(url: str) -> tuple[int, str | None, bytes]:
    """(status, X-Cache-Status, body) of one single-part frame GET, body kept."""
    request = urllib.request.Request(url, headers=SINGLE)
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.headers.get("X-Cache-Status"), response.read()


def verify_accel(proxy: RunningNginx, frames: Frames, direct_urls: list[str]) -> None:
    """Every frame through a fresh nginx: MISS, then HIT, both bodies exactly the stored
    object (SHA-256 from the index; frame 1 also compared with a direct S3 GET)."""
    for n in range(1, frames.count + 1):
        for expected_cache in ("MISS", "HIT"):
            status, cache, body = get_body(proxy.frames_url(frames, str(n)))
            if status != 200 or cache != expected_cache:
                raise RuntimeError(f"frame {n}: {status} {cache}, expected 200 {expected_cache}")
            if hashlib.sha256(body).hexdigest() != frames.sha256(n):
                raise RuntimeError(f"frame {n} ({cache}): bytes differ from the stored object")
    with urllib.request.urlopen(direct_urls[0], timeout=60) as response:
        direct_body = response.read()
    if get_body(proxy.frames_url(frames, "1"))[2] != direct_body:
        raise RuntimeError("frame 1 through nginx differs from the direct S3 GET")


def cold_latencies(
    fleet: NginxFleet, fetcher: Fetcher, frames: Frames, samples: int
) -> list[float]:
    """First touch of each frame, on fresh nginx instances (one per ``frames.count``
    samples): nginx's object cache is empty, S3 and the origin are as warm as for the
    other targets."""
    out: list[float] = []
    while len(out) < samples:
        with fleet.fresh("cold-latency") as proxy:
            fetch = nginx_fetch(fetcher, proxy, frames, {"MISS"})
            fetch(1)  # the first request of a worker also pays connection set-up: not counted
            take = min(frames.count - 1, samples - len(out))
            out += latencies(fetch, frames.count, take, 200, first=2)
    return out


def cold_throughput(
    fleet: NginxFleet,
    fetcher: Fetcher,
    frames: Frames,
    clients: int,
    store_pid: int,
    origin_pid: int,
) -> Throughput:
    """Throughput on a fresh nginx (empty cache): each frame is fetched from S3 once."""
    with fleet.fresh(f"cold-{clients}") as proxy:
        fetch = nginx_fetch(fetcher, proxy, frames, {"MISS", "HIT"})
        servers = {"origin": origin_pid, "nginx": proxy.process.pid}
        return throughput(fetch, frames.count, clients, store_pid, servers)


# --- report --------------------------------------------------------------------------


@dataclass
class Results:
    frames: int
    frame_mb: float
    rows: int
    columns: int
    lat_direct: list[float]
    lat_stream: list[float]
    lat_redirect: list[float]
    lat_accel_cold: list[float]
    lat_accel_warm: list[float]
    #: Per client count: direct, stream, then ACCEL_RUNS.
    runs: list[dict[str, Throughput]]
    rss_idle: dict[str, int]


def mark(ok: bool) -> str:
    return "✅" if ok else "❌"


def latency_table(r: Results) -> list[str]:
    base = p50(r.lat_direct)
    stream = p50(r.lat_stream) / base
    md = [
        "| Single frame | p50 ms | p95 ms | ratio p50 vs direct | goal |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| direct presigned GET from S3 | {base:.1f} | {p95(r.lat_direct):.1f} | 1.00 | |",
        (f"| origin, `stream` | {p50(r.lat_stream):.1f} | {p95(r.lat_stream):.1f} | {stream:.2f} | "
         f"≤ {GOAL_P50_RATIO} {mark(stream <= GOAL_P50_RATIO)} |"),
        (f"| origin, `redirect` (307 answer) | {p50(r.lat_redirect):.2f} | "
         f"{p95(r.lat_redirect):.2f} | — | p50 ≤ 2 ms {mark(p50(r.lat_redirect) <= 2)} |"),
    ]
    for label, values in (("cold (MISS: nginx fetches from S3)", r.lat_accel_cold),
                          ("warm (HIT)", r.lat_accel_warm)):
        ratio = p50(values) / base
        md.append(f"| `accel` behind nginx, {label} | {p50(values):.1f} | {p95(values):.1f} | "
                  f"{ratio:.2f} | alternative: ≤ {GOAL_P50_RATIO} "
                  f"{mark(ratio <= GOAL_P50_RATIO)} |")
    return md


def stream_table(r: Results, top: int) -> list[str]:
    md = ["| Clients scrolling all frames | direct MB/s | origin `stream` MB/s | ratio "
          "| origin peak RSS |",
          "| ---: | ---: | ---: | ---: | ---: |"]
    for run in r.runs:
        d, s = run["direct"], run["stream"]
        ratio = s.mb_per_s / d.mb_per_s
        goal = (f" (goal ≥ {GOAL_THROUGHPUT_RATIO} {mark(ratio >= GOAL_THROUGHPUT_RATIO)})"
                if d.clients == top else "")
        md.append(f"| {d.clients} | {d.mb_per_s:.0f} | {s.mb_per_s:.0f} | {ratio:.2f}{goal} | "
                  f"{s.peak_rss['origin'] / 1e6:.0f} MB |")
    return md


ACCEL_RUNS = ("accel warm", "accel cold")


def accel_table(r: Results, top: int) -> list[str]:
    md = [("| Clients | direct MB/s | accel warm MB/s | ratio | accel cold MB/s | ratio | "
           "nginx / origin peak RSS (warm) |"),
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in r.runs:
        d, w = run["direct"], run["accel warm"]
        cells = []
        for name in ACCEL_RUNS:
            ratio = run[name].mb_per_s / d.mb_per_s
            alt = (f" (alternative: ≥ {GOAL_THROUGHPUT_RATIO} "
                   f"{mark(ratio >= GOAL_THROUGHPUT_RATIO)})" if d.clients == top else "")
            cells.append(f"{run[name].mb_per_s:.0f} | {ratio:.2f}{alt}")
        md.append(f"| {d.clients} | {d.mb_per_s:.0f} | {' | '.join(cells)} | "
                  f"{w.peak_rss['nginx'] / 1e6:.0f} MB / {w.peak_rss['origin'] / 1e6:.0f} MB |")
    return md


def cpu_table(r: Results) -> list[str]:
    md = ["| Clients | path | clients | SeaweedFS | origin | nginx | total | cores busy |",
          "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in r.runs:
        for name, t in run.items():
            cells = [f"{t.cpu_per_gb(who):.2f}" if who in t.cpu else "—"
                     for who in ("clients", "SeaweedFS", "origin", "nginx")]
            total = sum(t.cpu.values()) / (t.bytes / 1e9)
            md.append(f"| {t.clients} | {name} | {' | '.join(cells)} | {total:.2f} "
                      f"| {t.cores_busy:.2f} |")
    return md


def markdown(r: Results) -> str:
    top = max(run["direct"].clients for run in r.runs)
    md = [(f"Frame: {r.frame_mb:.2f} MB ({r.rows}x{r.columns}x16 bit), {r.frames} frames, "
           f"{len(r.lat_direct)} latency samples per target (interleaved blocks; accel cold: "
           f"{len(r.lat_accel_cold)} first touches on fresh nginx instances), "
           f"{len(r.lat_redirect)} redirect samples."), ""]
    md += [*latency_table(r), "", *stream_table(r, top), "", *accel_table(r, top), ""]
    md += [f"Where the CPU goes (CPU seconds per GB delivered; cores busy out of "
           f"{os.cpu_count()}):", ""]
    md += [*cpu_table(r), ""]
    md.append("RSS idle (after warm-up): " + ", ".join(
        f"{name} {size / 1e6:.0f} MB" for name, size in r.rss_idle.items()) + ".")
    return "\n".join(md)


def plot(path: Path, r: Results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1.4, 1, 1.4]})
    ax = axes[0]
    ax.boxplot(
        [r.lat_direct, r.lat_stream, r.lat_accel_cold, r.lat_accel_warm],
        tick_labels=["direct S3\n(presigned GET)", "origin\n(stream)",
                     "accel via nginx\ncold (MISS)", "accel via nginx\nwarm (HIT)"],
        showfliers=True, whis=(5, 95),
    )
    ax.set_ylabel(f"ms per {r.frame_mb:.1f} MB frame")
    ax.set_title("Single-frame latency (whiskers 5-95 %)")
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.hist(r.lat_redirect, bins=40, color="tab:green")
    ax.set_xlabel("ms (307 answer, not followed)")
    ax.set_title("Origin answer time, redirect mode")
    ax.grid(alpha=0.3)
    ax = axes[2]
    names = ["direct", "stream", *ACCEL_RUNS]
    labels = ["direct S3", "origin (stream)", "accel via nginx, warm", "accel via nginx, cold"]
    width = 0.16
    for k, (name, label) in enumerate(zip(names, labels, strict=True)):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(r.runs))]
        ax.bar(xs, [run[name].mb_per_s for run in r.runs], width=width, label=label)
    ax.set_xticks(range(len(r.runs)), [str(run["direct"].clients) for run in r.runs])
    ax.set_xlabel("concurrent clients scrolling all frames")
    ax.set_ylabel("MB/s")
    ax.set_title("Throughput")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- the run -------------------------------------------------------------------------


def ingest_study(tmp_path: Path, settings: Settings, args: argparse.Namespace) -> InstanceIndex:
    print(f"generating {args.frames} frames {args.rows}x{args.columns} ...", flush=True)
    inst = write_tomosynthesis(tmp_path / "tomo.dcm", frames=args.frames, rows=args.rows,
                               columns=args.columns)
    from framecdn.ingest.pipeline import ingest_file  # the bench sees both sides

    index = ingest_file(inst.path, settings)
    inst.path.unlink()
    return index


def run(args: argparse.Namespace, binary: str, tmp_path: Path) -> Results:
    client_counts = [int(c) for c in args.clients.split(",")]
    store = EmbeddedS3(tmp_path / "s3", bucket="framecdn-bench").start()
    with contextlib.ExitStack() as stack:
        stack.callback(store.stop)
        settings = store.settings(prefix=f"bench-{uuid.uuid4().hex[:8]}")
        index = ingest_study(tmp_path, settings, args)
        frames = Frames(index, args.frames)
        store_pid = store.pid  # the weed process the bench started
        layout = KeyLayout(settings.prefix)
        presigner = Presigner(store.endpoint, store.bucket, resolve_credentials(settings),
                              "us-east-1", 3600)
        direct_urls = [presigner.url(layout.frame_of(index, n)) for n in range(1, args.frames + 1)]
        origins = {}
        for mode in ("stream", "redirect", "accel"):
            origins[mode] = start_origin(store, settings, mode, tmp_path / f"origin-{mode}.log")
            stack.callback(origins[mode].stop)
        fleet = NginxFleet(binary, tmp_path, origins["accel"],
                           settings.with_overrides(delivery="accel"))
        warm = stack.enter_context(fleet.fresh("warm"))
        instance = f"studies/{frames.study}/series/{frames.series}/instances/{frames.sop}"
        fetcher = Fetcher()

        def direct(n: int) -> tuple[int, int]:
            return fetcher.get(direct_urls[n - 1])

        def via_stream(n: int) -> tuple[int, int]:
            return fetcher.get(f"{origins['stream'].root}/{instance}/frames/{n}", SINGLE)

        def via_redirect(n: int) -> tuple[int, int]:
            return fetcher.get(f"{origins['redirect'].root}/{instance}/frames/{n}", SINGLE)

        print("checking accel through nginx (MISS then HIT, exact bytes) ...", flush=True)
        verify_accel(warm, frames, direct_urls)  # also fills the proxy's cache
        via_warm = nginx_fetch(fetcher, warm, frames, {"HIT"})
        # Warm every path (page cache, index cache, connections), then interleave.
        for n in range(1, args.frames + 1):
            direct(n), via_stream(n), via_warm(n)
        rss_idle = {"stream origin": rss_bytes(origins["stream"].process.pid),
                    "accel origin": rss_bytes(origins["accel"].process.pid),
                    "nginx (master + workers)": rss_bytes(warm.process.pid)}
        print("latency ...", flush=True)
        lat_direct: list[float] = []
        lat_stream: list[float] = []
        lat_warm: list[float] = []
        for _ in range(4):
            lat_direct += latencies(direct, args.frames, args.samples // 4, 200)
            lat_stream += latencies(via_stream, args.frames, args.samples // 4, 200)
            lat_warm += latencies(via_warm, args.frames, args.samples // 4, 200)
        lat_cold = cold_latencies(fleet, fetcher, frames, args.samples)
        via_redirect(1)
        lat_redirect = latencies(via_redirect, args.frames, max(args.samples, 500), 307)

        runs = []
        stream_pid, accel_pid = origins["stream"].process.pid, origins["accel"].process.pid
        for clients in client_counts:
            print(f"throughput, {clients} clients ...", flush=True)
            runs.append({
                "direct": throughput(direct, args.frames, clients, store_pid),
                "stream": throughput(via_stream, args.frames, clients, store_pid,
                                     {"origin": stream_pid}),
                "accel warm": throughput(via_warm, args.frames, clients, store_pid,
                                         {"origin": accel_pid, "nginx": warm.process.pid}),
                "accel cold": cold_throughput(fleet, fetcher, frames, clients, store_pid,
                                              accel_pid),
            })
    return Results(args.frames, index.frames[0].size / 1e6, args.rows, args.columns, lat_direct,
                   lat_stream, lat_redirect, lat_cold, lat_warm, runs, rss_idle)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rows", type=int, default=2457)
    parser.add_argument("--columns", type=int, default=1890)
    parser.add_argument("--samples", type=int, default=120, help="latency samples per target")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "bench_origin.png"))
    args = parser.parse_args()
    binary = nginx_binary_or_none()
    if binary is None:
        parser.error("nginx not found (/usr/sbin/nginx or PATH): apt-get install -y nginx-light")
    started = datetime.now(UTC)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="framecdn-bench-origin-") as tmp:
        results = run(args, binary, Path(tmp))
    print()
    print(markdown(results))
    print()
    print(f"date: {started.isoformat(timespec='seconds')} (start), "
          f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    nginx_version = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"{platform.platform()}, Python {platform.python_version()}, "
          f"{nginx_version.stderr.strip()}")
    plot(Path(args.plot), results)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
