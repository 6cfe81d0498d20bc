"""Pacing shared by every call a worker has in flight: what an attempt takes before it is sent, and the books
kept after its answer.

A :class:`Pacer` owns the two worker-wide mechanisms and the token estimates:

- :class:`~pipeline.client.concurrency.AdaptiveConcurrency` (AIMD on the calls in flight): an attempt holds
  a slot from before its permit until its answer is in, and gives it back with a signal (success,
  overload, neutral) and its latency;
- :class:`~pipeline.client.ratelimit.RateLimiter` (requests/min and tokens/min buckets): an attempt takes a
  permit for one request and its estimated tokens (:func:`~pipeline.client.tokens.estimate_tokens`);
  after the answer the buckets follow what the provider said (``x-ratelimit-*``, a 429's ``retry-after``)
  and charged (``usage``), and :class:`~pipeline.client.tokens.CompletionLengths` learns from ``usage``.

The contract is one :meth:`Pacer.turn` per attempt, and :meth:`Pacer.settle` once its answer is in::

    async with pacer.turn(request) as turn:
        ...send, time it...
        pacer.settle(turn, status, headers, result, latency_s)

A turn left without :meth:`~Pacer.settle` (cancelled by the job's deadline, say) gives its slot back as
neutral: no signal either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, Protocol

from pipeline.client.concurrency import AdaptiveConcurrency, AimdParams, Signal, Slot
from pipeline.client.failures import AttemptFailure
from pipeline.client.ratelimit import Permit, RateLimiter
from pipeline.client.timing import Clock, Sleep
from pipeline.client.tokens import CompletionLengths, TokenEstimate, estimate_tokens
from schemas.chat import ChatCompletion, ChatCompletionRequest, Usage

#: Statuses that say "the provider is overloaded": they cut the adaptive concurrency limit.
OVERLOAD_STATUSES: Final = frozenset({429, 503, 504})


class PacingObserver(Protocol):
    def on_rate_limited(self) -> None:
        """The provider answered 429."""

    def on_usage(self, model: str, usage: Usage) -> None:
        """A completion arrived with token usage."""

    def on_concurrency_limit(self, limit: int) -> None:
        """The adaptive concurrency limit changed."""


def signal_for(result: ChatCompletion | AttemptFailure) -> Signal:
    """What an answer tells the concurrency limit: a timeout or an overload status (not a quota) cuts it."""
    if not isinstance(result, AttemptFailure):
        return "success"
    if result.failure == "timeout":
        return "overload"
    return "overload" if result.status in OVERLOAD_STATUSES and not result.is_quota else "neutral"


@dataclass(slots=True)
class Turn:
    """One attempt's share of the limits: what it took, and (once settled) how it went."""

    slot: Slot
    permit: Permit
    estimate: TokenEstimate
    choices: int
    signal: Signal = "neutral"
    latency_s: float | None = None


class Pacer:
    """The worker-wide pacing state; see the module docstring."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        observer: PacingObserver,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rate_limiter = RateLimiter(
            requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute, clock=clock, sleep=sleep
        )
        self.concurrency = AdaptiveConcurrency(AimdParams(max_limit=max_concurrency))
        self.completion_lengths = CompletionLengths()
        self._observer = observer

    @asynccontextmanager
    async def turn(self, request: ChatCompletionRequest) -> AsyncIterator[Turn]:
        """Hold a concurrency slot, then a rate-limit permit for ``request``, for one attempt."""
        slot = await self.concurrency.acquire()
        limit_before = self.concurrency.limit
        turn: Turn | None = None
        try:
            # Estimated once a slot is ours, so the expected completion length is the latest learnt.
            estimate = estimate_tokens(request, self.completion_lengths.expected(request.model))
            permit = await self.rate_limiter.acquire(estimate.total)
            turn = Turn(slot, permit, estimate, choices=request.n or 1)
            yield turn
        finally:
            if turn is None:
                self.concurrency.release(slot, "neutral", None)
            else:
                self.concurrency.release(slot, turn.signal, turn.latency_s)
            if self.concurrency.limit != limit_before:
                self._observer.on_concurrency_limit(self.concurrency.limit)

    def settle(
        self,
        turn: Turn,
        status: int | None,
        headers: Mapping[str, str],
        result: ChatCompletion | AttemptFailure,
        latency_s: float,
    ) -> None:
        """Keep the rate limiter in step with what the provider said and charged, and note how the attempt
        went for the concurrency limit (applied when the turn ends)."""
        turn.latency_s = latency_s
        if status == 429:
            self._observer.on_rate_limited()
        if isinstance(result, AttemptFailure):
            if status == 429 and not result.is_quota:
                self.rate_limiter.on_rate_limited(turn.permit, headers, result.retry_after_s)
            elif status is not None:
                self.rate_limiter.on_response(headers)
        else:
            self.rate_limiter.on_response(headers)
            if result.usage is not None:
                self.rate_limiter.on_charged(turn.permit, turn.estimate.charged(result.usage))
                if not turn.estimate.completion_is_budget:
                    self.completion_lengths.observe(result.model, result.usage.completion_tokens, turn.choices)
                self._observer.on_usage(result.model, result.usage)
        turn.signal = signal_for(result)
