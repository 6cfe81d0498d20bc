"""Worker-wide rate buckets: a requests/min and a tokens/min :class:`TokenBucket` behind one :class:`RateLimiter`.

A call takes one request and its *estimated* tokens (:func:`pipeline.client.tokens.estimate_tokens`) before
it is sent; once ``usage`` is known the estimate is settled to what the provider charged
(:meth:`RateLimiter.on_charged`). Every response's ``x-ratelimit-remaining-*`` pulls the buckets down to what
the provider reports (see :meth:`RateLimiter.on_response`), a limit the operator did not configure is learnt
from ``x-ratelimit-limit-*``, and a 429 pauses every caller for the server's ``retry-after``.

Time comes from an injected clock and sleeps from an injected ``sleep``, so tests are deterministic.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from pipeline.client.timing import Clock, Sleep

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
    :func:`pipeline.client.failures.rate_limit_reset_s`.)
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
