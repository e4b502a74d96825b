"""TTLCache: single-flight loading, expiry on an injected clock, LRU eviction."""

from __future__ import annotations

import asyncio

import pytest

from framecdn.origin.cache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_misses_share_one_load() -> None:
    calls = 0

    async def scenario() -> list[str | None]:
        cache: TTLCache[str, str] = TTLCache(8, 60)
        release = asyncio.Event()

        async def load() -> str:
            nonlocal calls
            calls += 1
            await release.wait()
            return "index"

        waiters = [asyncio.create_task(cache.get_or_load("k", load)) for _ in range(3)]
        await asyncio.sleep(0)  # all three are waiting now
        release.set()
        results = await asyncio.gather(*waiters)
        assert await cache.get_or_load("k", load) == "index"  # cached: no fourth call
        return results

    assert run(scenario()) == ["index"] * 3
    assert calls == 1


def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    calls = 0

    async def scenario() -> None:
        cache: TTLCache[str, str] = TTLCache(8, 60)
        release = asyncio.Event()

        async def failing() -> str:
            nonlocal calls
            calls += 1
            await release.wait()
            raise OSError("S3 said no")

        waiters = [asyncio.create_task(cache.get_or_load("k", failing)) for _ in range(3)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert [type(r) for r in results] == [OSError] * 3
        assert all(str(r) == "S3 said no" for r in results)
        assert calls == 1
        assert cache.get("k") is None

        async def working() -> str:
            return "index"

        assert await cache.get_or_load("k", working) == "index"  # the next caller tries again

    run(scenario())


def test_none_is_not_cached() -> None:
    calls = 0

    async def scenario() -> None:
        nonlocal calls
        cache: TTLCache[str, str] = TTLCache(8, 60)

        async def absent() -> str | None:
            nonlocal calls
            calls += 1
            return None

        assert await cache.get_or_load("k", absent) is None
        assert await cache.get_or_load("k", absent) is None

    run(scenario())
    assert calls == 2


def test_a_cancelled_loader_does_not_cancel_the_waiters() -> None:
    """The first client hangs up mid-load; the second still gets its answer."""

    async def scenario() -> str | None:
        cache: TTLCache[str, str] = TTLCache(8, 60)
        started = asyncio.Event()

        async def slow() -> str:
            started.set()
            await asyncio.sleep(10)
            return "never"

        async def quick() -> str:
            return "index"

        first = asyncio.create_task(cache.get_or_load("k", slow))
        await started.wait()
        second = asyncio.create_task(cache.get_or_load("k", quick))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await asyncio.wait_for(second, 5)

    assert run(scenario()) == "index"


def test_entries_expire_on_the_injected_clock() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(8, ttl=10, clock=clock)
    cache.put("k", 1)
    clock.now += 10
    assert cache.get("k") == 1  # fresh for exactly ttl seconds
    clock.now += 0.001
    assert cache.get("k") is None
    assert len(cache) == 0  # an expired entry is dropped when seen
    cache.put("k", 2)
    clock.now += 5
    cache.put("k", 3)  # a put renews the entry
    clock.now += 9
    assert cache.get("k") == 3


def test_least_recently_used_entry_is_evicted() -> None:
    cache: TTLCache[str, int] = TTLCache(3, ttl=60)
    for name, value in (("a", 1), ("b", 2), ("c", 3)):
        cache.put(name, value)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("d", 4)
    assert cache.get("b") is None
    assert [cache.get(k) for k in ("a", "c", "d")] == [1, 3, 4]
    assert len(cache) == 3
    cache.drop("c")
    assert cache.get("c") is None and len(cache) == 2
