"""One job record in, one route out: decode the job, call the provider, route the outcome.

A job of a cancelled batch (:mod:`~pipeline.worker.cancellations`) is routed to review as ``cancelled``
between the decode and the call, so it is never called; so is a job whose tenant is over its budget
(:mod:`~pipeline.tenancy.spending`, ``budget_exceeded``). What the call was billed for, over all its attempts,
is priced and written on the record (``cost_usd``).

Never raises for what a record or the provider can do: an undecodable record routes to review as
``invalid_job`` without a call, and a client that raises instead of returning an outcome costs that job a
review (``internal``), not the worker its life. Cancellation passes through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from pipeline.outcomes import Failed, Outcome
from pipeline.routing import Route, Thresholds, ToReview, repeated_key, route, route_cancelled, route_invalid
from pipeline.tenancy.spending import TenantSpending, route_over_budget, with_cost
from pipeline.worker.cancellations import Cancellations
from schemas.chat import TextPart, UserMessage
from schemas.topics import ApiFailure, Job, JobDecodeError, Review, Source, decode_job, invalid_job

log = logging.getLogger("pipeline.worker")


class CompletionClient(Protocol):
    """What the worker needs from the provider client: one job in, one outcome out, never an exception; and
    whether the provider takes calls at all (false while a provider-wide failure holds every call), and
    whether new jobs should be fetched meanwhile (only to give a probing breaker a fresh call)."""

    async def complete(self, job: Job) -> Outcome: ...

    @property
    def provider_available(self) -> bool: ...

    @property
    def takes_new_jobs(self) -> bool: ...

    async def aclose(self) -> None: ...


def internal_failure(raw: bytes, source: Source, error: BaseException, max_job_bytes: int) -> ToReview:
    """The review for a job whose processing raised (a bug): ``api_error`` ``internal``, with the job when it
    decodes, so that ``pipeline replay --reason api_error`` can send it again once the bug is fixed."""
    decoded = decode_job(raw, max_bytes=max_job_bytes)
    job = None if isinstance(decoded, JobDecodeError) else decoded
    reason = ApiFailure(failure="internal", message=f"processing raised {type(error).__name__}", attempts=0)
    return ToReview(Review(id=job.id if job else None, reason=reason, source=source, job=job))


def prompt_text(job: Job) -> str:
    """The user-visible text of a job, for the explicit debug flag only."""
    parts: list[str] = []
    for message in job.messages:
        if isinstance(message, UserMessage):
            content = message.content
            parts.extend(
                [content] if isinstance(content, str) else [p.text for p in content if isinstance(p, TextPart)]
            )
    return "\n".join(parts)


class Processor:
    """Decode → call → route, for one record at a time (any number of them concurrently)."""

    def __init__(
        self,
        client: CompletionClient,
        thresholds: Thresholds,
        *,
        max_job_bytes: int,
        log_prompts: bool = False,
        cancellations: Cancellations | None = None,
        spending: TenantSpending | None = None,
    ) -> None:
        self._client = client
        self._spending = spending
        self._thresholds = thresholds
        self._max_job_bytes = max_job_bytes
        self._log_prompts = log_prompts
        self._cancellations = cancellations

    async def process(self, raw: bytes, source: Source, published_ms: int | None = None) -> Route:
        """``published_ms``: the job record's timestamp (a job published after its batch was cancelled runs)."""
        decoded = decode_job(raw, max_bytes=self._max_job_bytes)
        if not isinstance(decoded, JobDecodeError) and (key := repeated_key(raw)) is not None:
            decoded = JobDecodeError(error=f"not a valid job: an object names the key {key!r} twice (ambiguous)")
        if isinstance(decoded, JobDecodeError):
            return route_invalid(raw, invalid_job(raw, decoded, source))
        if self._cancellations is not None and (cancelled := await self._cancellations.check(decoded, published_ms)):
            return route_cancelled(decoded, source, cancelled)
        if self._spending is not None and (over := await self._spending.over_budget(decoded)) is not None:
            return route_over_budget(decoded, source, over)
        if self._log_prompts:
            log.debug("prompt", extra={"job_id": decoded.id, "prompt": prompt_text(decoded)})
        outcome = await self._call(decoded)
        routed = route(decoded, source, outcome, self._thresholds)
        return routed if self._spending is None else with_cost(routed, self._spending.charge(decoded, outcome))

    async def _call(self, job: Job) -> Outcome:
        started = time.monotonic()
        try:
            return await self._client.complete(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a client bug must cost one job a review, not the worker its life
            log.exception("client raised instead of returning an outcome", extra={"job_id": job.id})
            latency = (time.monotonic() - started) * 1000
            return Failed(
                failure="internal", message=f"client error: {type(exc).__name__}", attempts=1, latency_ms=latency
            )
