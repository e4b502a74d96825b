"""``ByteBudget``: what bounds ingest memory, tested on its own (no store, no files)."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from framecdn.ingest.pipeline import ByteBudget


def acquire_in_thread(budget: ByteBudget, size: int) -> threading.Event:
    """Start acquiring ``size`` in a thread; the event is set once it got through."""
    done = threading.Event()

    def run() -> None:
        budget.acquire(size)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def test_acquire_within_the_limit_does_not_wait():
    budget = ByteBudget(100)
    budget.acquire(60)
    assert acquire_in_thread(budget, 40).wait(2)


def test_acquire_over_the_limit_waits_for_a_release():
    budget = ByteBudget(100)
    budget.acquire(60)
    waiting = acquire_in_thread(budget, 50)
    assert not waiting.wait(0.3)  # 60 + 50 > 100: held back
    budget.release(60)
    assert waiting.wait(2)


def test_one_frame_larger_than_the_budget_goes_alone():
    budget = ByteBudget(100)
    assert acquire_in_thread(budget, 500).wait(2)  # nothing held: it goes
    small = acquire_in_thread(budget, 1)
    assert not small.wait(0.3)  # but nothing goes beside it
    budget.release(500)
    assert small.wait(2)


def test_bytes_in_flight_never_exceed_the_budget_or_one_frame():
    rng = random.Random(7)
    limit, sizes = 1000, [rng.randint(1, 1500) for _ in range(300)]
    budget = ByteBudget(limit)
    lock = threading.Lock()
    in_flight, frames, most_frames = 0, 0, 0

    def frame(size: int) -> None:
        nonlocal in_flight, frames, most_frames
        budget.acquire(size)
        with lock:
            in_flight, frames = in_flight + size, frames + 1
            most_frames = max(most_frames, frames)
            assert in_flight <= limit or frames == 1, (in_flight, frames)
        time.sleep(0.001)  # an upload takes a while: frames overlap
        with lock:
            in_flight, frames = in_flight - size, frames - 1
        budget.release(size)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(frame, sizes))
    assert in_flight == 0 and most_frames > 1  # it did hold several at once, within budget
