"""The worker-wide rate limiter: smooth pacing, a lane pair per model, header sync, usage settlement and 429
pauses, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.client.lanes import FIRST_BURST, MARGIN, SHARE_CUT, Lane, RateLimitHeaders, TokenBucket
from pipeline.client.ratelimit import Dimension, RateLimiter, read_rate_limit_headers
from tests.unit.client.support import FakeTime


def limiter_for(time: FakeTime, *, rpm: int | None = None, tpm: int | None = None) -> RateLimiter:
    return RateLimiter(requests_per_minute=rpm, tokens_per_minute=tpm, clock=time.clock, sleep=time.sleep)


def lane(limiter: RateLimiter, dimension: Dimension = "requests", model: str = "m") -> Lane:
    return limiter.limits(model).lanes[dimension]


def window_headers(remaining: int, reset: str, limit: int = 3000) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": reset,
    }


def test_bucket_refills_continuously_up_to_its_capacity() -> None:
    bucket = TokenBucket(60, 1.0, now=0.0)
    bucket.take(60, now=0.0)
    assert bucket.wait_s(1, now=0.0) == pytest.approx(1.0)
    assert bucket.level(now=30.0) == pytest.approx(30.0)
    assert bucket.level(now=1000.0) == 60


def test_a_take_larger_than_the_capacity_waits_for_a_full_bucket_and_leaves_a_debt() -> None:
    bucket = TokenBucket(60, 1.0, now=0.0, level=0)
    assert bucket.wait_s(500, now=0.0) == pytest.approx(60.0)
    bucket.take(500, now=60.0)
    assert bucket.level(now=60.0) == -440


def test_headers_are_read_with_the_reset_and_malformed_ones_ignored() -> None:
    assert read_rate_limit_headers(window_headers(49, "20ms"), "requests") == RateLimitHeaders(3000, 49, 0.02)
    assert read_rate_limit_headers({"x-ratelimit-remaining-tokens": "7"}, "tokens") == RateLimitHeaders(None, 7)
    malformed = {"x-ratelimit-limit-requests": "lots", "x-ratelimit-remaining-requests": "many"}
    assert read_rate_limit_headers(malformed, "requests") is None


async def test_a_configured_rate_is_paced_smoothly_from_the_start() -> None:
    """No minute's worth at once (the old bucket's burst): a short window's share, then the rate, a little
    under the limit, however long the provider's window turns out to be."""
    time = FakeTime()
    limiter = limiter_for(time, rpm=600)
    for _ in range(60):
        await limiter.acquire("m", 1)
    pace = 600 / 60 * (1 - MARGIN)
    assert time.now - 100 == pytest.approx(59 / pace, rel=0.02)
    assert max(time.sleeps) < 2 / pace  # one call at a time, never a long silence and then a burst


async def test_a_request_waits_for_its_tokens() -> None:
    time = FakeTime()
    limiter = limiter_for(time, tpm=6000)
    await limiter.acquire("m", 600)
    await limiter.acquire("m", 300)
    assert time.now - 100 == pytest.approx(600 / (100 * (1 - MARGIN)), rel=0.01)


async def test_waiters_are_served_in_order() -> None:
    time = FakeTime()
    limiter = limiter_for(time, tpm=60)
    await limiter.acquire("m", 60)
    order: list[str] = []

    async def take(name: str, tokens: int) -> None:
        await limiter.acquire("m", tokens)
        order.append(name)

    await asyncio.gather(take("large", 30), take("small-1", 1), take("small-2", 1))
    assert order == ["large", "small-1", "small-2"]


async def test_every_model_has_its_own_lanes() -> None:
    """OpenAI's limits are per model: an answer about one model never resizes another's lane."""
    time = FakeTime()
    limiter = limiter_for(time)
    mini = await limiter.acquire("mini", 1)
    large = await limiter.acquire("large", 1)
    limiter.on_response(mini, window_headers(499, "120ms", limit=500))
    limiter.on_response(large, window_headers(19, "3s", limit=20))
    limiter.on_response(mini, window_headers(498, "240ms", limit=500))
    assert (lane(limiter, model="mini").per_minute, lane(limiter, model="large").per_minute) == (500, 20)


async def test_the_window_is_learnt_from_remaining_and_reset() -> None:
    """``remaining + reset x limit / 60`` is the enforcing bucket: 50 of 3,000/min is a 1 s window; the lane's
    burst grows to it, doubling each round trip, never beyond it."""
    time = FakeTime()
    limiter = limiter_for(time)
    permit = await limiter.acquire("m", 1)
    limiter.on_response(permit, window_headers(49, "20ms"))
    learnt = lane(limiter)
    assert learnt.window_s == pytest.approx(1.0)
    pace = 3000 / 60 * (1 - MARGIN)
    assert learnt.bucket.capacity == pytest.approx(FIRST_BURST * pace)  # an eighth of the window at first
    for _ in range(10):  # each an answer to a call sent after the last change
        permit = await limiter.acquire("m", 1)
        limiter.on_response(permit, window_headers(49, "20ms"))
    assert learnt.bucket.capacity == pytest.approx(pace)  # a second's worth: the window


async def test_a_per_minute_window_is_learnt_and_its_bucket_spent_within_a_few_round_trips() -> None:
    time = FakeTime()
    limiter = limiter_for(time, rpm=600)
    permit = await limiter.acquire("m", 1)
    limiter.on_response(permit, window_headers(599, "100ms", limit=600))
    learnt = lane(limiter)
    assert learnt.window_s == pytest.approx(60.0)
    sent = 1
    for _ in range(12):  # round trips of 0.3 s: send what the lane allows, then hear the provider
        while learnt.bucket.wait_s(1, time.now) == 0:
            permit = await limiter.acquire("m", 1)
            sent += 1
        time.now += 0.3
        limiter.on_response(permit, window_headers(600 - sent, "1s", limit=600))
    assert sent >= 550  # most of the bank, without waiting on the refill (36 requests in 3.6 s)


