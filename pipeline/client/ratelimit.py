"""Worker-wide rate pacing: a requests :class:`~pipeline.client.lanes.Lane` and a tokens lane per model
(OpenAI's limits are per model: one model's answers never resize another's lanes), behind one
:class:`RateLimiter`. How a lane paces under a limit enforced over any window is in
:mod:`~pipeline.client.lanes`.

A call takes one request and its *estimated* tokens (:func:`pipeline.client.tokens.estimate_tokens`) from
its model's lanes before it is sent; once ``usage`` is known the estimate is settled to what the provider
charged (:meth:`RateLimiter.on_charged`). Every answer's ``x-ratelimit-{limit,remaining,reset}-*`` goes to
the lanes (:meth:`RateLimiter.on_response`); a limit the operator did not configure is learnt from them (a
configured one lower than the provider's is kept: it is the operator's share of a quota used by others too,
and it applies to each model). A 429 pauses every call to that model for the server's ``retry-after``.

Time comes from an injected clock and sleeps from an injected ``sleep``, so tests are deterministic.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from pipeline.client.failures import parse_go_duration
from pipeline.client.lanes import Lane, RateLimitHeaders, Ticket
from pipeline.client.timing import Clock, Sleep

Dimension = Literal["requests", "tokens"]
DIMENSIONS: Final[tuple[Dimension, ...]] = ("requests", "tokens")
MIN_WAIT_S: Final = 0.001
MAX_WAIT_S: Final = 0.05


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_rate_limit_headers(headers: Mapping[str, str], dimension: Dimension) -> RateLimitHeaders | None:
    """The provider's ``x-ratelimit-{limit,remaining,reset}-{dimension}``, when a usable remaining is given."""
    remaining = _number(headers.get(f"x-ratelimit-remaining-{dimension}"))
    if remaining is None:
        return None
    limit_text = headers.get(f"x-ratelimit-limit-{dimension}")
    limit = _number(limit_text)
    if limit_text is not None and (limit is None or limit <= 0):
        return None
    reset_text = headers.get(f"x-ratelimit-reset-{dimension}")
    reset_s = None if reset_text is None else parse_go_duration(reset_text)
    return RateLimitHeaders(limit, max(0.0, remaining), reset_s)


# --------------------------------------------------------------------------------------------------
# The worker-wide rate limiter
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Permit:
    """What one call took: the model's lanes it took from, with their :class:`~pipeline.client.lanes.Ticket`
    (``None``: that lane did not exist yet, nothing was taken)."""

    model: str
    tokens: int
    request_ticket: Ticket | None
    token_ticket: Ticket | None

    def ticket(self, dimension: Dimension) -> Ticket | None:
        return self.request_ticket if dimension == "requests" else self.token_ticket


@dataclass(slots=True)
class ModelLimits:
    """One model's lanes, its 429 pause, and the FIFO queue its callers wait in."""

    lanes: dict[Dimension, Lane]
    paused_until: float = 0.0
    queue: asyncio.Lock = field(default_factory=asyncio.Lock)

    def wait_s(self, tokens: int, now: float) -> float:
        wait = self.paused_until - now
        if (requests := self.lanes.get("requests")) is not None:
            wait = max(wait, requests.bucket.wait_s(1, now))
        if (token_lane := self.lanes.get("tokens")) is not None:
            wait = max(wait, token_lane.bucket.wait_s(tokens, now))
        return wait


