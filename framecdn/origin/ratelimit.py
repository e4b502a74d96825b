"""Per-caller request rate limits: one token bucket per caller, in memory, per process.

A caller is its identity (credential method and subject) when authenticated, else its
address. Each bucket holds up to ``burst`` requests and refills at ``rate`` per second;
a request finding it empty is answered 429 with the seconds until the next token in
``Retry-After``. Callers are kept in an LRU of bounded size, so a flood of made-up
callers costs memory only up to that bound (a forgotten caller starts with a full
bucket: the bound is far above the callers a deployment has).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_CALLERS = 100_000


class RateLimiter:
    """Token buckets by caller key."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_callers: int = MAX_CALLERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_callers = max_callers
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, caller: str) -> int:
        """Spend one token of ``caller``: 0 when allowed, else whole seconds to wait (>= 1)."""
        now = self._clock()
        tokens, last = self._buckets.pop(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[caller] = (tokens, now)
        while len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)
        if allowed:
            return 0
        return max(1, math.ceil((1 - tokens) / self.rate))
