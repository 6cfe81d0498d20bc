"""Requests-per-minute and tokens-per-minute buckets, reported with the API's ``x-ratelimit-*`` headers.

A per-minute limit ``L`` is enforced over a window of ``window_s`` seconds (60 by default): a bucket that
holds one window's allowance, ``L * window_s / 60`` units (at least one), and refills continuously at
``L / 60`` per second. With the default window that is the whole minute; with ``window_s=1`` a limit of
3,000 requests/min admits 50 at once and then 50 a second, as OpenAI documents a per-minute limit "may be
enforced over shorter periods" ("60,000 requests/minute may be enforced as 1,000 requests/second"). A
continuously refilled bucket rather than a fixed window counter is what OpenAI's own headers show: the
reset of a bucket one request short of full is the time one request takes to refill (``12ms`` at 5,000/min).

A request costs one request and its estimated tokens (prompt estimate plus ``max_completion_tokens``, or the
generated length when that is unset, like the API's estimate). It is admitted only when *both* buckets hold
enough, and then both are charged; a refused request charges nothing. A request larger than a window's
allowance (but within the minute's) waits for a full bucket and leaves it in debt, as a long context may be
refused under a short window even below the per-minute rate; one larger than the minute's is "too large".

Headers, on every response once a limit is configured (what the enforcement really allows, so a client can
tell the window: ``remaining + reset x limit / 60`` is the bucket's capacity):

- ``x-ratelimit-limit-*``: the per-minute limit, as OpenAI states it whatever the window;
- ``x-ratelimit-remaining-*``: whole units the window's bucket holds now (at most its allowance);
- ``x-ratelimit-reset-*``: time until that bucket is full again (so at most the window), as a Go duration
  such as ``1s``, ``6m0s`` or ``12ms``.

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
#: Rounding slack: a refill that is short by floating-point noise (1e-14) still admits.
EPSILON: Final = 1e-9


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
    """One window's allowance of a per-minute ``limit``, refilled continuously at ``limit`` per minute."""

    def __init__(self, limit: int, clock: Clock, window_s: float = SECONDS_PER_MINUTE) -> None:
        if limit < 1:
            raise ValueError("a rate limit must be at least 1 per minute")
        if not 0 < window_s <= SECONDS_PER_MINUTE:
            raise ValueError("the window must be longer than 0 and at most 60 seconds")
        self.limit = limit
        self.capacity = max(1.0, limit * window_s / SECONDS_PER_MINUTE)
        self._rate = limit / SECONDS_PER_MINUTE
        self._clock = clock
        self._level = self.capacity
        self._at = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._at) * self._rate)
        self._at = now
        return self._level

    def available(self) -> float:
        return self._refill()

    def admits(self, units: float) -> bool:
        """Whether ``units`` may be taken now: all of them, or a full bucket for a take larger than it."""
        return min(units, self.capacity) <= self._refill() + EPSILON

    def take(self, units: float) -> None:
        self._level -= units

    def wait_for(self, units: float) -> float:
        """Seconds until ``units`` are admitted (0 if they are now; beyond the capacity, until full)."""
        return max(0.0, (min(units, self.capacity) - self._level) / self._rate)

    def reset_after(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self._level) / self._rate

    def remaining(self) -> int:
        return max(0, math.floor(self._level))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which limit refused the request, and when it may be retried."""

    kind: LimitKind
    #: The per-minute limit; ``used`` is what the window's bucket has given out.
    limit: int
    used: int
    requested: int
    retry_after_s: float


class RateLimiter:
    def __init__(
        self, rpm: int | None, tpm: int | None, clock: Clock = time.monotonic, window_s: float = SECONDS_PER_MINUTE
    ) -> None:
        self.requests = None if rpm is None else TokenBucket(rpm, clock, window_s)
        self.tokens = None if tpm is None else TokenBucket(tpm, clock, window_s)

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
        if bucket is None or (units <= bucket.limit and bucket.admits(units)):
            return None
        used = math.ceil(bucket.capacity) - math.floor(bucket.available())
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