async def test_headers_pull_the_lane_down_to_what_the_provider_reports() -> None:
    time = FakeTime()
    limiter = limiter_for(time, rpm=3000)
    permit = await limiter.acquire("m", 1)
    limiter.on_response(permit, window_headers(49, "20ms"))
    for _ in range(10):
        permit = await limiter.acquire("m", 1)
        limiter.on_response(permit, window_headers(49, "20ms"))
    time.now += 10
    limiter.on_response(permit, window_headers(30, "400ms"))  # another client of the key took 20
    assert lane(limiter).bucket.level(time.now) == 30


async def test_unconfigured_limits_are_learnt_from_the_headers() -> None:
    time = FakeTime()
    limiter = limiter_for(time)
    assert limiter.limits("m").lanes == {} and not limiter.learnt
    permit = await limiter.acquire("m", 300)
    limiter.on_response(
        permit,
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-tokens": "2s",
        },
    )
    assert limiter.learnt
    assert (lane(limiter).per_minute, lane(limiter, "tokens").per_minute) == (500, 30000)
    assert lane(limiter, "tokens").window_s == pytest.approx(60.0)


async def test_a_configured_limit_below_the_providers_is_kept_and_its_bank_left_alone() -> None:
    """The operator's share of a key others use too: paced under it, never spending the provider's bank."""
    time = FakeTime()
    limiter = limiter_for(time, rpm=60)
    for _ in range(12):
        permit = await limiter.acquire("m", 1)
        limiter.on_response(permit, window_headers(999, "60ms", limit=1000))
    assert lane(limiter).per_minute == 60
    assert lane(limiter).bucket.rate_per_s == pytest.approx(1 * (1 - MARGIN))
    assert lane(limiter).bucket.level(time.now) < 2


async def test_usage_settles_the_estimate() -> None:
    time = FakeTime()
    limiter = limiter_for(time, tpm=60_000)
    tokens = lane(limiter, "tokens").bucket
    before = tokens.level(time.now)
    permit = await limiter.acquire("m", 30)
    limiter.on_charged(permit, 12)
    assert tokens.level(time.now) == pytest.approx(before - 12)
    permit = await limiter.acquire("m", 10)
    limiter.on_charged(permit, 40)
    assert tokens.level(time.now) == pytest.approx(before - 12 - 40)


async def test_a_429_returns_the_refused_share_halves_the_pace_and_pauses_that_model() -> None:
    time = FakeTime()
    limiter = limiter_for(time, rpm=600)
    permit = await limiter.acquire("m", 10)
    limiter.on_rate_limited(permit, window_headers(0, "60s", limit=600), retry_after_s=2.0, dimension="requests")
    assert lane(limiter).share == SHARE_CUT
    assert lane(limiter).bucket.level(time.now) == 0
    again = await limiter.acquire("m", 10)  # sent after the cut, so its 429 cuts again
    limiter.on_rate_limited(again, window_headers(0, "60s", limit=600), retry_after_s=2.0, dimension="requests")
    assert lane(limiter).share <= SHARE_CUT**2
    assert time.now == pytest.approx(102.0, abs=0.01)  # the second waited out the first one's pause
    assert limiter.limits("other").paused_until == 0.0  # another model is not paused


async def test_the_429s_of_calls_sent_before_a_cut_do_not_cut_again() -> None:
    time = FakeTime()
    limiter = limiter_for(time, rpm=600)
    permits = [await limiter.acquire("m", 1) for _ in range(3)]
    for permit in permits:
        limiter.on_rate_limited(permit, window_headers(0, "1s", limit=600), retry_after_s=None, dimension="requests")
    assert lane(limiter).share == SHARE_CUT


async def test_a_429_without_headers_empties_the_lanes() -> None:
    time = FakeTime()
    limiter = limiter_for(time, rpm=60, tpm=60_000)
    permit = await limiter.acquire("m", 1)
    limiter.on_rate_limited(permit, {}, retry_after_s=None)
    assert lane(limiter).bucket.level(time.now) == 0
    assert lane(limiter, "tokens").bucket.level(time.now) == 0


async def test_a_429_while_the_headers_show_room_teaches_a_shorter_window() -> None:
    """A provider that reports its minute but enforces a second: the headers say 2,000 remain, yet 429."""
    time = FakeTime()
    limiter = limiter_for(time)
    permit = await limiter.acquire("m", 1)
    limiter.on_response(permit, window_headers(2999, "20ms"))
    assert lane(limiter).window_s == pytest.approx(60.0)
    for _ in range(6):
        permit = await limiter.acquire("m", 1)
        limiter.on_rate_limited(permit, window_headers(2000, "20s"), retry_after_s=None, dimension="requests")
    assert lane(limiter).window_s == pytest.approx(60.0 / 2**6)


async def test_calls_sent_before_a_limit_was_learnt_settle_nothing_into_it() -> None:
    """Their cost is already in the ``remaining`` that taught the limit; refunding it would over-credit."""
    time = FakeTime()
    limiter = limiter_for(time)
    early = await limiter.acquire("m", 300)
    limiter.on_response(early, {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "700"})
    level = lane(limiter, "tokens").bucket.level(time.now)
    limiter.on_charged(early, 40)
    assert lane(limiter, "tokens").bucket.level(time.now) == level
