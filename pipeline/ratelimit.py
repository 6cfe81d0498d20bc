"""Pacing shared by all the calls a worker has in flight: rate buckets and an adaptive concurrency limit.

Two mechanisms, both worker-wide:

- :class:`RateLimiter`: a requests/min and a tokens/min :class:`TokenBucket`. A call takes one request and
  its *estimated* tokens (:func:`estimate_tokens`) before it is sent; once ``usage`` is known the estimate
  is settled to what the provider charged (:meth:`TokenEstimate.charged`). Every response's
  ``x-ratelimit-remaining-*`` pulls the buckets down to what the provider reports (see
  :meth:`RateLimiter.on_response`), a limit the operator did not configure is learnt from
  ``x-ratelimit-limit-*``, and a 429 pauses every caller for the server's ``retry-after``.
- :class:`AdaptiveConcurrency`: AIMD on the number of calls in flight. Overload signals (429, 503, 504,
  timeouts) and latency growth cut the limit multiplicatively, at most once per "generation" of requests;
  successes raise it additively while the limit is actually in use.

Time comes from an injected clock and sleeps from an injected ``sleep``, so tests are deterministic.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from schemas.chat import (
    AssistantMessage,
    ChatCompletionRequest,
    CustomToolCall,
    FilePart,
    FunctionToolCall,
    ImageUrlPart,
    InputAudioPart,
    RefusalPart,
    TextPart,
    Tool,
    ToolCall,
    Usage,
)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# --------------------------------------------------------------------------------------------------
# Token estimate
# --------------------------------------------------------------------------------------------------

#: Rough English average; the provider's own estimate is made from characters too.
CHARS_PER_TOKEN: Final = 4
TOKENS_PER_MESSAGE: Final = 4
TOKENS_PER_REPLY: Final = 3
#: The provider's usual figures for an image: one 512px tile at low detail, a 1024x1024 image at high.
IMAGE_TOKENS_LOW: Final = 85
IMAGE_TOKENS_HIGH: Final = 765
#: Audio and files have no cheap estimate from the request; a flat charge, corrected by ``usage`` after.
OPAQUE_PART_TOKENS: Final = 256
#: Completion tokens to reserve per choice before any ``usage`` has been seen for a model.
DEFAULT_COMPLETION_TOKENS: Final = 256


def _text_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def _part_tokens(part: TextPart | ImageUrlPart | InputAudioPart | FilePart | RefusalPart) -> int:
    match part:
        case TextPart(text=text):
            return _text_tokens(text)
        case RefusalPart(refusal=text):
            return _text_tokens(text)
        case ImageUrlPart(image_url=image):
            return IMAGE_TOKENS_LOW if image.detail == "low" else IMAGE_TOKENS_HIGH
        case _:
            return OPAQUE_PART_TOKENS


def _tool_tokens(tools: list[Tool]) -> int:
    """Names, descriptions and JSON schemas: counted by their encoded size."""
    return -(-len(msgspec.json.encode(tools)) // CHARS_PER_TOKEN)


def _tool_call_tokens(call: ToolCall) -> int:
    match call:
        case FunctionToolCall(function=function):
            return _text_tokens(function.name) + _text_tokens(function.arguments)
        case CustomToolCall(custom=custom):
            return _text_tokens(custom.name) + _text_tokens(custom.input)


@dataclass(frozen=True, slots=True)
class TokenEstimate:
    """What a request will count against tokens/min, split as the provider charges it."""

    prompt: int
    completion: int
    #: ``True`` when ``completion`` is the request's own budget (``max_completion_tokens`` times ``n``): the
    #: provider charges that budget, so ``usage`` does not change it.
    completion_is_budget: bool

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def charged(self, usage: Usage) -> int:
        """What the provider charged once ``usage`` is known: its prompt count, plus the budget when the
        request set one (the limit counts the budget, not what was generated), else what was generated."""
        completion = self.completion if self.completion_is_budget else usage.completion_tokens
        return usage.prompt_tokens + completion


def estimate_tokens(request: ChatCompletionRequest, expected_completion_tokens: int) -> TokenEstimate:
    """Tokens a request will count against a tokens/min limit, before it is sent.

    Prompt: string content and every list content part (text, refusal, images by detail, audio and files
    at a flat rate), assistant tool-call arguments and tool definitions, plus per-message framing.
    Completion: ``max_completion_tokens`` (or ``max_tokens``) times ``n`` when set, else
    ``expected_completion_tokens`` (see :class:`CompletionLengths`) times ``n``.
    """
    prompt = TOKENS_PER_REPLY
    for message in request.messages:
        prompt += TOKENS_PER_MESSAGE
        content = message.content
        if isinstance(content, str):
            prompt += _text_tokens(content)
        elif content is not None:
            prompt += sum(_part_tokens(part) for part in content)
        if isinstance(message, AssistantMessage) and message.tool_calls:
            prompt += sum(_tool_call_tokens(call) for call in message.tool_calls)
    if request.tools:
        prompt += _tool_tokens(request.tools)
    budget = request.max_completion_tokens or request.max_tokens
    per_choice = budget or expected_completion_tokens
    return TokenEstimate(prompt, per_choice * (request.n or 1), completion_is_budget=budget is not None)


class CompletionLengths:
    """Learns how long completions run per model, for requests that set no ``max_completion_tokens``.

    The estimate is the mean plus twice the mean deviation (both EWMAs, as TCP estimates its retransmission
    timeout): high enough that most completions fit the reservation, so the provider is rarely asked for
    tokens our bucket does not have, without reserving a worst case that would leave the limit unused.
    """

    def __init__(self, initial: int = DEFAULT_COMPLETION_TOKENS, weight: float = 0.05) -> None:
        self._initial = initial
        self._weight = weight
        self._by_model: dict[str, tuple[float, float]] = {}

    def expected(self, model: str) -> int:
        learnt = self._by_model.get(model)
        if learnt is None:
            return self._initial
        mean, deviation = learnt
        return max(1, math.ceil(mean + 2 * deviation))

    def observe(self, model: str, completion_tokens: int, choices: int) -> None:
        sample = completion_tokens / max(1, choices)
        learnt = self._by_model.get(model)
        if learnt is None:
            self._by_model[model] = (sample, sample / 2)
            return
        mean, deviation = learnt
        deviation += self._weight * (abs(sample - mean) - deviation)
        mean += self._weight * (sample - mean)
        self._by_model[model] = (mean, deviation)


# --------------------------------------------------------------------------------------------------
# Buckets
# --------------------------------------------------------------------------------------------------


class TokenBucket:
    """A continuously refilled bucket of ``capacity`` units, ``capacity`` per ``period_s``.

    The level may go negative: a take larger than the capacity waits for a full bucket and leaves a debt,
    and a usage correction may charge more than was reserved. Callers wait while the level is short.
    """

    def __init__(self, capacity: float, now: float, *, period_s: float = 60.0, level: float | None = None) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.rate_per_s = capacity / period_s
        self._period_s = period_s
        self._level = capacity if level is None else min(level, capacity)
        self._updated = now

    def level(self, now: float) -> float:
        if now > self._updated:
            self._level = min(self.capacity, self._level + (now - self._updated) * self.rate_per_s)
            self._updated = now
        return self._level

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (at most the capacity) is available; 0 when it is now."""
        short = min(amount, self.capacity) - self.level(now)
        return 0.0 if short <= 0 else short / self.rate_per_s

    def take(self, amount: float, now: float) -> None:
        self._level = self.level(now) - amount

    def give_back(self, amount: float, now: float) -> None:
        self._level = min(self.capacity, self.level(now) + amount)

    def lower_to(self, level: float, now: float) -> None:
        self._level = min(self.level(now), level)

    def resize(self, capacity: float, now: float) -> None:
        self.level(now)
        self.capacity = capacity
        self.rate_per_s = capacity / self._period_s
        self._level = min(self._level, capacity)


