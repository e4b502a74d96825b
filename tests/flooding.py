"""One caller floods a URL while another asks calmly: what the rate-limit tests measure.

The origin's own limiter (tests/test_auth.py) and nginx's (tests/test_nginx_auth.py) are
checked the same way: the flood must be cut to its burst and rate (429 with Retry-After)
while the calm caller, with a credential of its own, is answered every time and quickly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx


@dataclass
class Flood:
    statuses: list[int]  # every answer the flooding credential got
    retry_after: set[str]  # the Retry-After values of its 429s
    seconds: float  # how long the flood ran
    calm_latencies: list[float]  # seconds, one per calm request


def flood_while_calm(
    url: str,
    flooding: dict[str, str],
    calm: dict[str, str],
    *,
    calm_requests: int,
    calm_pause: float,
    flooders: int = 2,
) -> Flood:
    """``flooders`` threads ask for ``url`` as fast as they can with the ``flooding`` headers
    while ``calm_requests`` requests with the ``calm`` headers, ``calm_pause`` seconds apart,
    must each be answered 200. The flood stops when the calm requests are done (or fail)."""
    statuses: list[int] = []
    retry_after: set[str] = set()
    stop = threading.Event()

    def flood() -> None:
        with httpx.Client(timeout=10) as own:
            while not stop.is_set():
                response = own.get(url, headers=flooding)
                statuses.append(response.status_code)
                if response.status_code == 429:
                    retry_after.add(response.headers.get("retry-after", ""))

    threads = [threading.Thread(target=flood) for _ in range(flooders)]
    started_flood = time.monotonic()
    for thread in threads:
        thread.start()
    latencies = []
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(calm_requests):
                started = time.perf_counter()
                response = client.get(url, headers=calm)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
                time.sleep(calm_pause)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    return Flood(statuses, retry_after, time.monotonic() - started_flood, latencies)
