"""Review records and decisions records for the review book's and the Kafka desk's tests (unit and integration)."""

from __future__ import annotations

import uuid
from typing import Any

from schemas import UserMessage
from schemas.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    Choice,
    Moderation,
    ModerationResult,
    ModerationResults,
    Usage,
)
from schemas.decisions import Claim, Decision, DecisionKind, Release, Reopen, ReviewRef
from schemas.topics import ApiFailure, Flagged, FlaggedCategory, InvalidJob, Job, Review, Side, Source

REVIEW_TOPIC = "review"
T0 = 1_700_000_000_000


def results(scores: dict[str, float], flagged: frozenset[str] = frozenset()) -> ModerationResults:
    return ModerationResults(
        model="omni-moderation-latest",
        results=[
            ModerationResult(
                categories={c: c in flagged for c in scores},
                category_applied_input_types={c: ["text"] for c in scores},
                category_scores=scores,
                flagged=bool(flagged),
                model="omni-moderation-latest",
            )
        ],
    )


def completion(
    *,
    content: str = "A poem about tea.",
    finish_reason: str = "stop",
    model: str = "gpt-4o-mini",
    input_scores: dict[str, float] | None = None,
    output_scores: dict[str, float] | None = None,
    output_flagged: frozenset[str] = frozenset(),
) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex[:8]}",
        choices=[
            Choice(
                finish_reason=finish_reason,
                index=0,
                message=ChatCompletionMessage(role="assistant", content=content),
            )
        ],
        created=1,
        model=model,
        object="chat.completion",
        moderation=Moderation(
            input=results(input_scores or {"violence": 0.01}),
            output=results(output_scores or {"violence": 0.01}, output_flagged),
        ),
        usage=Usage(completion_tokens=5, prompt_tokens=7, total_tokens=12),
    )


def job(job_id: str, *, model: str | None = None, metadata: dict[str, str] | None = None) -> Job:
    return Job(id=job_id, messages=[UserMessage(content="Write a poem.")], model=model, metadata=metadata)


def flagged(
    job_id: str,
    *,
    score: float = 0.9,
    category: str = "violence",
    side: Side = "output",
    with_completion: bool = True,
    with_job: bool = True,
    finish_reason: str = "stop",
    model: str = "gpt-4o-mini",
    metadata: dict[str, str] | None = None,
    source_offset: int = 0,
) -> Review:
    scores = {category: score}
    made = completion(
        finish_reason=finish_reason,
        model=model,
        input_scores=scores if side == "input" else None,
        output_scores=scores if side == "output" else None,
        output_flagged=frozenset({category}) if side == "output" else frozenset(),
    )
    return Review(
        id=job_id,
        reason=Flagged(
            side=side, categories=[FlaggedCategory(side=side, category=category, score=score, source="provider")]
        ),
        source=Source(topic="prompts", partition=0, offset=source_offset),
        job=job(job_id, model=model, metadata=metadata) if with_job else None,
        completion=made if with_completion else None,
        metadata=metadata,
        attempts=1,
        latency_ms=12.5,
    )


def api_error(job_id: str, *, with_job: bool = True) -> Review:
    return Review(
        id=job_id,
        reason=ApiFailure(failure="http_status", message="boom", attempts=3, status=500),
        source=Source(topic="prompts", partition=0, offset=1),
        job=job(job_id) if with_job else None,
        attempts=3,
    )


def invalid(offset: int) -> Review:
    return Review(
        id=None,
        reason=InvalidJob(
            error="not valid JSON",
            source=Source(topic="prompts", partition=0, offset=offset),
            raw="{",
            raw_encoding="utf-8",
            raw_size=1,
        ),
        source=Source(topic="prompts", partition=0, offset=offset),
    )


def ref(offset: int, partition: int = 0, topic: str = REVIEW_TOPIC) -> ReviewRef:
    return ReviewRef(topic=topic, partition=partition, offset=offset)


def rid() -> str:
    return uuid.uuid4().hex


def decision(
    item: str, review: ReviewRef, kind: DecisionKind, who: str = "ana", *, admin: bool = False, **more: Any
) -> Decision:
    at = more.pop("at", T0)
    return Decision(record_id=rid(), item=item, review=review, decision=kind, reviewer=who, at=at, admin=admin, **more)


def claim(item: str, who: str, at: int, *, for_ms: int = 300_000) -> Claim:
    return Claim(record_id=rid(), item=item, reviewer=who, at=at, expires_at=at + for_ms)


def release(item: str, who: str, at: int) -> Release:
    return Release(record_id=rid(), item=item, reviewer=who, at=at)


def reopen(item: str, who: str = "root", *, admin: bool = True, at: int = T0) -> Reopen:
    return Reopen(record_id=rid(), item=item, reviewer=who, at=at, admin=admin)