# --------------------------------------------------------------------------------------------------
# The worker-wide rate limiter
# --------------------------------------------------------------------------------------------------

Dimension = Literal["requests", "tokens"]
MIN_WAIT_S: Final = 0.001
DIMENSIONS: Final[tuple[Dimension, ...]] = ("requests", "tokens")


@dataclass(frozen=True, slots=True)
class Permit:
    """What one call took from the buckets (nothing from a bucket that did not exist yet)."""

    tokens: int
    took_request: bool
    took_tokens: bool


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    limit: float | None
    remaining: float


def read_rate_limit_headers(headers: Mapping[str, str], dimension: Dimension) -> RateLimitHeaders | None:
    """The provider's ``x-ratelimit-{limit,remaining}-{requests,tokens}``, when remaining is given.

    (``x-ratelimit-reset-*`` matters when a 429 comes without ``retry-after``: see
    :func:`pipeline.retry.rate_limit_reset_s`.)
    """
    remaining_text = headers.get(f"x-ratelimit-remaining-{dimension}")
    if remaining_text is None:
        return None
    try:
        remaining = float(remaining_text)
    except ValueError:
        return None
    limit: float | None = None
    limit_text = headers.get(f"x-ratelimit-limit-{dimension}")
    if limit_text is not None:
        try:
            limit = float(limit_text)
        except ValueError:
            limit = None
    if not math.isfinite(remaining) or (limit is not None and (not math.isfinite(limit) or limit <= 0)):
        return None
    return RateLimitHeaders(limit, remaining)


