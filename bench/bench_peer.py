"""Peer comparison: the same tomosynthesis instance served by Orthanc and by framecdn.

One run on one machine: generate a 60-frame 2457x1890 16-bit breast tomosynthesis
instance (557 MB, ``framecdn.synthetic.write_tomosynthesis``), load it into a real
Orthanc (Debian's ``orthanc`` with ``orthanc-dicomweb``, run by
``tests/orthanc_fixtures.py`` on loopback with authentication on) and into framecdn
(ingested into an embedded SeaweedFS; the origin in ``stream`` mode, and in ``accel``
mode behind the shipped nginx config run by ``tests/nginx_fixtures.py``). Then, with
the same HTTP client for every target (``bench_origin.Fetcher``: ``http.client``,
keep-alive, bodies read into a reused buffer):

- **one frame**: the latency of single frame requests (steady state, after a warm-up
  scroll), cycling over the frames;
- **scroll**: all frames with 6 concurrent requests (OHIF's default), cold and warm.
  Cold is the first scroll after a fresh start of the server in question: Orthanc
  restarted (its storage cache empty), a new origin process (its index cache empty),
  a new nginx with an empty cache. The operating system's page cache is not dropped
  (the machine is shared), so a cold Orthanc still reads the file from memory.

Targets (DICOMweb ones get OHIF's Accept,
``multipart/related; type="application/octet-stream"; transfer-syntax=*``):

- Orthanc DICOMweb ``/dicom-web/studies/S/series/Se/instances/I/frames/N``;
- Orthanc REST ``/instances/{id}/frames/{N-1}/raw`` (Orthanc numbers frames from 0);
- framecdn ``stream``: the origin alone;
- framecdn ``accel`` behind nginx, warm: the multipart answer from nginx's response
  cache, and a single-part request (Cornerstone takes those) answered by X-Accel
  from nginx's object cache.

Every target's first and last frames are checked byte for byte against the generated
pixels before timing; every timed answer must be 200 with at least a frame's bytes.
Ratios are against Orthanc measured in the same run.

The read-through row: the first frame of an instance not yet in the bucket, through
``framecdn serve`` with ``FRAMECDN_UPSTREAM_URL`` set to Orthanc's DICOMweb root (the
origin proxies the frame and its fill service starts copying the instance at the same
time), against the first frame straight from Orthanc's DICOMweb; both after an Orthanc
restart, each framecdn sample on an empty key prefix. Aim: no slower than Orthanc + 10 %.

Usage::

    .venv/bin/python bench/bench_peer.py            # the full run (minutes; ~2 GB of disk)
    .venv/bin/python bench/bench_peer.py --small    # smoke run: 6 frames, 3 samples

It needs nginx and Orthanc with the DICOMweb plugin (``.ci/run`` installs them).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import repo_root  # noqa: F401 - its import puts the repository root on sys.path (tests.*)
from bench_fill import start_serve
from bench_origin import Fetcher, Origin, percentile, start_origin

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.ingest.pipeline import ingest_file
from framecdn.process_stop import stop_process
from framecdn.synthetic import GeneratedInstance, write_tomosynthesis
from tests.nginx_fixtures import RunningNginx, nginx_binary_or_none, run_nginx
from tests.orthanc_fixtures import OrthancServer, missing_reason

OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
SINGLE_PART = "application/octet-stream"
SCROLL_CONCURRENCY = 6  # OHIF's default number of concurrent requests


@dataclass
class Target:
    """One way to get frame N: a URL builder and the headers to send."""

    name: str
    url: Callable[[int], str]
    headers: dict[str, str]
    expect_cache: str | None = None  # X-Cache-Status every timed answer must carry


@dataclass
class Result:
    name: str
    one_frame: list[float] = field(default_factory=list)  # seconds per request
    scroll: dict[str, float] = field(default_factory=dict)  # "cold"/"warm" -> seconds


# -- checks ------------------------------------------------------------------------------


def first_part(body: bytes, content_type: str) -> bytes:
    """The payload of the first part of a multipart/related body."""
    boundary = next(
        p.split("=", 1)[1].strip().strip('"')
        for p in content_type.split(";")
        if p.strip().lower().startswith("boundary=")
    )
    delimiter = f"--{boundary}".encode()
    part = body.split(delimiter)[1]
    payload = part.split(b"\r\n\r\n", 1)[1]
    return payload[: payload.rindex(b"\r\n")] if payload.endswith(b"\r\n") else payload


def check_bytes(target: Target, generated: GeneratedInstance) -> None:
    """Frame 1 and the last frame through ``target`` are the generated pixels."""
    with httpx.Client(timeout=300) as http:
        for number in (1, generated.number_of_frames):
            answer = http.get(target.url(number), headers=target.headers)
            assert answer.status_code == 200, f"{target.name}: frame {number} {answer.status_code}"
            content_type = answer.headers.get("content-type", "")
            body = answer.content
            if content_type.startswith("multipart/"):
                body = first_part(body, content_type)
            assert body == generated.frame(number), f"{target.name}: frame {number} differs"


# -- measuring ---------------------------------------------------------------------------


def fetch(fetcher: Fetcher, target: Target, number: int, frame_length: int) -> None:
    status, size, cache = fetcher.get_with_cache_status(target.url(number), target.headers)
    assert status == 200 and size >= frame_length, f"{target.name} frame {number}: {status}"
    if target.expect_cache is not None:
        assert cache == target.expect_cache, f"{target.name} frame {number}: {cache}"


def one_frame(target: Target, frames: int, samples: int, frame_length: int) -> list[float]:
    """Sequential single-frame requests on one connection, cycling over the frames."""
    fetcher = Fetcher()
    times = []
    for i in range(samples):
        number = 1 + (i * 7) % frames
        started = time.perf_counter()
        fetch(fetcher, target, number, frame_length)
        times.append(time.perf_counter() - started)
    return times


def scroll(target: Target, frames: int, frame_length: int) -> float:
    """Seconds to fetch every frame with OHIF's 6 concurrent requests."""
    fetcher = Fetcher()  # thread-local connections: one per pool thread
    started = time.perf_counter()
    with ThreadPoolExecutor(SCROLL_CONCURRENCY) as pool:
        list(pool.map(lambda n: fetch(fetcher, target, n, frame_length), range(1, frames + 1)))
    return time.perf_counter() - started


