"""Rate buckets, header sync, token estimates and the adaptive concurrency limit, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.ratelimit import (
    DEFAULT_COMPLETION_TOKENS,
    IMAGE_TOKENS_HIGH,
    IMAGE_TOKENS_LOW,
    OPAQUE_PART_TOKENS,
    AdaptiveConcurrency,
    AimdParams,
    CompletionLengths,
    RateLimiter,
    TokenBucket,
    TokenEstimate,
    estimate_tokens,
)
from schemas.chat import (
    AssistantMessage,
    ChatCompletionRequest,
    FunctionCall,
    FunctionDefinition,
    FunctionTool,
    FunctionToolCall,
    ImageUrl,
    ImageUrlPart,
    InputAudio,
    InputAudioPart,
    TextPart,
    Usage,
    UserMessage,
)


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


# --------------------------------------------------------------------------------------------------
# Token estimate
# --------------------------------------------------------------------------------------------------


def _request(*messages: UserMessage | AssistantMessage, **params: object) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=list(messages), **params)  # type: ignore[arg-type]


def test_string_content_counts_four_characters_per_token_plus_framing() -> None:
    estimate = estimate_tokens(_request(UserMessage(content="x" * 40)), expected_completion_tokens=10)
    assert estimate == TokenEstimate(prompt=3 + 4 + 10, completion=10, completion_is_budget=False)


def test_list_content_parts_are_all_counted() -> None:
    message = UserMessage(
        content=[
            TextPart(text="y" * 8),
            ImageUrlPart(image_url=ImageUrl(url="https://x/i.png", detail="low")),
            ImageUrlPart(image_url=ImageUrl(url="https://x/j.png")),
            InputAudioPart(input_audio=InputAudio(data="AAAA", format="wav")),
        ]
    )
    estimate = estimate_tokens(_request(message), expected_completion_tokens=0)
    assert estimate.prompt == 3 + 4 + 2 + IMAGE_TOKENS_LOW + IMAGE_TOKENS_HIGH + OPAQUE_PART_TOKENS


def test_max_completion_tokens_times_n_is_the_completion_budget() -> None:
    request = _request(UserMessage(content="hi"), max_completion_tokens=100, n=3)
    estimate = estimate_tokens(request, expected_completion_tokens=7)
    assert (estimate.completion, estimate.completion_is_budget) == (300, True)


def test_legacy_max_tokens_is_a_budget_too() -> None:
    estimate = estimate_tokens(_request(UserMessage(content="hi"), max_tokens=50), expected_completion_tokens=7)
    assert (estimate.completion, estimate.completion_is_budget) == (50, True)


def test_tool_definitions_and_assistant_tool_calls_count() -> None:
    call = FunctionToolCall(id="c1", function=FunctionCall(name="lookup", arguments='{"q": "' + "z" * 40 + '"}'))
    tool = FunctionTool(function=FunctionDefinition(name="lookup", parameters={"type": "object"}))
    bare = estimate_tokens(_request(UserMessage(content="hi")), expected_completion_tokens=0).prompt
    with_tools = estimate_tokens(
        _request(UserMessage(content="hi"), AssistantMessage(tool_calls=[call]), tools=[tool]),
        expected_completion_tokens=0,
    ).prompt
    assert with_tools - bare >= 4 + 2 + 12 + 10


def test_charged_tokens_keep_a_budget_and_replace_a_guess() -> None:
    usage = Usage(prompt_tokens=12, completion_tokens=9, total_tokens=21)
    assert TokenEstimate(10, 300, completion_is_budget=True).charged(usage) == 12 + 300
    assert TokenEstimate(10, 256, completion_is_budget=False).charged(usage) == 12 + 9


def test_completion_lengths_are_learnt_per_model() -> None:
    lengths = CompletionLengths()
    assert lengths.expected("m") == DEFAULT_COMPLETION_TOKENS
    for _ in range(200):
        lengths.observe("m", completion_tokens=40, choices=2)
    assert 20 <= lengths.expected("m") <= 22
    assert lengths.expected("other") == DEFAULT_COMPLETION_TOKENS


# --------------------------------------------------------------------------------------------------
# Buckets and the limiter
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Adaptive concurrency
# --------------------------------------------------------------------------------------------------


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
