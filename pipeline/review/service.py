"""The review console's back end in one piece: a :class:`KafkaDesk` and an :class:`Applier` sharing one follower.

``async with ReviewService(kafka, worker) as service:`` starts following the review and decisions topics,
waits until both were read (the queue is whole), and keeps an applier running beside the desk, restarted with
backoff if it fails (it is crash-safe: see :mod:`pipeline.review.applier`). Topics come from the worker's
settings (``PIPELINE_REVIEW_TOPIC``, ``PIPELINE_OUTPUT_TOPIC``, ``PIPELINE_INPUT_TOPIC``,
``PIPELINE_DECISIONS_TOPIC``), the applier's group from ``PIPELINE_GROUP_ID`` (``<group>.review-applier``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Annotated, Final

import msgspec

from pipeline.backoff import Backoff
from pipeline.config import ConfigError, Option, WorkerSettings, parse_settings
from pipeline.kafka import KafkaSettings
from pipeline.review.applier import Applier
from pipeline.review.follower import epoch_ms
from pipeline.review.log import DEFAULT_CLAIM_S, DEFAULT_DECISION_REASONS, KafkaDesk
from pipeline.review.metrics import ReviewMetrics

log = logging.getLogger("pipeline.review")

APPLIER_BACKOFF: Final = Backoff(base_s=1.0, cap_s=60.0)


class ReviewSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the console's desk behaves (the web layer has its own settings)."""

    decision_reasons: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_DECISION_REASONS))
    claim_s: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_CLAIM_S
    #: How long a decision waits to be written and read back before the desk answers that it is unavailable.
    write_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0


REVIEW_OPTIONS: tuple[Option, ...] = (
    Option(
        "PIPELINE_REVIEW_DECISION_REASONS",
        "decision_reasons",
        "reasons a reviewer picks from, comma-separated (free text goes in the note)",
    ),
    Option("PIPELINE_REVIEW_CLAIM_S", "claim_s", "how long opening an item holds it for its reviewer (default 300)"),
    Option(
        "PIPELINE_REVIEW_WRITE_TIMEOUT_S",
        "write_timeout_s",
        "how long a decision may take to be written and read back (default 30)",
    ),
)


def load_review_settings(values: Mapping[str, str]) -> ReviewSettings:
    settings = parse_settings(ReviewSettings, REVIEW_OPTIONS, values)
    if not settings.decision_reasons:
        raise ConfigError(["PIPELINE_REVIEW_DECISION_REASONS: name at least one reason"])
    return settings


class ReviewService:
    """The desk (``self.desk``) and the applier (``self.applier``) of one console process."""

    def __init__(
        self,
        kafka: KafkaSettings,
        worker: WorkerSettings,
        review: ReviewSettings | None = None,
        *,
        metrics: ReviewMetrics | None = None,
        clock: Callable[[], int] = epoch_ms,
        ready_timeout_s: float | None = 300.0,
    ) -> None:
        review = review or ReviewSettings()
        self.metrics = metrics or ReviewMetrics()
        self.desk = KafkaDesk(
            kafka,
            review_topic=worker.review_topic,
            decisions_topic=worker.decisions_topic,
            decision_reasons=review.decision_reasons,
            claim_s=review.claim_s,
            write_timeout_s=review.write_timeout_s,
            clock=clock,
            metrics=self.metrics,
        )
        self.applier = Applier(
            kafka,
            self.desk.follower,
            output_topic=worker.output_topic,
            input_topic=worker.input_topic,
            group_id=worker.group_id,
            session_timeout_ms=worker.session_timeout_ms,
            heartbeat_interval_ms=worker.heartbeat_interval_ms,
            clock=clock,
            metrics=self.metrics,
        )
        self._ready_timeout_s = ready_timeout_s
        self._applying: asyncio.Task[None] | None = None

    @property
    def applier_running(self) -> bool:
        return self._applying is not None and not self._applying.done()

    async def __aenter__(self) -> ReviewService:
        await self.desk.start()
        try:
            await self.desk.wait_ready(self._ready_timeout_s)
        except BaseException:
            await self.desk.stop()
            raise
        self._applying = asyncio.create_task(self._apply_forever(), name="review-applier")
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._applying is not None:
            self._applying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._applying
            self._applying = None
        await self.desk.stop()

    async def _apply_forever(self) -> None:
        failures = 0
        while True:
            try:
                await self.applier.run()
            except Exception as exc:
                delay = APPLIER_BACKOFF.delay_s(failures)
                failures += 1
                log.exception("the review applier failed; restarting", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay)