@dataclass
class ReadThrough:
    """First frame of an instance the bucket lacks: through framecdn (upstream = Orthanc's
    DICOMweb, read-through) and from Orthanc's DICOMweb directly, seconds per sample."""

    framecdn: list[float] = field(default_factory=list)
    orthanc: list[float] = field(default_factory=list)


def measure_read_through_first_frame(
    store: EmbeddedS3,
    orthanc: OrthancServer,
    generated: GeneratedInstance,
    samples: int,
    workdir: Path,
) -> ReadThrough:
    """Issue #9 part 5: frame 1 of the instance, not yet in the bucket, through ``framecdn
    serve`` with ``FRAMECDN_UPSTREAM_URL`` = Orthanc's DICOMweb root (the origin proxies it
    and queues the instance at its fill service, which starts downloading it at once), and
    straight from Orthanc's DICOMweb. Each sample starts from a restarted Orthanc (cold)
    and, for framecdn, a new origin on a key prefix of its own (an empty bucket for it).
    Aim: framecdn no slower than Orthanc plus 10 %."""
    basic = base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
    direct = f"{orthanc.dicomweb_root}{instance_path(generated)}/frames/1"
    measured = ReadThrough()
    for sample in range(samples):
        orthanc.restart()
        env = {
            "FRAMECDN_PREFIX": f"peer-read-through-{sample}",
            "FRAMECDN_UPSTREAM_URL": orthanc.dicomweb_root,
            "FRAMECDN_UPSTREAM_USERNAME": orthanc.username,
            "FRAMECDN_UPSTREAM_PASSWORD": orthanc.password,
            "FRAMECDN_FILL_URL": "",
        }
        process, base = start_serve(store, env, workdir / "read-through.log")
        try:
            url = f"{base}/dicom-web{instance_path(generated)}/frames/1"
            started = time.perf_counter()
            answer = httpx.get(url, headers={"Accept": OHIF_ACCEPT}, timeout=300)
            measured.framecdn.append(time.perf_counter() - started)
        finally:
            stop_process(process, 60)
        assert answer.status_code == 200, f"read-through: {answer.status_code}"
        body = first_part(answer.content, answer.headers["content-type"])
        assert body == generated.frame(1), "read-through frame 1 differs"
        orthanc.restart()
        started = time.perf_counter()
        answer = httpx.get(direct, headers={"Accept": OHIF_ACCEPT,
                                            "Authorization": f"Basic {basic}"}, timeout=300)
        measured.orthanc.append(time.perf_counter() - started)
        assert answer.status_code == 200, f"Orthanc direct: {answer.status_code}"
    return measured


# -- the run -----------------------------------------------------------------------------


