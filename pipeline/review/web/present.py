"""Items as the pages show them: plain rows of text the templates print (and escape), nothing to interpret.

Each function turns a part of a review record (messages, choices, moderation, the reason, the history) into
small values. Links are made only from ``http``/``https`` URLs; anything else (``javascript:``, ``data:``)
is shown as text, and images are never loaded, only linked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import msgspec

from pipeline.review.desk import HistoryEntry, Item
from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    FilePart,
    FunctionMessage,
    FunctionToolCall,
    ImageUrlPart,
    InputAudioPart,
    Message,
    ModerationError,
    ModerationOutcome,
    ModerationResults,
    RefusalPart,
    TextPart,
    ToolCall,
    ToolMessage,
)
from schemas.decisions import Applied, Applying, Claim, Decision, Release, Reopen
from schemas.topics import Flagged, FlaggedCategory, InvalidJob, Review, Side, reason_kind

_encoder: Final = msgspec.json.Encoder()


@dataclass(frozen=True)
class Part:
    """One piece of a message: ``text``, ``image`` (a link, or text when the URL is not http(s)), ``note``."""

    kind: str
    text: str
    url: str | None = None


@dataclass(frozen=True)
class MessageView:
    role: str
    name: str | None
    parts: list[Part]


def safe_url(url: str) -> str | None:
    """The URL when it may be a link (http or https with a host), else ``None``."""
    parts = urlsplit(url.strip())
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def _image(url: str) -> Part:
    if url.startswith("data:"):
        return Part("note", f"inline image data ({len(url)} characters), not shown")
    return Part("image", url, safe_url(url))


def _tool_calls(calls: list[ToolCall] | None) -> list[Part]:
    parts = []
    for call in calls or ():
        if isinstance(call, FunctionToolCall):
            parts.append(Part("tool", f"{call.function.name}({call.function.arguments})"))
        else:
            parts.append(Part("tool", f"{call.custom.name}: {call.custom.input}"))
    return parts


def _content(content: object) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Part("text", content)]
    parts: list[Part] = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, TextPart):
            parts.append(Part("text", part.text))
        elif isinstance(part, RefusalPart):
            parts.append(Part("refusal", part.refusal))
        elif isinstance(part, ImageUrlPart):
            parts.append(_image(part.image_url.url))
        elif isinstance(part, InputAudioPart):
            parts.append(Part("note", f"audio ({part.input_audio.format}, {len(part.input_audio.data)} characters)"))
        elif isinstance(part, FilePart):
            parts.append(Part("note", f"file {part.file.filename or part.file.file_id or '(inline data)'}"))
    return parts


def message_views(messages: list[Message]) -> list[MessageView]:
    views = []
    for message in messages:
        role = message.__struct_config__.tag
        parts = _content(message.content)
        name = None if isinstance(message, ToolMessage) else message.name
        if isinstance(message, AssistantMessage):
            if message.refusal:
                parts.append(Part("refusal", message.refusal))
            parts.extend(_tool_calls(message.tool_calls))
        if isinstance(message, ToolMessage):
            name = f"tool call {message.tool_call_id}"
        if isinstance(message, FunctionMessage):
            name = message.name
        views.append(MessageView(role=str(role), name=name, parts=parts))
    return views


@dataclass(frozen=True)
class ChoiceView:
    index: int
    finish_reason: str
    parts: list[Part]


def choice_views(completion: ChatCompletion) -> list[ChoiceView]:
    views = []
    for choice in completion.choices:
        message = choice.message
        parts = [Part("text", message.content)] if message.content is not None else []
        if message.refusal:
            parts.append(Part("refusal", message.refusal))
        parts.extend(_tool_calls(message.tool_calls))
        if message.function_call is not None:
            parts.append(Part("tool", f"{message.function_call.name}({message.function_call.arguments})"))
        views.append(ChoiceView(index=choice.index, finish_reason=str(choice.finish_reason), parts=parts))
    return views


@dataclass(frozen=True)
class ScoreRow:
    category: str
    score: float
    #: ``w0`` … ``w100`` in steps of 5: the bar's width is a CSS class (the CSP forbids style attributes).
    bar: str
    flagged: bool
    #: Flagged by the pipeline's own (stricter) threshold, per the review's reason.
    threshold: bool
    input_types: str


@dataclass(frozen=True)
class SideView:
    side: Side
    model: str | None
    error: str | None
    results: list[list[ScoreRow]]


def bar_class(score: float) -> str:
    return f"w{round(min(max(score, 0.0), 1.0) * 20) * 5}"


def _flagged_by_reason(review: Review) -> list[FlaggedCategory]:
    return list(review.reason.categories) if isinstance(review.reason, Flagged) else []


def moderation_views(review: Review) -> list[SideView]:
    """The moderation results of each side, categories by score (highest first)."""
    moderation = review.completion.moderation if review.completion is not None else None
    if moderation is None:
        return []
    by_reason = _flagged_by_reason(review)
    views = []
    sides: tuple[tuple[Side, ModerationOutcome], ...] = (("input", moderation.input), ("output", moderation.output))
    for side, outcome in sides:
        if isinstance(outcome, ModerationError):
            views.append(SideView(side=side, model=None, error=f"{outcome.code}: {outcome.message}", results=[]))
            continue
        assert isinstance(outcome, ModerationResults)
        threshold = {c.category for c in by_reason if c.side == side and c.source == "threshold"}
        provider = {c.category for c in by_reason if c.side == side and c.source == "provider"}
        tables = []
        for result in outcome.results:
            rows = [
                ScoreRow(
                    category=category,
                    score=score,
                    bar=bar_class(score),
                    flagged=result.categories.get(category, False) or category in provider,
                    threshold=category in threshold,
                    input_types=", ".join(result.category_applied_input_types.get(category, [])),
                )
                for category, score in sorted(result.category_scores.items(), key=lambda kv: (-kv[1], kv[0]))
            ]
            tables.append(rows)
        views.append(SideView(side=side, model=outcome.model, error=None, results=tables))
    return views


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    return _encoder.encode(value).decode()


def reason_rows(review: Review) -> list[tuple[str, str]]:
    """The reason's fields as (name, text), its flagged categories apart (they have their own table)."""
    reason = review.reason
    rows: list[tuple[str, str]] = [("kind", reason_kind(reason))]
    for name in reason.__struct_fields__:
        value = getattr(reason, name)
        if name == "categories" and isinstance(reason, Flagged):
            continue
        if name == "raw" and isinstance(reason, InvalidJob):
            continue
        if value is not None:
            rows.append((name, _text(value)))
    return rows


