"""The one backoff policy every retry loop uses: the provider calls, delivery to Kafka, the fetch loop.

A :class:`Backoff` is a value (base, cap, jitter); the loop keeps its own count of retries and asks
:meth:`Backoff.delay_s` how long to wait before the next one. Steps double from ``base_s`` up to ``cap_s``;
``jitter`` is the share of each step that is randomised, so a burst of failures (hundreds of calls hit by
one outage) does not come back in the same millisecond, while a floor of ``1 - jitter`` of the step keeps
a retry from firing straight after the failure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

#: Doubling stops here: 2**60 times any base is already beyond every cap.
_MAX_DOUBLINGS: Final = 60
_shared_rng: Final = random.Random()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: retry ``n`` (from 0) waits ``min(base_s * 2**n, cap_s)``, of which a
    random share up to ``jitter`` is taken off ("equal jitter" at 0.5; none at 0)."""

    base_s: float
    cap_s: float
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.base_s <= self.cap_s:
            raise ValueError("backoff bounds must satisfy 0 <= base_s <= cap_s")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a share of the step, between 0 and 1")

    def step_s(self, retries_so_far: int) -> float:
        """The un-jittered wait before retry number ``retries_so_far`` (0 for the first retry)."""
        return min(self.base_s * 2.0 ** min(max(retries_so_far, 0), _MAX_DOUBLINGS), self.cap_s)

    def delay_s(self, retries_so_far: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retries_so_far``: within ``[(1 - jitter) * step, step]``."""
        step = self.step_s(retries_so_far)
        if not self.jitter:
            return step
        return step * (1 - self.jitter + self.jitter * (rng or _shared_rng).random())
