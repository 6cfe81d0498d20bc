"""Pacing against the simulator's rate limits, in virtual time shared by both sides.

The simulator's buckets and the client read the same :class:`VirtualTime`, which only the client's sleeps
move; so "how long did the client wait" is exact and no assertion depends on the wall clock.
"""

from __future__ import annotations

import asyncio

import pytest

from pipeline.client import ChatClient
from pipeline.client.lanes import MARGIN, Lane
from pipeline.client.ratelimit import Dimension
from pipeline.outcomes import Completed, Outcome
from pipeline.simulator import FixedLatency
from tests.fixtures.simulator import MakeSimulator
from tests.integration.client_support import Recorder, Sleeps, VirtualTime, client_for, job


async def complete_all(count: int, client: ChatClient, prefix: str = "job") -> list[Outcome]:
    return list(await asyncio.gather(*(client.complete(job("Hello there.", f"{prefix}-{i}")) for i in range(count))))


def lane(client: ChatClient, dimension: Dimension = "requests") -> Lane:
    return client.rate_limiter.limits(client.config.model).lanes[dimension]


async def test_a_configured_rate_is_kept_without_a_single_429(make_simulator: MakeSimulator) -> None:
    time = VirtualTime()
    sim = await make_simulator(rpm=30, clock=time.clock)
    start = time.now
    async with client_for(sim, time=time, requests_per_minute=30, concurrency=8) as client:
        outcomes = await complete_all(90, client)
    assert all(isinstance(outcome, Completed) for outcome in outcomes)
    assert sim.stats().rate_limited == {}
    # The per-minute window's full bucket (30) within a few round trips, then 60 more at the rate, 1% under it.
    assert time.now - start == pytest.approx(60 / (30 / 60 * (1 - MARGIN)), abs=2.1)


async def test_unconfigured_limits_are_learnt_from_the_headers(make_simulator: MakeSimulator) -> None:
    time = VirtualTime()
    sim = await make_simulator(rpm=20, tpm=100_000, clock=time.clock)
    async with client_for(sim, time=time, concurrency=4) as client:
        outcomes = await complete_all(60, client)
        assert (lane(client).per_minute, lane(client, "tokens").per_minute) == (20, 100_000)
        assert lane(client).window_s == pytest.approx(60.0)
    assert all(isinstance(outcome, Completed) for outcome in outcomes)
    assert sim.stats().rate_limited == {}


async def test_remaining_headers_rein_in_a_client_whose_quota_others_used(make_simulator: MakeSimulator) -> None:
    """Another consumer spent most of the minute's requests; our client's own books say it has all 30."""
    time = VirtualTime()
    sim = await make_simulator(rpm=30, clock=time.clock)
    async with client_for(sim, time=time, requests_per_minute=30, concurrency=1) as other:
        await complete_all(25, other, prefix="other")
    sim.reset_stats()
    async with client_for(sim, time=time, requests_per_minute=30, concurrency=1) as client:
        outcomes = await complete_all(20, client)
    assert all(isinstance(outcome, Completed) for outcome in outcomes)
    assert sim.stats().rate_limited == {}


async def test_tokens_per_minute_are_paced_on_estimates_settled_by_usage(make_simulator: MakeSimulator) -> None:
    time = VirtualTime()
    sim = await make_simulator(tpm=2_000, clock=time.clock)
    async with client_for(sim, time=time, tokens_per_minute=2_000, concurrency=4) as client:
        outcomes = await complete_all(100, client)
    assert all(isinstance(outcome, Completed) for outcome in outcomes)
    assert sim.stats().rate_limited == {}
    used = sim.stats().prompt_tokens + sim.stats().completion_tokens
    # Paced to the limit: what was used beyond the first full bucket took (used - 2000) / 2000 minutes,
    # give or take the margin, the first round trips and the last few calls' reservations left unspent.
    assert time.now - 1_000.0 == pytest.approx((used - 2_000) / 2_000 * 60, rel=0.08)


async def test_retry_after_of_a_429_is_honoured(make_simulator: MakeSimulator) -> None:
    sim = await make_simulator(fault_retry_after_ms=250)
    sleeps = Sleeps()
    recorder = Recorder()
    async with client_for(sim, sleeps=sleeps, observer=recorder) as client:
        outcome = await client.complete(job("Hi [[sim:429*2]]"))
        paused_until = client.rate_limiter.limits(client.config.model).paused_until
    assert isinstance(outcome, Completed) and outcome.attempts == 3
    assert sim.stats().by_status == {429: 2, 200: 1}
    assert sim.stats().attempts_by_job == {"job-1": 3}
    retry_waits = sleeps[:2]
    assert all(0.25 <= wait <= 0.275 for wait in retry_waits), retry_waits
    assert paused_until > 0  # every other call of the worker to that model was paused too
    assert recorder.rate_limited == 2


async def test_overload_cuts_the_concurrency_limit_and_success_restores_it(make_simulator: MakeSimulator) -> None:
    """Once the limit has reached its maximum, a 503 cuts it and the successes that follow bring it back; the
    observer hears every change, in order, so its last word is the limit in force. The client's clock is
    virtual (it moves only by the client's own sleeps), so the latencies it measures cannot grow with this
    machine's load: only the 503 may cut the limit (latency growth cutting it is tested on its own)."""
    sim = await make_simulator(latency=FixedLatency(ms=5))
    recorder = Recorder()
    async with client_for(sim, observer=recorder, concurrency=16, time=VirtualTime()) as client:
        await complete_all(100, client, prefix="warm")  # a gentle start: two calls, then (no limits stated) all
        assert client.concurrency.limit == 16 and recorder.limits[-1] == 16
        heard = len(recorder.limits)
        await client.complete(job("Hi [[sim:503*1]]", "overloaded"))
        assert client.concurrency.limit < 16 and recorder.limits[heard] < 16
        outcomes = await complete_all(400, client, prefix="after")
        assert client.concurrency.limit == 16
        assert client.concurrency.in_flight == 0
    assert all(isinstance(outcome, Completed) for outcome in outcomes)
    assert recorder.limits[-1] == 16


@pytest.mark.parametrize("window_s", [1.0, 0.1])
async def test_a_limit_enforced_over_a_short_window_is_learnt_and_kept_without_a_429(
    make_simulator: MakeSimulator, window_s: float
) -> None:
    """3,000/min over 1 s (or 0.1 s) windows: never a minute's worth at once, nor the full concurrency blind;
    the window is read from the headers and the calls go at the rate, a little under it."""
    time = VirtualTime()
    sim = await make_simulator(rpm=3000, tpm=10_000_000, rate_window=window_s, clock=time.clock)
    start = time.now
    async with client_for(sim, time=time, concurrency=64) as client:
        outcomes = await complete_all(300, client)
        assert lane(client).window_s == pytest.approx(window_s, rel=0.05)
        assert lane(client).bucket.capacity <= 3000 / 60 * window_s
    assert all(isinstance(outcome, Completed) for outcome in outcomes)
    assert sim.stats().rate_limited == {}
    # Never faster than the limit allows (one window's share, then the rate); not much slower either.
    assert (300 - 3000 / 60 * window_s) / (3000 / 60) <= time.now - start <= 1.2 * 300 / (3000 / 60)
