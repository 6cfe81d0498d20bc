"""An adaptive limit on the calls a worker has in flight: AIMD, as TCP paces a connection.

Overload signals (429, 503, 504, timeouts) and latency growth cut the limit multiplicatively, at most once
per "generation" of requests; successes raise it additively while the limit is actually in use.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Literal


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
