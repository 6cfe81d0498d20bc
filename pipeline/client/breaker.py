"""A circuit breaker for failures that are the provider's (or the account's), not the job's.

A bad key (401), a revoked project or region (403), a default model that does not exist (404
``model_not_found``) or a billing lapse (429 ``insufficient_quota``) fail every job the same way: routing
each of them to review would turn a whole backlog into review records at full concurrency. Instead the first
such answer **opens** the breaker: no call is sent, the calls that were waiting for a slot wait here, the
worker stops fetching and reports itself not ready. After a backoff one waiting call goes through as a
**probe**; if the provider answers it in any other way the breaker **closes** and everyone goes on,
otherwise it stays open with a longer backoff. The jobs are never failed for it: their call just waits, and
the time spent waiting is not counted against their deadline.

Only an answer to a call sent *after* the breaker opened (the probe) closes it: the calls that were already
in flight when the provider started refusing may still come back fine, and they say nothing about now.

A failure of that kind can still be one job's own (a provider that refuses one request with 403, a proxy
that answers 401 to one path). So a call that failed provider-wide, waited, and fails the same way again
*after the breaker has closed* (another call got through since) is the job's own: it goes to review as any
other failure. Calls that already failed once let fresh ones probe first, so one such job does not keep the
probe to itself while the rest wait.

A failure that is the job's own — a 400 for its request, a context too long, a model it named itself that does
not exist — is not a provider-wide failure: it goes to review at once, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, get_args

from pipeline.backoff import Backoff
from pipeline.client.failures import QUOTA_ERROR, AttemptFailure
from pipeline.client.timing import Clock

log = logging.getLogger("pipeline.client")

#: Mirrored by ``pipeline.metrics.PROVIDER_WIDE_CAUSES`` (the metric's label values; a unit test keeps them equal).
Cause = Literal["unauthorized", "forbidden", "model_not_found", "insufficient_quota"]
CAUSES: Final[tuple[Cause, ...]] = get_args(Cause)
State = Literal["closed", "open", "probing"]
PROBE_BACKOFF: Final = Backoff(base_s=1.0, cap_s=60.0, jitter=0.2)


def provider_wide_cause(failure: AttemptFailure, *, model: str, default_model: str) -> Cause | None:
    """The provider-wide cause of a failed attempt, or None when the failure is the job's own (or passes).

    ``model`` is the model the request named: a 404 ``model_not_found`` for a model the job chose itself is
    that job's mistake; for the configured default model it is everyone's."""
    if failure.failure != "http_status":
        return None
    if failure.status == 401:
        return "unauthorized"
    if failure.status == 403:
        return "forbidden"
    if failure.status == 404 and failure.code == "model_not_found" and model == default_model:
        return "model_not_found"
    if failure.status == 429 and QUOTA_ERROR in (failure.code, failure.error_type):
        return "insufficient_quota"
    return None


@dataclass(frozen=True, slots=True)
class Pass:
    """What :meth:`ProviderBreaker.admit` granted: how long the call waited, and whether it is the probe."""

    waited_s: float
    probe: bool
    #: The breaker's opening count when the call was let through: an answer to a call let through before
    #: the latest opening does not close it.
    epoch: int = 0


class ProviderBreaker:
    """The breaker shared by every call of one client; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock,
        backoff: Backoff = PROBE_BACKOFF,
        on_change: Callable[[Cause | None], None] = lambda cause: None,
    ) -> None:
        self._clock = clock
        self._backoff = backoff
        self._on_change = on_change
        self.state: State = "closed"
        self.cause: Cause | None = None
        self._opened = 0  # how many probes failed in a row: the backoff step
        self._probe_at = 0.0
        self._changed = asyncio.Event()
        #: How many times it opened, and closed: a call compares them across its own failures.
        self.epoch = 0
        self.closures = 0
        self._fresh_waiting = 0

    @property
    def available(self) -> bool:
        return self.state == "closed"

    @property
    def wants_fresh_call(self) -> bool:
        """Open, and every call waiting to probe was refused before: a fresh job must come to tell a provider
        still refusing from one job that it refuses (else that job would probe alone for ever)."""
        return self.state == "open" and not self._fresh_waiting

    async def admit(self, *, failed_before: bool = False) -> Pass:
        """Wait until a call may be sent: at once while closed; while open, until this call is the probe (one
        at a time, after the backoff) or another's probe closed the breaker. A call that ``failed_before``
        provider-wide probes only when no fresh call is waiting."""
        started = self._clock()
        probe = False
        fresh = not failed_before and self.state != "closed"
        self._fresh_waiting += fresh
        try:
            while self.state != "closed":
                now = self._clock()
                if self.state == "open" and now >= self._probe_at and (fresh or not self._fresh_waiting):
                    self.state, probe = "probing", True
                    log.info("provider probe", extra={"detail": self.cause})
                    break
                self._changed.clear()
                timeout = max(0.0, self._probe_at - now) if self.state == "open" else None
                if not fresh and self._fresh_waiting and timeout is not None:
                    timeout = max(timeout, self._backoff.base_s)  # a fresh call goes first
                try:
                    async with asyncio.timeout(timeout):
                        await self._changed.wait()
                except TimeoutError:
                    pass
        finally:
            self._fresh_waiting -= fresh
        return Pass(waited_s=self._clock() - started, probe=probe, epoch=self.epoch)

    def still_admits(self, admitted: Pass) -> bool:
        """Whether a call admitted earlier may still be sent: it waited for a concurrency slot or a rate permit
        after :meth:`admit`, and the breaker may have opened meanwhile (only the probe goes then)."""
        return self.state == "closed" or (admitted.probe and self.state == "probing")

    def abandon(self, admitted: Pass) -> None:
        """The call ``admitted`` ended without an answer (cancelled): a probe's turn goes to the next caller."""
        if admitted.probe and self.state == "probing":
            self.state, self._probe_at = "open", self._clock()
            self._changed.set()

    def answered(self, admitted: Pass) -> None:
        """The provider answered a call in some other way than a provider-wide failure: close, when that call
        was let through after the latest opening."""
        if self.state == "closed" or admitted.epoch != self.epoch:
            return
        log.info("provider answers again; resuming", extra={"detail": self.cause})
        self.state, self.cause, self._opened = "closed", None, 0
        self.closures += 1
        self._signal()

    def failed(self, cause: Cause) -> None:
        """A provider-wide failure: open (again, with a longer backoff when a probe failed)."""
        if self.state == "open":
            return  # answers of calls sent before it opened: the backoff is already running
        delay = self._backoff.delay_s(self._opened)
        if self.state == "closed":
            log.warning(
                "the provider refuses every call; intake paused until it answers again",
                extra={"detail": cause, "count": round(delay, 1)},
            )
        self._opened += 1
        if self.state == "closed":
            self.epoch += 1
        self.state, self.cause = "open", cause
        self._probe_at = self._clock() + delay
        self._signal()

    def _signal(self) -> None:
        self._changed.set()
        self._on_change(self.cause)
