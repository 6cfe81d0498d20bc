"""Review records for the console's tests: flagged with moderation, failed calls, invalid jobs, hostile text."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Literal

from schemas.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    Choice,
    ImageUrl,
    ImageUrlPart,
    Moderation,
    ModerationResult,
    ModerationResults,
    SystemMessage,
    TextPart,
    Usage,
    UserMessage,
)
from schemas.topics import ApiFailure, Flagged, FlaggedCategory, InvalidJob, Job, Review, Side, Source

HOSTILE_TEXTS = (
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    '"><svg onload=alert(1)>',
)


def moderation_result(scores: dict[str, float], flagged: Collection[str] = ()) -> ModerationResult:
    return ModerationResult(
        categories={name: name in flagged for name in scores},
        category_applied_input_types={name: ["text"] for name in scores},
        category_scores=scores,
        flagged=bool(flagged),
        model="omni",
    )


def completion(
    content: str = "Here is an answer.",
    *,
    input_scores: dict[str, float] | None = None,
    output_scores: dict[str, float] | None = None,
    flagged: Mapping[Side, Collection[str]] | None = None,
    model: str = "gpt-4o-mini",
) -> ChatCompletion:
    flagged = flagged or {}
    inputs = input_scores or {"harassment": 0.01, "violence": 0.02}
    outputs = output_scores or {"harassment": 0.01, "violence": 0.03}
    return ChatCompletion(
        id="chatcmpl-1",
        choices=[
            Choice(finish_reason="stop", index=0, message=ChatCompletionMessage(role="assistant", content=content))
        ],
        created=1_700_000_000,
        model=model,
        object="chat.completion",
        moderation=Moderation(
            input=ModerationResults(model="omni", results=[moderation_result(inputs, flagged.get("input", ()))]),
            output=ModerationResults(model="omni", results=[moderation_result(outputs, flagged.get("output", ()))]),
        ),
        usage=Usage(completion_tokens=12, prompt_tokens=30, total_tokens=42),
    )


def flagged_review(
    job_id: str,
    *,
    prompt: str = "Tell me a story.",
    answer: str = "Once upon a time…",
    category: str = "violence",
    score: float = 0.91,
    side: Side = "output",
    source: Literal["provider", "threshold"] = "provider",
    model: str = "gpt-4o-mini",
    metadata: dict[str, str] | None = None,
    offset: int = 0,
    with_completion: bool = True,
) -> Review:
    scores = {"harassment": 0.02, "hate": 0.01, category: score}
    flagged_now = {side: {category}} if source == "provider" else {}
    answered = completion(
        answer,
        input_scores=scores if side == "input" else None,
        output_scores=scores if side == "output" else None,
        flagged=flagged_now,
        model=model,
    )
    return Review(
        id=job_id,
        reason=Flagged(
            side=side,
            categories=[FlaggedCategory(side=side, category=category, score=score, source=source)],
        ),
        source=Source(topic="prompts", partition=0, offset=offset),
        job=Job(
            id=job_id,
            messages=[SystemMessage(content="You are helpful."), UserMessage(content=prompt)],
            model=model,
            metadata=metadata,
        ),
        completion=answered if with_completion else None,
        metadata=metadata,
        attempts=1,
        latency_ms=420.0,
    )


def api_error_review(job_id: str, *, offset: int = 0, metadata: dict[str, str] | None = None) -> Review:
    return Review(
        id=job_id,
        reason=ApiFailure(failure="http_status", message="upstream unavailable", attempts=4, status=503),
        source=Source(topic="prompts", partition=0, offset=offset),
        job=Job(id=job_id, messages=[UserMessage(content="Summarise this.")], model="gpt-4o-mini", metadata=metadata),
        metadata=metadata,
        attempts=4,
    )


def invalid_job_review(raw: str = '{"id": 1, "messages": "not a list"}', *, offset: int = 0) -> Review:
    return Review(
        id=None,
        reason=InvalidJob(
            error="Expected `str`, got `int` - at `$.id`",
            source=Source(topic="prompts", partition=0, offset=offset),
            raw=raw,
            raw_encoding="utf-8",
            raw_size=len(raw),
            path="$.id",
        ),
        source=Source(topic="prompts", partition=0, offset=offset),
    )


def hostile_review(job_id: str = "<script>alert('id')</script>") -> Review:
    """Every field a page prints holds markup that must come out as text."""
    text = " ".join(HOSTILE_TEXTS)
    return Review(
        id=job_id,
        reason=Flagged(
            side="both",
            categories=[FlaggedCategory(side="input", category="<b>hate</b>", score=0.97, source="threshold")],
        ),
        source=Source(topic="prompts", partition=0, offset=7),
        job=Job(
            id=job_id,
            messages=[
                UserMessage(
                    content=[
                        TextPart(text=text),
                        ImageUrlPart(image_url=ImageUrl(url="https://images.example/cat.png?<x>")),
                        ImageUrlPart(image_url=ImageUrl(url="javascript:alert(1)")),
                    ],
                    name="<i>mallory</i>",
                )
            ],
            model="<b>model</b>",
            metadata={"tenant": "<img src=x onerror=alert(2)>"},
        ),
        completion=completion(
            "<script>alert(3)</script> and <img src=x onerror=alert(4)>",
            input_scores={"<b>hate</b>": 0.97, "violence": 0.1},
            flagged={"input": {"<b>hate</b>"}},
        ),
        metadata={"tenant": "<img src=x onerror=alert(2)>"},
    )