class RateLimiter:
    """Requests/min and tokens/min buckets shared by every call of a worker.

    A limit left as ``None`` is learnt from the provider's ``x-ratelimit-limit-*`` header; until then that
    dimension is not paced here (the adaptive concurrency limit and the 429 pause still apply). A configured
    limit lower than the provider's is kept: it is the operator's share of a quota used by others too.
    """

    def __init__(
        self,
        *,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        now = clock()
        self._configured: dict[Dimension, int | None] = {
            "requests": requests_per_minute,
            "tokens": tokens_per_minute,
        }
        self._buckets: dict[Dimension, TokenBucket] = {
            dimension: TokenBucket(limit, now) for dimension, limit in self._configured.items() if limit is not None
        }
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._paused_until = 0.0

    def bucket(self, dimension: Dimension) -> TokenBucket | None:
        return self._buckets.get(dimension)

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def _wait_s(self, tokens: int, now: float) -> float:
        wait = self._paused_until - now
        if (requests := self._buckets.get("requests")) is not None:
            wait = max(wait, requests.wait_s(1, now))
        if (token_bucket := self._buckets.get("tokens")) is not None:
            wait = max(wait, token_bucket.wait_s(tokens, now))
        return wait

    async def acquire(self, tokens: int) -> Permit:
        """Wait until one request and ``tokens`` tokens are available, then take them.

        Waiters queue on a FIFO lock, so only the head of the queue sleeps and a large request is not
        starved by a stream of small ones.
        """
        if self._buckets or self._paused_until > 0:
            async with self._lock:
                while (wait := self._wait_s(tokens, self._clock())) > 0:
                    # A floor, so a rounding-error shortfall (1e-14 s) is not slept on forever.
                    await self._sleep(max(wait, MIN_WAIT_S))
        now = self._clock()
        requests = self._buckets.get("requests")
        if requests is not None:
            requests.take(1, now)
        token_bucket = self._buckets.get("tokens")
        if token_bucket is not None:
            token_bucket.take(tokens, now)
        return Permit(tokens, took_request=requests is not None, took_tokens=token_bucket is not None)

    def on_response(self, headers: Mapping[str, str]) -> None:
        """Pull each bucket down to what the provider reports remaining.

        The headers are read as the provider's state when it answered, which already counts the calls it
        admitted meanwhile (ours included, which our bucket has charged too). So the sync only ever lowers
        the bucket: it catches what our books miss (other clients on the same key, a token count that differs
        from our estimate), while our own refill raises it. A stale answer can therefore not undo a newer one.
        """
        now = self._clock()
        for dimension in DIMENSIONS:
            reported = read_rate_limit_headers(headers, dimension)
            if reported is None:
                continue
            bucket = self._bucket_for(dimension, reported, now)
            if bucket is not None:
                bucket.lower_to(reported.remaining, now)

    def _bucket_for(self, dimension: Dimension, reported: RateLimitHeaders, now: float) -> TokenBucket | None:
        """The bucket to sync; created or resized when the provider states a limit (a configured one caps it)."""
        bucket = self._buckets.get(dimension)
        if reported.limit is None:
            return bucket
        configured = self._configured[dimension]
        capacity = reported.limit if configured is None else min(configured, reported.limit)
        if bucket is None:
            bucket = TokenBucket(capacity, now, level=reported.remaining)
            self._buckets[dimension] = bucket
        elif bucket.capacity != capacity:
            bucket.resize(capacity, now)
        return bucket

    def on_charged(self, permit: Permit, tokens: int) -> None:
        """The call really cost ``tokens`` (from ``usage``): settle the difference with what it took.

        A call sent before the limit was known took nothing; the provider's ``remaining`` that taught us the
        limit already counted it, so there is nothing to settle.
        """
        bucket = self._buckets.get("tokens")
        if bucket is None or not permit.took_tokens:
            return
        now = self._clock()
        difference = permit.tokens - tokens
        if difference >= 0:
            bucket.give_back(difference, now)
        else:
            bucket.take(-difference, now)

    def on_rate_limited(self, permit: Permit, headers: Mapping[str, str], retry_after_s: float | None) -> None:
        """A 429 for a rate (not a quota). The refused call was not charged, so its share comes back; then
        the buckets are synced (or emptied, when the provider sent no ``x-ratelimit-*``), and every caller
        pauses for the ``retry-after`` the provider asked for."""
        now = self._clock()
        if (requests := self._buckets.get("requests")) is not None and permit.took_request:
            requests.give_back(1, now)
        self.on_charged(permit, 0)
        if any(read_rate_limit_headers(headers, dimension) is not None for dimension in DIMENSIONS):
            self.on_response(headers)
        else:
            for bucket in self._buckets.values():
                bucket.lower_to(0.0, now)
        if retry_after_s is not None:
            self._paused_until = max(self._paused_until, now + retry_after_s)


# --------------------------------------------------------------------------------------------------
# Adaptive concurrency (AIMD)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AimdParams:
    max_limit: int
    min_limit: int = 1
    #: Cut on an overload signal (429, 503, 504, timeout).
    overload_backoff: float = 0.7
    #: Gentler cut when latency grows past ``latency_tolerance`` times its long-run average.
    latency_backoff: float = 0.9
    latency_tolerance: float = 2.0
    #: Growth per "window" of ``limit`` successful responses, as a share of ``max_limit`` (at least 1).
    increase_share: float = 0.05

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.max_limit:
            raise ValueError("AIMD limits must satisfy 1 <= min_limit <= max_limit")


Signal = Literal["success", "overload", "neutral"]


@dataclass(frozen=True, slots=True)
class Slot:
    """A held concurrency slot; ``generation`` tells whether it was sent before the latest cut."""

    generation: int


class AdaptiveConcurrency:
    """An async concurrency limit that follows AIMD.

    A cut happens at most once per generation: the calls sent before a cut saw the old limit, so their
    overload signals must not cut again. Latency is compared as a short-run EWMA (~10 responses) against
    a long-run one (~200 responses): a sudden rise cuts the limit, a lasting shift (longer prompts, a slower
    model) becomes the new normal within a few hundred responses.
    """

    def __init__(self, params: AimdParams) -> None:
        self.params = params
        self._limit = float(params.max_limit)
        self._in_flight = 0
        self._generation = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._short_latency: float | None = None
        self._long_latency: float | None = None

    @property
    def limit(self) -> int:
        return max(self.params.min_limit, int(self._limit))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self) -> Slot:
        if self._in_flight >= self.limit or self._waiters:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # we were handed a slot we will not use
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
        self._in_flight += 1
        return Slot(self._generation)

    def _wake(self) -> None:
        free = self.limit - self._in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def release(self, slot: Slot, signal: Signal, latency_s: float | None = None) -> None:
        # Only a limit that is actually used can be blamed for latency, or earn a raise.
        in_use = self._in_flight >= self._limit / 2
        self._in_flight -= 1
        if signal == "overload":
            self._cut(slot, self.params.overload_backoff)
        elif signal == "success":
            latency_grew = latency_s is not None and self._latency_grew(latency_s)
            if latency_grew and in_use:
                self._cut(slot, self.params.latency_backoff)
            elif in_use and not latency_grew:
                step = max(1.0, self.params.increase_share * self.params.max_limit)
                self._limit = min(float(self.params.max_limit), self._limit + step / self._limit)
        self._wake()

    def _cut(self, slot: Slot, factor: float) -> None:
        if slot.generation < self._generation:
            return
        self._generation += 1
        self._limit = max(float(self.params.min_limit), self._limit * factor)

    def _latency_grew(self, latency_s: float) -> bool:
        if self._short_latency is None or self._long_latency is None:
            self._short_latency = self._long_latency = latency_s
            return False
        self._short_latency += 0.1 * (latency_s - self._short_latency)
        self._long_latency += 0.005 * (latency_s - self._long_latency)
        return self._short_latency > self.params.latency_tolerance * self._long_latency
