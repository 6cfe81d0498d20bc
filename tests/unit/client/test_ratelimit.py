"""Rate buckets and the worker-wide limiter: pacing, header sync, usage settlement and 429 pauses, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.client.ratelimit import RateLimiter, TokenBucket
from tests.unit.client.support import FakeTime


def test_bucket_refills_continuously_up_to_its_capacity() -> None:
    bucket = TokenBucket(60, now=0.0)
    bucket.take(60, now=0.0)
    assert bucket.wait_s(1, now=0.0) == pytest.approx(1.0)
    assert bucket.level(now=30.0) == pytest.approx(30.0)
    assert bucket.level(now=1000.0) == 60


def test_a_take_larger_than_the_capacity_waits_for_a_full_bucket_and_leaves_a_debt() -> None:
    bucket = TokenBucket(60, now=0.0, level=0)
    assert bucket.wait_s(500, now=0.0) == pytest.approx(60.0)
    bucket.take(500, now=60.0)
    assert bucket.level(now=60.0) == -440


async def test_requests_are_paced_at_the_configured_rate() -> None:
    time = FakeTime()
    limiter = RateLimiter(requests_per_minute=60, tokens_per_minute=None, clock=time.clock, sleep=time.sleep)
    for _ in range(60):
        await limiter.acquire(1)
    assert time.now == 100.0  # the first minute's worth goes at once
    for _ in range(30):
        await limiter.acquire(1)
    assert time.now == pytest.approx(130.0)


async def test_a_request_waits_for_its_tokens() -> None:
    time = FakeTime()
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=6000, clock=time.clock, sleep=time.sleep)
    await limiter.acquire(6000)
    await limiter.acquire(1500)
    assert time.now == pytest.approx(115.0)


async def test_waiters_are_served_in_order() -> None:
    time = FakeTime()
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=60, clock=time.clock, sleep=time.sleep)
    await limiter.acquire(60)
    order: list[str] = []

    async def take(name: str, tokens: int) -> None:
        await limiter.acquire(tokens)
        order.append(name)

    await asyncio.gather(take("large", 30), take("small-1", 1), take("small-2", 1))
    assert order == ["large", "small-1", "small-2"]


async def test_headers_pull_the_bucket_down_but_never_up() -> None:
    time = FakeTime()
    limiter = RateLimiter(requests_per_minute=100, tokens_per_minute=None, clock=time.clock, sleep=time.sleep)
    limiter.on_response({"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "40"})
    bucket = limiter.bucket("requests")
    assert bucket is not None
    assert bucket.level(time.now) == 40
    limiter.on_response({"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "90"})
    assert bucket.level(time.now) == 40


async def test_unconfigured_limits_are_learnt_from_the_headers() -> None:
    time = FakeTime()
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=None, clock=time.clock, sleep=time.sleep)
    assert limiter.bucket("tokens") is None
    limiter.on_response(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-tokens": "2s",
        }
    )
    tokens = limiter.bucket("tokens")
    assert tokens is not None
    assert (tokens.capacity, tokens.level(time.now)) == (30000, 29000)
    await limiter.acquire(29000)
    await limiter.acquire(500)
    assert time.now == pytest.approx(101.0)  # 500 tokens at 30000/min


async def test_a_configured_limit_below_the_providers_is_kept() -> None:
    time = FakeTime()
    limiter = RateLimiter(requests_per_minute=60, tokens_per_minute=None, clock=time.clock, sleep=time.sleep)
    limiter.on_response({"x-ratelimit-limit-requests": "1000", "x-ratelimit-remaining-requests": "999"})
    bucket = limiter.bucket("requests")
    assert bucket is not None
    assert bucket.capacity == 60


async def test_malformed_rate_limit_headers_are_ignored() -> None:
    time = FakeTime()
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=None, clock=time.clock, sleep=time.sleep)
    limiter.on_response({"x-ratelimit-limit-requests": "lots", "x-ratelimit-remaining-requests": "many"})
    assert limiter.bucket("requests") is None


async def test_usage_settles_the_estimate() -> None:
    time = FakeTime()
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=1000, clock=time.clock, sleep=time.sleep)
    permit = await limiter.acquire(300)
    limiter.on_charged(permit, 120)
    bucket = limiter.bucket("tokens")
    assert bucket is not None
    assert bucket.level(time.now) == 1000 - 120
    permit = await limiter.acquire(100)
    limiter.on_charged(permit, 400)
    assert bucket.level(time.now) == 1000 - 120 - 400


async def test_a_429_returns_the_refused_share_syncs_and_pauses_everyone() -> None:
    time = FakeTime()
    limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=None, clock=time.clock, sleep=time.sleep)
    permit = await limiter.acquire(10)
    limiter.on_rate_limited(
        permit,
        {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0"},
        retry_after_s=2.0,
    )
    requests = limiter.bucket("requests")
    assert requests is not None
    assert requests.level(time.now) == 0
    await limiter.acquire(10)
    assert time.now == pytest.approx(102.0)


async def test_a_429_without_headers_empties_the_buckets() -> None:
    time = FakeTime()
    limiter = RateLimiter(requests_per_minute=60, tokens_per_minute=None, clock=time.clock, sleep=time.sleep)
    permit = await limiter.acquire(1)
    limiter.on_rate_limited(permit, {}, retry_after_s=None)
    await limiter.acquire(1)
    assert time.now == pytest.approx(101.0)


async def test_calls_sent_before_a_limit_was_learnt_settle_nothing_into_it() -> None:
    """Their cost is already in the ``remaining`` that taught the limit; refunding it would over-credit."""
    time = FakeTime()
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=None, clock=time.clock, sleep=time.sleep)
    early = await limiter.acquire(300)
    limiter.on_response({"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "700"})
    limiter.on_charged(early, 40)
    bucket = limiter.bucket("tokens")
    assert bucket is not None
    assert bucket.level(time.now) == 700  # not 960: the early call's 260 over-estimate was never taken
