"""Requests-per-minute and tokens-per-minute buckets, reported with the API's ``x-ratelimit-*`` headers.

Each limit is a bucket of ``limit`` units that refills continuously at ``limit`` per minute. A request costs
one request and its estimated tokens (prompt estimate plus ``max_completion_tokens``, or the generated
length when that is unset, like the API's estimate). It is admitted only when *both* buckets hold enough,
and then both are charged; a refused request charges nothing.

Headers, on every response once a limit is configured: ``x-ratelimit-limit-requests`` (the limit),
``x-ratelimit-remaining-requests`` (whole units left), ``x-ratelimit-reset-requests`` (time until the bucket
is full again, as a Go duration such as ``1s``, ``6m0s`` or ``12ms``), and the same three for ``-tokens``.
The clock is injectable so tests can move time instead of sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

Clock = Callable[[], float]
LimitKind = Literal["requests", "tokens"]
SECONDS_PER_MINUTE: Final = 60.0


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String`` at millisecond precision: ``0s``, ``12ms``, ``1.5s``, ``6m0s``."""
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


class TokenBucket:
    """``limit`` units, refilled continuously at ``limit`` per minute."""

    def __init__(self, limit: int, clock: Clock) -> None:
        if limit < 1:
            raise ValueError("a rate limit must be at least 1 per minute")
        self.limit = limit
        self._rate = limit / SECONDS_PER_MINUTE
        self._clock = clock
        self._level = float(limit)
        self._at = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._level = min(self.limit, self._level + (now - self._at) * self._rate)
        self._at = now
        return self._level

    def available(self) -> float:
        return self._refill()

    def take(self, units: float) -> None:
        self._level -= units

    def wait_for(self, units: float) -> float:
        """Seconds until ``units`` are available (0 if they are now; when over the limit, until full)."""
        return max(0.0, (min(units, self.limit) - self._level) / self._rate)

    def reset_after(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.limit - self._level) / self._rate

    def remaining(self) -> int:
        return max(0, math.floor(self._level))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which limit refused the request, and when it may be retried."""

    kind: LimitKind
    limit: int
    used: int
    requested: int
    retry_after_s: float


class RateLimiter:
    def __init__(self, rpm: int | None, tpm: int | None, clock: Clock = time.monotonic) -> None:
        self.requests = None if rpm is None else TokenBucket(rpm, clock)
        self.tokens = None if tpm is None else TokenBucket(tpm, clock)

    @property
    def enabled(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def admit(self, tokens: int) -> Refusal | None:
        """Charge one request of ``tokens`` tokens, or say which bucket refuses it (charging nothing)."""
        refusal = self._refusal(self.requests, "requests", 1) or self._refusal(self.tokens, "tokens", tokens)
        if refusal is None:
            if self.requests is not None:
                self.requests.take(1)
            if self.tokens is not None:
                self.tokens.take(tokens)
        return refusal

    @staticmethod
    def _refusal(bucket: TokenBucket | None, kind: LimitKind, units: int) -> Refusal | None:
        if bucket is None:
            return None
        available = bucket.available()
        if units <= available:
            return None
        used = bucket.limit - math.floor(available)
        return Refusal(kind, bucket.limit, used, units, bucket.wait_for(units))

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers for the buckets as they are now (empty when no limit is set)."""
        headers: dict[str, str] = {}
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                bucket.available()
                headers[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining())
                headers[f"x-ratelimit-reset-{kind}"] = go_duration(bucket.reset_after())
        return headers
