"""Pacing shared by every call a worker has in flight: what an attempt takes before it is sent, and the books
kept after its answer.

A :class:`Pacer` owns the two worker-wide mechanisms and the token estimates:

- :class:`~pipeline.client.concurrency.AdaptiveConcurrency` (a gentle start, then AIMD on the calls in flight):
  an attempt holds a slot from before its permit until its answer is in, and gives it back with a signal
  (success, overload, timeout, neutral) and its latency. With no rate limit configured the limit starts
  small until the first answer: then the provider has stated its limits (and the lanes pace the calls), or
  it states none and there is nothing more to learn by going slowly;
- :class:`~pipeline.client.ratelimit.RateLimiter` (a requests lane and a tokens lane per model): an attempt
  takes a permit for one request and its estimated tokens (:func:`~pipeline.client.tokens.estimate_tokens`)
  from its model's lanes; after the answer the lanes follow what the provider said (``x-ratelimit-*``, a
  429's ``retry-after``) and charged (``usage``), and :class:`~pipeline.client.tokens.CompletionLengths`
  learns from ``usage``.

A tenant capped at a share of the limits (:mod:`~pipeline.client.tenant_shares`) waits for its share before
its turn takes a slot, and its share is settled with the lanes'.

The contract is one :meth:`Pacer.turn` per attempt, and :meth:`Pacer.settle` once its answer is in::

    async with pacer.turn(request) as turn:
        ...send, time it...
        pacer.settle(turn, status, headers, result, latency_s)

A turn left without :meth:`~Pacer.settle` (cancelled by the job's deadline, say) gives its slot back as
neutral: no signal either way.

Latency is timed from after the permit: calls in flight never outnumber the concurrency limit, which never
exceeds the connection pool (sized to the concurrency), so no pool wait is counted as provider latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, Protocol

from pipeline.client.concurrency import AdaptiveConcurrency, AimdParams, Signal, Slot
from pipeline.client.failures import AttemptFailure
from pipeline.client.ratelimit import DIMENSIONS, Dimension, Permit, RateLimiter
from pipeline.client.tenant_shares import TenantPermit, TenantShares
from pipeline.client.timing import Clock, Sleep
from pipeline.client.tokens import CompletionLengths, TokenEstimate, estimate_tokens
from schemas.chat import ChatCompletion, ChatCompletionRequest, Usage

#: Statuses that say "the provider is overloaded": they cut the adaptive concurrency limit.
OVERLOAD_STATUSES: Final = frozenset({429, 503, 504})
#: Calls in flight at first contact when no rate limit is configured, until the first answer.
INITIAL_CONCURRENCY: Final = 2


class PacingObserver(Protocol):
    def on_rate_limited(self) -> None:
        """The provider answered 429."""

    def on_usage(self, model: str, usage: Usage) -> None:
        """A completion arrived with token usage."""

    def on_concurrency_limit(self, limit: int) -> None:
        """The adaptive concurrency limit changed."""


def signal_for(result: ChatCompletion | AttemptFailure) -> Signal:
    """What an answer tells the concurrency limit: an overload status (not a quota) cuts it; a timeout cuts
    it only while latency is growing (see :class:`~pipeline.client.concurrency.AdaptiveConcurrency`)."""
    if not isinstance(result, AttemptFailure):
        return "success"
    if result.failure == "timeout":
        return "timeout"
    return "overload" if result.status in OVERLOAD_STATUSES and not result.is_quota else "neutral"


def refused_dimension(failure: AttemptFailure) -> Dimension | None:
    """Which limit a 429 names (OpenAI's error ``type`` is ``requests`` or ``tokens``); ``None``: both."""
    for dimension in DIMENSIONS:
        if failure.error_type == dimension:
            return dimension
    return None


@dataclass(slots=True)
class Turn:
    """One attempt's share of the limits: what it took, and (once settled) how it went."""

    slot: Slot
    permit: Permit
    estimate: TokenEstimate
    model: str
    choices: int
    signal: Signal = "neutral"
    latency_s: float | None = None
    #: What a capped tenant took from its share (``None``: not capped).
    tenant_permit: TenantPermit | None = None


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
        tenant_shares: Mapping[str, float] | None = None,
    ) -> None:
        self.tenant_shares = TenantShares(tenant_shares or {}, clock=clock, sleep=sleep)
        self.rate_limiter = RateLimiter(
            requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute, clock=clock, sleep=sleep
        )
        configured = requests_per_minute is not None or tokens_per_minute is not None
        initial = None if configured else min(INITIAL_CONCURRENCY, max_concurrency)
        self.concurrency = AdaptiveConcurrency(
            AimdParams(max_limit=max_concurrency, initial_limit=initial), on_limit=observer.on_concurrency_limit
        )
        self.completion_lengths = CompletionLengths()
        self._observer = observer

    @asynccontextmanager
    async def turn(self, request: ChatCompletionRequest, tenant: str = "") -> AsyncIterator[Turn]:
        """Take the tenant's share (when capped), hold a concurrency slot, then a rate-limit permit of
        ``request``'s model, for one attempt."""
        shared: TenantPermit | None = None
        if self.tenant_shares.capped(tenant):
            limits = self.rate_limiter.limits(request.model)
            expected = estimate_tokens(request, self.completion_lengths.expected(request.model))
            shared = await self.tenant_shares.acquire(tenant, request.model, limits, expected.total)
        slot = await self.concurrency.acquire()
        turn: Turn | None = None
        try:
            # Estimated once a slot is ours, so the expected completion length is the latest learnt.
            estimate = estimate_tokens(request, self.completion_lengths.expected(request.model))
            permit = await self.rate_limiter.acquire(request.model, estimate.total)
            turn = Turn(slot, permit, estimate, model=request.model, choices=request.n or 1, tenant_permit=shared)
            yield turn
        finally:
            if turn is None:
                self.concurrency.release(slot, "neutral", None)
            else:
                self.concurrency.release(slot, turn.signal, turn.latency_s)

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
                limit = refused_dimension(result)
                self.rate_limiter.on_rate_limited(turn.permit, headers, result.retry_after_s, limit)
                self.tenant_shares.on_refused(turn.tenant_permit)
            elif status is not None:
                self.rate_limiter.on_response(turn.permit, headers)
        else:
            self.rate_limiter.on_response(turn.permit, headers)
            if result.usage is not None:
                self.rate_limiter.on_charged(turn.permit, turn.estimate.charged(result.usage))
                self.tenant_shares.on_charged(turn.tenant_permit, turn.estimate.charged(result.usage))
                if not turn.estimate.completion_is_budget:
                    # Learnt under the name asked for: an answer may name a dated snapshot of it.
                    self.completion_lengths.observe(turn.model, result.usage.completion_tokens, turn.choices)
                self._observer.on_usage(result.model, result.usage)
        turn.signal = signal_for(result)
        if self.concurrency.starting and (self.rate_limiter.learnt or turn.signal == "success"):
            # The limits are known, or an answer came without any: nothing more to learn by going slowly.
            self.concurrency.open()
