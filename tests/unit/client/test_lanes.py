"""A lane under a limit enforced over a short window, alone or with other workers on the key: what it infers
from the provider's ``remaining``, and the whole loop against the simulator's buckets in virtual time."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass, field

import pytest

from pipeline.client.lanes import MARGIN, RESERVE_S, SHARE_GROWTH_PER_S, Lane, RateLimitHeaders
from pipeline.client.pacing import INITIAL_CONCURRENCY as PROBES
from pipeline.client.ratelimit import Permit, RateLimiter
from pipeline.simulator.ratelimit import RateLimiter as ProviderLimits
from tests.unit.client.support import FakeTime

RATE = 3000 / 60  # 3,000 requests/min


def reading(remaining: float, reset_s: float = 0.0) -> RateLimitHeaders:
    return RateLimitHeaders(3000, remaining, reset_s)


def learnt_lane(now: float, remaining: float = 40, reset_s: float = 0.2) -> Lane:
    """A lane that learnt a 1 s window (``remaining + reset x 50/s`` = 50) from its first answer."""
    lane = Lane(now, configured=None, reported=reading(remaining, reset_s))
    assert lane.window_s == pytest.approx(1.0)
    return lane


def test_a_lane_whose_takes_explain_the_providers_remaining_is_alone_and_spends_the_surplus() -> None:
    now, remaining = 0.0, 20.0
    lane = learnt_lane(now, remaining, reset_s=0.6)
    for _ in range(150):  # 20 ms apart for 3 s: the provider refills one, we take one
        now += 0.02
        lane.take(1, now)
        lane.on_reading(reading(remaining, (50 - remaining) / RATE), lane.ticket(), now)
    assert lane.alone and lane.share == 1.0
    lane.take(lane.bucket.level(now), now)  # what earlier answers let it send, sent
    lane.on_reading(reading(45, 0.1), lane.ticket(), now)  # our margin left refill over: an answer shows it
    assert lane.bucket.level(now) == pytest.approx(45 - RESERVE_S * RATE)  # spent down to a reserve, at once


def test_a_lane_that_sees_others_take_cuts_its_share_before_any_429() -> None:
    """Every 20 ms the provider refills one and we take one, yet its remaining falls by one: others take
    as much as we do. Measured together we are over the target, so the share comes down at once."""
    now, remaining = 0.0, 24.0
    lane = learnt_lane(now, remaining, reset_s=26 / RATE)
    for _ in range(20):
        now += 0.02
        lane.take(1, now)
        remaining -= 1
        lane.on_reading(reading(remaining, (50 - remaining) / RATE), lane.ticket(), now)
    assert not lane.alone
    assert lane.share <= 0.6
    assert lane.bucket.rate_per_s == pytest.approx(lane.share * RATE * (1 - MARGIN))


def test_with_others_on_the_key_room_grows_the_share_back_additively() -> None:
    now = 0.0
    lane = learnt_lane(now, 24.0, reset_s=26 / RATE)
    remaining = 24.0
    for _ in range(15):  # as above: others take as much as we do
        now += 0.02
        lane.take(1, now)
        remaining -= 1
        lane.on_reading(reading(remaining, (50 - remaining) / RATE), lane.ticket(), now)
    cut = lane.share
    for _ in range(10):  # then the provider's bucket is full at every answer, a second apart
        now += 1.0
        lane.on_reading(reading(49, 0.02), lane.ticket(), now)
    assert lane.share == pytest.approx(min(1.0, cut + 10 * SHARE_GROWTH_PER_S))


# --------------------------------------------------------------------------------------------------
# Several workers on one key, against the simulator's buckets, in virtual time
# --------------------------------------------------------------------------------------------------


@dataclass(order=True)
class Answer:
    at: float
    order: int
    worker: int = field(compare=False)
    permit: Permit = field(compare=False)
    headers: dict[str, str] | None = field(compare=False)
    retry_after_s: float = field(compare=False, default=0.0)


@dataclass
class Tally:
    admitted: int = 0
    refused: int = 0


async def share_a_key(window_s: float, workers: int, *, configured: bool, seconds: float = 30.0) -> Tally:
    """``workers`` rate limiters on one key for ``seconds``, 1 ms ticks: each sends whatever its lanes allow
    (before any limit is known, the two calls of the concurrency limit's gentle start); the provider admits
    or refuses at once, an answer comes after a log-normal latency (p50 300 ms) with the headers as they
    are then, a refusal at once with its ``retry-after``."""
    time = FakeTime()
    provider = ProviderLimits(3000, None, clock=time.clock, window_s=window_s)
    rpm = 3000 if configured else None
    limiters = [RateLimiter(requests_per_minute=rpm, tokens_per_minute=None, clock=time.clock) for _ in range(workers)]
    in_flight = [0] * workers
    rng, order, answers, tally = random.Random(7), itertools.count(), list[Answer](), Tally()
    start = time.now
    for tick in range(int(seconds * 1000)):
        time.now = start + tick / 1000
        while answers and answers[0].at <= time.now:
            answer = heapq.heappop(answers)
            in_flight[answer.worker] -= 1
            limiter = limiters[answer.worker]
            if answer.headers is not None:  # a refusal, with the headers as they were then
                limiter.on_rate_limited(answer.permit, answer.headers, answer.retry_after_s, "requests")
            else:
                limiter.on_response(answer.permit, provider.headers())
        for worker, limiter in enumerate(limiters):
            limits = limiter.limits("gpt-4o-mini")
            while limits.wait_s(1, time.now) <= 0 and (limiter.learnt or configured or in_flight[worker] < PROBES):
                permit = await limiter.acquire("gpt-4o-mini", 1)
                in_flight[worker] += 1
                refusal = provider.admit(1)
                if refusal is None:
                    tally.admitted += 1
                    latency = math.exp(rng.gauss(math.log(0.3), 0.7))
                    heapq.heappush(answers, Answer(time.now + latency, next(order), worker, permit, None))
                else:
                    tally.refused += 1
                    retry = math.ceil(refusal.retry_after_s * 1000) / 1000
                    refused = Answer(time.now, next(order), worker, permit, provider.headers(), retry)
                    heapq.heappush(answers, refused)
    return tally


@pytest.mark.parametrize("window_s", [1.0, 0.1])
@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("configured", [False, True], ids=["learnt", "configured"])
async def test_workers_on_one_key_stay_under_a_windowed_limit_together(
    window_s: float, workers: int, configured: bool
) -> None:
    """At least 95% of what the limit allowed, start included (one window's share plus the refill), with
    at most 1% of the calls refused: alone or three of them, each told the whole limit or learning it."""
    seconds = 30.0
    tally = await share_a_key(window_s, workers, configured=configured, seconds=seconds)
    allowed = RATE * (window_s + seconds)
    assert tally.admitted >= 0.95 * allowed
    assert tally.admitted <= allowed
    assert tally.refused <= 0.01 * (tally.admitted + tally.refused)
