"""A provider-wide outage: every ``/v1`` request refused with one of the errors that are never the job's fault.

A key that is wrong or revoked (401 ``invalid_api_key``), a project denied the model (403), a model that does
not exist (404 ``model_not_found``) or a billing lapse (429 ``insufficient_quota``): the real API answers
every request alike until someone fixes it. Here the outage lasts ``requests`` answers or ``seconds`` (on the
server's clock), whichever ends first, or until it is ended, and then the provider answers normally again.

Controlled over HTTP (no key needed, like the rest of ``/sim/*``): ``POST /sim/outage`` with a JSON
:class:`Outage` (``{"error": "invalid_api_key", "requests": 20}``) starts one, replacing any other;
``DELETE /sim/outage`` ends it; ``GET /sim/outage`` shows it. Every answer is the :class:`OutageState`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from pipeline.simulator import errors
from pipeline.simulator.errors import ApiError
from pipeline.simulator.ratelimit import Clock

OutageError = Literal["invalid_api_key", "model_access_denied", "model_not_found", "insufficient_quota"]


class Outage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What ``POST /sim/outage`` takes: which error, and for how many answers and/or seconds (neither: until
    ``DELETE /sim/outage``)."""

    error: OutageError
    requests: Annotated[int, msgspec.Meta(ge=1)] | None = None
    seconds: Annotated[float, msgspec.Meta(gt=0)] | None = None


class OutageState(msgspec.Struct, frozen=True, kw_only=True):
    """What ``/sim/outage`` answers: the outage in force (``error`` null when none) and what is left of it."""

    error: OutageError | None
    remaining_requests: int | None
    remaining_s: float | None
    #: Requests refused by outages since the server started.
    refused: int


def refusal(error: OutageError, model: str | None) -> ApiError:
    """The API's answer for this kind of outage."""
    match error:
        case "invalid_api_key":
            return errors.invalid_api_key()
        case "model_access_denied":
            return errors.model_access_denied(model)
        case "model_not_found":
            return errors.model_not_found(model)
        case "insufficient_quota":
            return errors.insufficient_quota()


class ProviderOutage:
    """The outage in force, if any; asked once per ``/v1`` request."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._outage: Outage | None = None
        self._answered = 0
        self._started = 0.0
        self._refused = 0

    def start(self, outage: Outage) -> None:
        self._outage, self._answered, self._started = outage, 0, self._clock()

    def end(self) -> None:
        self._outage = None

    def _current(self) -> Outage | None:
        """The outage, or None once it has run its course (which ends it)."""
        outage = self._outage
        if outage is None:
            return None
        over_by_count = outage.requests is not None and self._answered >= outage.requests
        over_by_time = outage.seconds is not None and self._clock() - self._started >= outage.seconds
        if over_by_count or over_by_time:
            self._outage = None
            return None
        return outage

    def error(self) -> OutageError | None:
        """The error every request gets now, or None when the provider is up; counts the answer as given."""
        outage = self._current()
        if outage is None:
            return None
        self._answered += 1
        self._refused += 1
        return outage.error

    def state(self) -> OutageState:
        outage = self._current()
        if outage is None:
            return OutageState(error=None, remaining_requests=None, remaining_s=None, refused=self._refused)
        return OutageState(
            error=outage.error,
            remaining_requests=None if outage.requests is None else outage.requests - self._answered,
            remaining_s=None if outage.seconds is None else outage.seconds - (self._clock() - self._started),
            refused=self._refused,
        )