class StreamOrigin:
    """``framecdn serve`` in a subprocess; a restart is a new process (empty index cache)."""

    def __init__(self, store: EmbeddedS3, settings: Settings, delivery: str, log: Path) -> None:
        self.store, self.settings, self.delivery, self.log = store, settings, delivery, log
        self.origin: Origin | None = None

    def restart(self) -> None:
        self.stop()
        self.origin = start_origin(self.store, self.settings, self.delivery, self.log)

    def stop(self) -> None:
        if self.origin is not None:
            self.origin.stop()
            self.origin = None

    def frame_url(self, generated: GeneratedInstance, number: int) -> str:
        assert self.origin is not None
        return f"{self.origin.root}{instance_path(generated)}/frames/{number}"


class FreshNginx:
    """The shipped nginx config in front of an origin; a restart is a new nginx whose cache
    directory is empty."""

    def __init__(self, binary: str, origin: Origin, settings: Settings, workdir: Path) -> None:
        self.binary, self.origin, self.settings, self.workdir = binary, origin, settings, workdir
        self._running: contextlib.ExitStack | None = None
        self.nginx: RunningNginx | None = None

    def restart(self) -> None:
        self.stop()
        self._running = contextlib.ExitStack()
        directory = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.workdir))
        self.nginx = self._running.enter_context(
            run_nginx(
                self.binary, directory, self.origin.base, self.settings, worker_processes="auto"
            )
        )

    def stop(self) -> None:
        if self._running is not None:
            self._running.close()
            self._running = self.nginx = None

    def frame_url(self, generated: GeneratedInstance, number: int) -> str:
        assert self.nginx is not None
        return f"{self.nginx.root}{instance_path(generated)}/frames/{number}"


def instance_path(generated: GeneratedInstance) -> str:
    return (
        f"/studies/{generated.study_uid}/series/{generated.series_uid}"
        f"/instances/{generated.sop_uid}"
    )


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Result], float, ReadThrough]:
    nginx_binary = nginx_binary_or_none()
    if nginx_binary is None:
        raise SystemExit("nginx is needed (apt-get install nginx-light)")
    reason = missing_reason()
    if reason is not None:
        raise SystemExit(reason)
    print(f"generating {args.frames} frames of 2457x1890 16-bit in {workdir} ...", flush=True)
    generated = write_tomosynthesis(workdir / "tomo.dcm", frames=args.frames, seed=7)
    frame_length = generated.frame_length or 0
    size_mb = generated.path.stat().st_size / 1e6

    def measure(target: Target, restart: Callable[[], None], warm_target: Target) -> Result:
        """Bytes checked; cold scroll after ``restart``; warm scroll; one-frame latency."""
        check_bytes(target, generated)
        restart()
        result = Result(warm_target.name)
        result.scroll["cold"] = scroll(target, args.frames, frame_length)
        result.scroll["warm"] = scroll(warm_target, args.frames, frame_length)
        result.one_frame = one_frame(warm_target, args.frames, args.samples, frame_length)
        print(f"  {_summary(result)}", flush=True)
        return result

    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(EmbeddedS3(workdir / "s3", bucket="framecdn-peer"))
        orthanc = stack.enter_context(OrthancServer(workdir / "orthanc", stable_age=3600))
        started = time.perf_counter()
        orthanc_id = orthanc.upload(generated.path)
        print(f"Orthanc: stored {size_mb:.0f} MB in {time.perf_counter() - started:.1f} s")
        settings = store.settings(prefix="peer")
        started = time.perf_counter()
        ingest_file(generated.path, settings)
        print(f"framecdn: ingested in {time.perf_counter() - started:.1f} s", flush=True)

        print("Orthanc ...", flush=True)
        basic = base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
        orthanc_auth = {"Authorization": f"Basic {basic}"}
        dicomweb = f"{orthanc.dicomweb_root}{instance_path(generated)}/frames/"
        for target in (
            Target(
                "Orthanc DICOMweb",
                lambda n: f"{dicomweb}{n}",
                {**orthanc_auth, "Accept": OHIF_ACCEPT},
            ),
            Target(
                "Orthanc /frames/N/raw",
                lambda n: f"{orthanc.url}/instances/{orthanc_id}/frames/{n - 1}/raw",
                orthanc_auth,
            ),
        ):
            results.append(measure(target, orthanc.restart, target))

        print("framecdn stream ...", flush=True)
        log = workdir / "origin.log"
        stream = StreamOrigin(store, settings, "stream", log)
        stack.callback(stream.stop)
        stream.restart()
        target = Target(
            "framecdn stream", lambda n: stream.frame_url(generated, n), {"Accept": OHIF_ACCEPT}
        )
        results.append(measure(target, stream.restart, target))

        print("framecdn accel behind nginx ...", flush=True)
        accel = StreamOrigin(store, settings.with_overrides(delivery="accel"), "accel", log)
        stack.callback(accel.stop)
        accel.restart()
        assert accel.origin is not None
        nginx = FreshNginx(nginx_binary, accel.origin, accel.settings, workdir)
        stack.callback(nginx.stop)
        nginx.restart()
        for accept, label in ((OHIF_ACCEPT, "multipart"), (SINGLE_PART, "single-part")):
            headers = {"Accept": accept}
            cold = Target(
                f"framecdn accel, nginx ({label})", lambda n: nginx.frame_url(generated, n), headers
            )
            warm = Target(
                f"framecdn accel, nginx warm ({label})",
                lambda n: nginx.frame_url(generated, n),
                headers,
                "HIT",
            )
            results.append(measure(cold, nginx.restart, warm))
        print("read-through (first frame, upstream = Orthanc) ...", flush=True)
        read_through = measure_read_through_first_frame(
            store, orthanc, generated, args.read_through_samples, workdir
        )
    return results, size_mb, read_through