class RateLimiter:
    """Every model's lanes, shared by every call of a worker; see the module docstring.

    A limit left as ``None`` is learnt from the provider's ``x-ratelimit-limit-*`` header; until then that
    dimension is not paced here (the adaptive concurrency limit, which starts small, and the 429 pause
    still apply).
    """

    def __init__(
        self,
        *,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._configured: dict[Dimension, int | None] = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        self._models: dict[str, ModelLimits] = {}
        self._clock = clock
        self._sleep = sleep

    def limits(self, model: str) -> ModelLimits:
        """``model``'s lanes (those of configured limits from its first call; learnt ones as they come)."""
        found = self._models.get(model)
        if found is None:
            now = self._clock()
            lanes = {
                dimension: Lane(now, configured=limit, reported=None)
                for dimension, limit in self._configured.items()
                if limit is not None
            }
            found = self._models[model] = ModelLimits(lanes)
        return found

    @property
    def learnt(self) -> bool:
        """Whether the provider has stated a limit of any model yet."""
        return any(lane.reported is not None for limits in self._models.values() for lane in limits.lanes.values())

    async def acquire(self, model: str, tokens: int) -> Permit:
        """Wait until one request and ``tokens`` tokens of ``model`` are available, then take them.

        Waiters queue on a FIFO lock per model, so only the head of the queue sleeps and a large request is
        not starved by a stream of small ones.
        """
        limits = self.limits(model)
        if limits.lanes or limits.paused_until > 0:
            async with limits.queue:
                while (wait := limits.wait_s(tokens, self._clock())) > 0:
                    # A floor, so a rounding-error shortfall (1e-14 s) is not slept on forever; a ceiling, so
                    # an answer that raises the lane (the provider's bank, a settled estimate) is not slept past.
                    await self._sleep(min(max(wait, MIN_WAIT_S), MAX_WAIT_S))
        now = self._clock()
        tickets: dict[Dimension, Ticket] = {}
        for dimension, lane in limits.lanes.items():
            lane.take(1 if dimension == "requests" else tokens, now)
            tickets[dimension] = lane.ticket()
        return Permit(model, tokens, tickets.get("requests"), tickets.get("tokens"))

    def on_response(self, permit: Permit, headers: Mapping[str, str]) -> None:
        """Follow what the provider reports: limits, windows, the key's total use, the levels."""
        self._read(permit, headers, refused=())

    def _read(self, permit: Permit, headers: Mapping[str, str], refused: tuple[Dimension, ...]) -> bool:
        """Apply an answer's headers to ``permit``'s model; ``True`` if any limit was reported."""
        now = self._clock()
        limits = self.limits(permit.model)
        seen = False
        for dimension in DIMENSIONS:
            reported = read_rate_limit_headers(headers, dimension)
            seen = seen or reported is not None
            lane = limits.lanes.get(dimension)
            if lane is None:
                if reported is not None and reported.limit is not None:
                    limits.lanes[dimension] = Lane(now, configured=self._configured[dimension], reported=reported)
                continue
            ticket = permit.ticket(dimension)
            if ticket is None:  # sent before the lane existed: no fresh evidence, and none of ours unseen
                ticket = replace(lane.ticket(), generation=-1)
            if dimension in refused:
                requested = 1 if dimension == "requests" else permit.tokens
                lane.on_refused(reported, ticket, requested, now)
            elif reported is not None:
                lane.on_reading(reported, ticket, now)
        return seen

    def on_charged(self, permit: Permit, tokens: int) -> None:
        """The call really cost ``tokens`` (from ``usage``): settle the difference with what it took.

        A call sent before the limit was known took nothing; the provider's ``remaining`` that taught us the
        limit already counted it, so there is nothing to settle.
        """
        lane = self.limits(permit.model).lanes.get("tokens")
        if lane is None or permit.token_ticket is None:
            return
        lane.take(tokens - permit.tokens, self._clock())

    def on_rate_limited(
        self,
        permit: Permit,
        headers: Mapping[str, str],
        retry_after_s: float | None,
        dimension: Dimension | None = None,
    ) -> None:
        """A 429 for a rate (not a quota) of ``dimension`` (both when the error does not say). The refused
        call was not charged, so its share comes back; the refused lanes cut their pace (once per round) and
        every lane syncs (or empties, when the provider sent no ``x-ratelimit-*``); every call to the model
        pauses for the ``retry-after`` the provider asked for."""
        now = self._clock()
        limits = self.limits(permit.model)
        if (requests := limits.lanes.get("requests")) is not None and permit.request_ticket is not None:
            requests.take(-1, now)
        self.on_charged(permit, 0)
        refused = DIMENSIONS if dimension is None else (dimension,)
        if not self._read(permit, headers, refused=refused):
            for lane in limits.lanes.values():
                lane.bucket.lower_to(0.0, now)
        if retry_after_s is not None:
            limits.paused_until = max(limits.paused_until, now + retry_after_s)
