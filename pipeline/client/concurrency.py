"""An adaptive limit on the calls a worker has in flight: a gentle start, then AIMD, as TCP paces a connection.

- **Start.** With ``initial_limit`` below ``max_limit`` the limit holds there until :meth:`open` (the pacer
  opens it at the first answer: then the provider has stated its limits, and the rate lanes pace the calls,
  or it states none and there is nothing more to learn by going slowly) or until an overload signal cuts it.
  A fresh worker so never sends its full concurrency to a provider whose limits it does not know yet.
- **Steady state.** Overload signals (429, 503, 504; a timeout while latency is growing) and latency growth
  cut the limit multiplicatively, at most once per "generation" of requests; successes raise it additively
  while the limit is actually in use.
- **Admission.** A slot is taken at hand-off: a release wakes at most ``limit - in_flight`` waiters and
  counts them in flight at once, so several releases in one event-loop turn never admit more calls than
  the limit (a woken waiter only resumes later, and counting it then let every release wake more).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class AimdParams:
    max_limit: int
    min_limit: int = 1
    #: Where the limit starts; below ``max_limit`` it holds there until :meth:`open` (or a cut).
    initial_limit: int | None = None
    #: Cut on an overload signal (429, 503, 504, a timeout while latency grows).
    overload_backoff: float = 0.7
    #: Gentler cut when latency grows past ``latency_tolerance`` times its long-run average.
    latency_backoff: float = 0.9
    latency_tolerance: float = 2.0
    #: Growth per "window" of ``limit`` successful responses, as a share of ``max_limit`` (at least 1).
    increase_share: float = 0.05

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.max_limit:
            raise ValueError("AIMD limits must satisfy 1 <= min_limit <= max_limit")
        if self.initial_limit is not None and not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("AIMD initial_limit must lie between min_limit and max_limit")


#: What an answer tells the limit. A ``timeout`` is overload only while latency is growing: a call that
#: simply runs long (a reasoning model at high effort) says nothing about the provider's load.
Signal = Literal["success", "overload", "timeout", "neutral"]


@dataclass(frozen=True, slots=True)
class Slot:
    """A held concurrency slot; ``generation`` tells whether it was sent before the latest cut."""

    generation: int


class AdaptiveConcurrency:
    """An async concurrency limit that starts gently and then follows AIMD; see the module docstring.

    A cut happens at most once per generation: the calls sent before a cut saw the old limit, so their
    overload signals must not cut again. Latency is compared as a short-run EWMA (~10 responses) against
    a long-run one (~200 responses): a sudden rise cuts the limit, a lasting shift (longer prompts, a slower
    model) becomes the new normal within a few hundred responses. ``on_limit`` hears every change of
    :attr:`limit`, in order.
    """

    def __init__(self, params: AimdParams, on_limit: Callable[[int], None] | None = None) -> None:
        self.params = params
        initial = params.max_limit if params.initial_limit is None else params.initial_limit
        self._limit = float(initial)
        self._starting = initial < params.max_limit
        self._on_limit = on_limit
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

    @property
    def starting(self) -> bool:
        """Still at the initial limit: neither opened nor cut yet."""
        return self._starting

    async def acquire(self) -> Slot:
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1
            return Slot(self._generation)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._in_flight -= 1  # we were handed a slot we will not use
                self._wake()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        return Slot(self._generation)

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._in_flight += 1

    def open(self) -> None:
        """End the start: the limit goes to its maximum, and follows AIMD from there."""
        if self._starting:
            before = self.limit
            self._starting = False
            self._limit = float(self.params.max_limit)
            self._changed(before)

    def release(self, slot: Slot, signal: Signal, latency_s: float | None = None) -> None:
        before = self.limit
        # Only a limit that is actually used (half of it, or callers waiting) can be blamed for latency, or
        # earn a raise.
        in_use = self._in_flight >= self._limit / 2 or bool(self._waiters)
        self._in_flight -= 1
        if signal == "overload" or (signal == "timeout" and self._latency_is_growing()):
            self._cut(slot, self.params.overload_backoff)
        elif signal == "success":
            latency_grew = latency_s is not None and self._latency_grew(latency_s)
            if latency_grew and in_use:
                self._cut(slot, self.params.latency_backoff)
            elif in_use and not latency_grew and not self._starting:
                step = max(1.0, self.params.increase_share * self.params.max_limit)
                self._limit = min(float(self.params.max_limit), self._limit + step / self._limit)
        self._changed(before)

    def _changed(self, before: int) -> None:
        self._wake()
        if self._on_limit is not None and self.limit != before:
            self._on_limit(self.limit)

    def _cut(self, slot: Slot, factor: float) -> None:
        self._starting = False
        if slot.generation < self._generation:
            return
        self._generation += 1
        self._limit = max(float(self.params.min_limit), self._limit * factor)

    def _latency_is_growing(self) -> bool:
        if self._short_latency is None or self._long_latency is None:
            return False
        return self._short_latency > self.params.latency_tolerance * self._long_latency

    def _latency_grew(self, latency_s: float) -> bool:
        if self._short_latency is None or self._long_latency is None:
            self._short_latency = self._long_latency = latency_s
            return False
        self._short_latency += 0.1 * (latency_s - self._short_latency)
        self._long_latency += 0.005 * (latency_s - self._long_latency)
        return self._latency_is_growing()