def _summary(result: Result) -> str:
    return (
        f"{result.name}: one frame p50 {percentile(result.one_frame, 50) * 1e3:.1f} ms; "
        f"scroll cold {result.scroll['cold']:.2f} s, warm {result.scroll['warm']:.2f} s"
    )


def report(
    results: list[Result], args: argparse.Namespace, size_mb: float, read_through: ReadThrough
) -> None:
    reference = results[0]  # Orthanc DICOMweb
    ref_one = percentile(reference.one_frame, 50)
    megabytes = args.frames * 2457 * 1890 * 2 / 1e6
    print()
    print(
        f"Peer comparison, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{args.frames} frames of 9.3 MB ({size_mb:.0f} MB instance); one frame: "
        f"{args.samples} sequential requests; scroll: all frames, {SCROLL_CONCURRENCY} concurrent"
    )
    print()
    print(
        "| Target | one frame p50 | p90 | × Orthanc DICOMweb | scroll cold | × | "
        "scroll warm | × | warm MB/s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for result in results:
        one, p90 = percentile(result.one_frame, 50), percentile(result.one_frame, 90)
        cold, warm = result.scroll["cold"], result.scroll["warm"]
        print(
            f"| {result.name} | {one * 1e3:.1f} ms | {p90 * 1e3:.1f} ms"
            f" | {ref_one / one:.1f} | {cold:.2f} s | {reference.scroll['cold'] / cold:.1f}"
            f" | {warm:.2f} s | {reference.scroll['warm'] / warm:.1f} | {megabytes / warm:.0f} |"
        )
    through, direct = percentile(read_through.framecdn, 50), percentile(read_through.orthanc, 50)
    print(
        f"| read-through first frame (upstream = Orthanc DICOMweb), vs Orthanc DICOMweb first "
        f"frame {direct * 1e3:.1f} ms | {through * 1e3:.1f} ms "
        f"| {percentile(read_through.framecdn, 90) * 1e3:.1f} ms | {direct / through:.2f} "
        "| | | | | |"
    )
    print()
    print(
        f"Read-through: first frame {through * 1e3:.1f} ms through framecdn, "
        f"{direct * 1e3:.1f} ms from Orthanc DICOMweb (p50 of {len(read_through.framecdn)} cold "
        f"samples): ×{through / direct:.2f} of Orthanc's time (aim: at most ×1.10)"
    )
    raw = results[1]
    print(
        f"Against Orthanc's raw frames: one frame {percentile(raw.one_frame, 50) * 1e3:.1f} ms; "
        + "; ".join(
            f"{r.name} ×{percentile(raw.one_frame, 50) / percentile(r.one_frame, 50):.1f}"
            for r in results[2:]
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--samples", type=int, default=10, help="one-frame requests per target")
    parser.add_argument(
        "--read-through-samples", type=int,
        help="cold first frames through framecdn's read-through, and from Orthanc (default 5)",
    )
    parser.add_argument("--small", action="store_true", help="smoke run: 6 frames, 3 samples")
    parser.add_argument("--workdir", help="where the instance, stores and logs go (default TMP)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if args.small:
        args.frames, args.samples = 6, 3
    if args.read_through_samples is None:
        args.read_through_samples = 2 if args.small else 5
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="framecdn-peer-", dir=args.workdir))
    try:
        results, size_mb, read_through = run(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(results, args, size_mb, read_through)
    print(f"\n(bench took {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
