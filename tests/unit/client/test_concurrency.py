"""The adaptive concurrency limit: AIMD cuts once per generation, raises while used, waiters in order."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.client.concurrency import AdaptiveConcurrency, AimdParams


async def test_overload_cuts_the_limit_once_per_generation() -> None:
    limiter = AdaptiveConcurrency(AimdParams(max_limit=100))
    slots = [await limiter.acquire() for _ in range(10)]
    for slot in slots:  # ten 429s from calls sent under the same limit: one cut
        limiter.release(slot, "overload")
    assert limiter.limit == 70
    limiter.release(await limiter.acquire(), "overload")  # sent after the cut: cuts again
    assert limiter.limit == 49


async def test_the_limit_never_drops_below_the_minimum() -> None:
    limiter = AdaptiveConcurrency(AimdParams(max_limit=4, min_limit=2))
    for _ in range(10):
        limiter.release(await limiter.acquire(), "overload")
    assert limiter.limit == 2


async def test_successes_raise_the_limit_back_while_it_is_used() -> None:
    limiter = AdaptiveConcurrency(AimdParams(max_limit=100))
    limiter.release(await limiter.acquire(), "overload")
    assert limiter.limit == 70
    for _ in range(200):
        slots = [await limiter.acquire() for _ in range(limiter.limit)]
        for slot in slots:
            limiter.release(slot, "success", 0.1)
    assert limiter.limit == 100


async def test_an_idle_limit_does_not_grow() -> None:
    limiter = AdaptiveConcurrency(AimdParams(max_limit=100))
    limiter.release(await limiter.acquire(), "overload")
    for _ in range(500):
        limiter.release(await limiter.acquire(), "success", 0.1)  # one call in flight of 70 allowed
    assert limiter.limit == 70


async def _round(limiter: AdaptiveConcurrency, latency_s: float) -> None:
    """Fill the limit, then let every call finish with ``latency_s``."""
    slots = [await limiter.acquire() for _ in range(limiter.limit)]
    for slot in slots:
        limiter.release(slot, "success", latency_s)


async def test_latency_growth_under_full_use_cuts_gently_once_per_generation() -> None:
    limiter = AdaptiveConcurrency(AimdParams(max_limit=100))
    for _ in range(5):
        await _round(limiter, 0.1)
    assert limiter.limit == 100
    await _round(limiter, 1.0)
    assert limiter.limit == 90  # a hundred slow answers, one cut
    await _round(limiter, 1.0)
    # One more cut (to 81); late in the round the long-run average has caught up and growth resumes.
    assert 81 <= limiter.limit < 90


async def test_latency_growth_with_the_limit_unused_is_not_our_doing() -> None:
    limiter = AdaptiveConcurrency(AimdParams(max_limit=100))
    for latency in [0.1] * 50 + [1.0] * 20:
        limiter.release(await limiter.acquire(), "success", latency)
    assert limiter.limit == 100


async def test_callers_beyond_the_limit_wait_and_are_woken_in_order() -> None:
    limiter = AdaptiveConcurrency(AimdParams(max_limit=1))
    first = await limiter.acquire()
    woken: list[str] = []

    async def wait(name: str) -> None:
        slot = await limiter.acquire()
        woken.append(name)
        limiter.release(slot, "success", 0.1)

    waiters = [asyncio.create_task(wait(name)) for name in ("a", "b")]
    await asyncio.sleep(0)
    assert woken == [] and limiter.in_flight == 1
    limiter.release(first, "success", 0.1)
    await asyncio.gather(*waiters)
    assert woken == ["a", "b"]
    assert limiter.in_flight == 0


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    limiter = AdaptiveConcurrency(AimdParams(max_limit=1))
    first = await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    limiter.release(first, "neutral")  # hands the slot to the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slot = await asyncio.wait_for(limiter.acquire(), timeout=1)
    assert limiter.in_flight == 1
    limiter.release(slot, "neutral")


async def test_several_releases_in_one_tick_admit_no_more_than_the_limit() -> None:
    """The slot is taken at hand-off: releasing four slots in one event-loop turn wakes four waiters, and
    they count as in flight before they even resume (counting them on resume let a limit of 4 admit 10)."""
    limiter = AdaptiveConcurrency(AimdParams(max_limit=4))
    slots = [await limiter.acquire() for _ in range(4)]
    admitted: list[int] = []

    async def wait(number: int) -> None:
        await limiter.acquire()
        admitted.append(number)

    waiters = [asyncio.create_task(wait(number)) for number in range(6)]
    await asyncio.sleep(0)
    for slot in slots:  # one tick: no waiter runs in between
        limiter.release(slot, "success", 0.1)
    assert limiter.in_flight == 4
    for _ in range(3):
        await asyncio.sleep(0)
    assert admitted == [0, 1, 2, 3]
    assert limiter.in_flight == 4
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_after_a_cut_calls_in_flight_drain_to_the_new_limit_before_anyone_is_admitted() -> None:
    limiter = AdaptiveConcurrency(AimdParams(max_limit=10))
    slots = [await limiter.acquire() for _ in range(10)]
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(10)]
    await asyncio.sleep(0)
    limiter.release(slots[0], "overload")  # 10 -> 7
    seen = [limiter.in_flight]
    for slot in slots[1:]:
        limiter.release(slot, "neutral")
        seen.append(limiter.in_flight)
    await asyncio.sleep(0)
    assert limiter.limit == 7
    assert seen == [9, 8, 7, 7, 7, 7, 7, 7, 7, 7]  # then each release hands its slot on
    assert sum(waiter.done() for waiter in waiters) == 7
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_a_gentle_start_holds_the_initial_limit_until_opened() -> None:
    changes: list[int] = []
    limiter = AdaptiveConcurrency(AimdParams(max_limit=64, initial_limit=2), on_limit=changes.append)
    for _ in range(5):  # successes alone do not open it: the pacer does, once it has heard the provider
        await _round(limiter, 0.1)
    assert (limiter.limit, limiter.starting) == (2, True)
    limiter.open()
    assert (limiter.limit, limiter.starting) == (64, False)
    assert changes == [64]


async def test_an_overload_during_the_start_ends_it() -> None:
    limiter = AdaptiveConcurrency(AimdParams(max_limit=64, initial_limit=10))
    limiter.release(await limiter.acquire(), "overload")
    assert (limiter.limit, limiter.starting) == (7, False)
    limiter.open()  # the limits arriving later do not undo the cut
    assert limiter.limit == 7


async def test_a_timeout_cuts_only_while_latency_is_growing() -> None:
    """A call that simply runs long (a reasoning model at high effort) says nothing about the provider's load;
    timeouts while the answers that do come take ever longer do."""
    limiter = AdaptiveConcurrency(AimdParams(max_limit=100))
    for _ in range(5):
        await _round(limiter, 0.1)
    limiter.release(await limiter.acquire(), "timeout")
    assert limiter.limit == 100
    slots = [await limiter.acquire() for _ in range(100)]
    for slot in slots[:20]:  # answers slow down tenfold
        limiter.release(slot, "success", 1.0)
    cut = limiter.limit
    assert cut < 100
    limiter.release(slots[20], "timeout")  # sent before that cut: the same generation, no second cut
    assert limiter.limit == cut
    for slot in slots[21:]:
        limiter.release(slot, "neutral")
    limiter.release(await limiter.acquire(), "timeout")
    assert limiter.limit == int(cut * 0.7)
