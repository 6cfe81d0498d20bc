"""Whether a failed attempt is worth another and how long to wait first, and the one loop that retries.

:func:`next_delay` decides from the :class:`~pipeline.client.failures.AttemptFailure` (is it retriable, what
wait did the server name) and the :class:`RetryPolicy`:

- the wait is the server's ``retry-after-ms`` / ``retry-after`` when given, else the policy's
  :class:`~pipeline.backoff.Backoff`, but on a 429 never longer than the ``x-ratelimit-reset-*`` of the
  exhausted limit (the time until it is full again: waiting longer cannot help);
- a server-requested wait longer than the cap (or than what is left of the job's deadline) ends the
  retries at once instead of sleeping on it; a server-requested wait gets up to +10% jitter (never less
  than asked) so the hundreds of calls a 429 burst hits do not come back in the same millisecond.

:class:`RetryRunner` is the loop: it runs an attempt (a chat completion or a ``/moderations`` call, anything
that ends in a value or an ``AttemptFailure``) until it succeeds or :func:`next_delay` gives up, keeping a
:class:`Tally` of what it did so a deadline that cuts it short can still say how far it got.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from pipeline.backoff import Backoff
from pipeline.client.failures import AttemptFailure
from pipeline.client.timing import Clock, Sleep

log = logging.getLogger("pipeline.client")
T = TypeVar("T")

#: Steps of 0.5 s doubling up to 8 s, each spread over its upper half.
DEFAULT_BACKOFF: Final = Backoff(0.5, 8.0, jitter=0.5)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds on retrying one call. ``max_attempts`` counts the first attempt too.

    The backoff spreads each wait over the upper half of its step ("equal jitter"): the SDK takes off at
    most 25% of the step; spreading over half of it decorrelates a burst of failures better while keeping a
    floor, so a retry never fires immediately after a failure.
    """

    max_attempts: int = 5
    backoff: Backoff = DEFAULT_BACKOFF
    #: A server asking for a longer wait than this is given up on.
    retry_after_cap_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.retry_after_cap_s < 0:
            raise ValueError("retry_after_cap_s must not be negative")


@dataclass(frozen=True, slots=True)
class RetryAfter:
    delay_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    why: str


RetryDecision = RetryAfter | GiveUp


def next_delay(
    failure: AttemptFailure,
    *,
    attempts_made: int,
    policy: RetryPolicy,
    remaining_s: float,
    rng: random.Random,
) -> RetryDecision:
    """Retry after how long, or give up, after ``attempts_made`` attempts ended in ``failure``."""
    if not failure.retriable:
        return GiveUp("not retriable")
    if attempts_made >= policy.max_attempts:
        return GiveUp(f"{attempts_made} attempts made")
    if failure.retry_after_s is not None:
        if failure.retry_after_s > policy.retry_after_cap_s:
            return GiveUp(f"server asked to wait {failure.retry_after_s:g}s, over the cap")
        delay = failure.retry_after_s * (1 + 0.1 * rng.random())
    else:
        delay = policy.backoff.delay_s(attempts_made - 1, rng)
        if failure.refill_s is not None:
            delay = min(delay, failure.refill_s)
    if delay >= remaining_s:
        return GiveUp(f"a {delay:.3g}s wait would pass the job's deadline")
    return RetryAfter(delay)


# --------------------------------------------------------------------------------------------------
# The retry loop
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """Attempts started so far and how the latest one failed; kept current while the runner runs."""

    attempts: int = 0
    last_failure: AttemptFailure | None = None
    #: Seconds the call was held by the provider breaker: they do not count against its deadline.
    held_s: float = 0.0


class RetryObserver(Protocol):
    def on_retry(self, reason: str) -> None:
        """An attempt is retried; ``reason`` is e.g. ``http_429``, ``http_503``, ``timeout``, ``stream``."""


class RetryRunner:
    """Runs attempts under one :class:`RetryPolicy`; shared by every call of a client."""

    def __init__(
        self, policy: RetryPolicy, *, observer: RetryObserver, clock: Clock, sleep: Sleep, rng: random.Random
    ) -> None:
        self._policy = policy
        self._observer = observer
        self._clock = clock
        self._sleep = sleep
        self._rng = rng

    async def run(
        self,
        attempt: Callable[[], Awaitable[T | AttemptFailure]],
        *,
        job_id: str,
        deadline: float,
        tally: Tally | None = None,
    ) -> T | AttemptFailure:
        """Run ``attempt`` until it succeeds or :func:`next_delay` gives up (``deadline`` is on the clock).

        ``tally``, when given, is updated as the attempts go (a fresh one per call).
        """
        tally = Tally() if tally is None else tally
        while True:
            tally.attempts += 1
            result = await attempt()
            if not isinstance(result, AttemptFailure):
                return result
            tally.last_failure = result
            decision = next_delay(
                result,
                attempts_made=tally.attempts,
                policy=self._policy,
                remaining_s=deadline + tally.held_s - self._clock(),
                rng=self._rng,
            )
            if isinstance(decision, GiveUp):
                log.debug(
                    "provider call failed",
                    extra={
                        "job_id": job_id,
                        "attempts": tally.attempts,
                        "reason": result.reason,
                        "detail": decision.why,
                    },
                )
                return result
            self._observer.on_retry(result.reason)
            log.debug(
                "provider call retried", extra={"job_id": job_id, "attempts": tally.attempts, "reason": result.reason}
            )
            await self._sleep(decision.delay_s)