def reason_summary(review: Review) -> str:
    """A few words for the queue: ``output: violence 0.91, hate 0.40``, ``http 503``, …"""
    reason = review.reason
    if isinstance(reason, Flagged):
        top = sorted(reason.categories, key=lambda c: -c.score)[:2]
        return f"{reason.side}: " + ", ".join(f"{c.category} {c.score:.2f}" for c in top)
    for name in ("code", "failure", "error", "detail"):
        value = getattr(reason, name, None)
        if isinstance(value, str):
            return value[:80]
    return ""


@dataclass(frozen=True)
class HistoryRow:
    at: int
    who: str
    what: str
    why: str
    accepted: bool
    refused_because: str | None
    position: str


def history_rows(entries: tuple[HistoryEntry, ...]) -> list[HistoryRow]:
    rows = []
    for entry in entries:
        record = entry.record
        who, what, why = "", record.__struct_config__.tag, ""
        if isinstance(record, Decision):
            who, what = record.reviewer, f"decision: {record.decision}" + (" (admin)" if record.admin else "")
            why = " — ".join(text for text in (record.reason, record.note) if text)
        elif isinstance(record, Claim):
            who, what = record.reviewer, "claim"
        elif isinstance(record, Release):
            who, what = record.reviewer, "release"
        elif isinstance(record, Reopen):
            who, what, why = record.reviewer, "reopen", record.note or ""
        elif isinstance(record, Applying | Applied):
            who, what = "applier", f"{record.__struct_config__.tag} to {record.topic}/{record.partition}"
        rows.append(
            HistoryRow(
                at=record.at,
                who=who,
                what=str(what),
                why=why,
                accepted=entry.accepted,
                refused_because=entry.refused_because,
                position=entry.position,
            )
        )
    return rows


def applied_text(applied: Applied | None) -> str | None:
    return None if applied is None else f"{applied.topic}/{applied.partition}/{applied.offset}"


def model_of(item: Item) -> str | None:
    review = item.review
    if review.completion is not None:
        return review.completion.model
    return review.job.model if review.job is not None else None


def metadata_of(review: Review) -> dict[str, str]:
    merged = dict(review.job.metadata or {}) if review.job is not None else {}
    merged.update(review.metadata or {})
    return merged
