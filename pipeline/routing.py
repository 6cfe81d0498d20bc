"""Where a job goes: the output topic when clean, the review topic with a typed reason otherwise.

Fail closed, in this order: invalid job → ``invalid_job``; provider failure → ``api_error``; moderation
absent (or empty, or fewer output results than choices) → ``moderation_missing``; a moderation ``error`` on
either side → ``moderation_error``; flagged on either side (by the provider, or by a configured stricter
threshold) → ``flagged``; ``finish_reason == "content_filter"`` → ``content_filter``; a ``finish_reason`` this
version does not know → ``unknown_finish_reason`` (the paid answer goes along); otherwise → output. Before
any of that, a job of a cancelled batch that was not called yet → ``cancelled`` (:func:`route_cancelled`, no
call). Pure functions only.
"""

from __future__ import annotations

import json
import re
from typing import Final

import msgspec

from pipeline.outcomes import Completed, Failed, Outcome
from schemas.batches import batch_of
from schemas.chat import (
    ChatCompletion,
    Moderation,
    ModerationError,
    ModerationOutcome,
    ModerationResults,
    is_known_finish_reason,
)
from schemas.topics import (
    ApiFailure,
    Cancelled,
    ChoiceFinish,
    ContentFiltered,
    Flagged,
    FlaggedCategory,
    InvalidJob,
    Job,
    ModerationFailed,
    ModerationMissing,
    Reason,
    Result,
    Review,
    Side,
    Sides,
    Source,
    UnknownFinishReason,
)


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    """Review a job when a score reaches these values even if the provider did not flag it."""

    #: applies to every category without an entry of its own
    any_category: float | None = None
    per_category: dict[str, float] = msgspec.field(default_factory=dict)

    def limit(self, category: str) -> float | None:
        return self.per_category.get(category, self.any_category)


NO_THRESHOLDS: Final = Thresholds()
#: the category named when a result is flagged but marks no category
UNSPECIFIED: Final = "(unspecified)"


class ToOutput(msgspec.Struct, frozen=True, tag_field="route", tag="output"):
    result: Result


class ToReview(msgspec.Struct, frozen=True, tag_field="route", tag="review"):
    review: Review


Route = ToOutput | ToReview


def _sides(moderation: Moderation) -> tuple[tuple[Side, ModerationOutcome], ...]:
    return (("input", moderation.input), ("output", moderation.output))


def _which(sides: list[Side]) -> Sides:
    return "both" if len(sides) > 1 else sides[0]


def _flagged_categories(side: Side, results: ModerationResults, thresholds: Thresholds) -> list[FlaggedCategory]:
    found: dict[str, FlaggedCategory] = {}
    any_limit = thresholds.any_category is not None or bool(thresholds.per_category)
    for result in results.results:
        for category, score in result.category_scores.items() if any_limit else ():
            limit = thresholds.limit(category)
            if category not in found and limit is not None and score >= limit:
                found[category] = FlaggedCategory(side=side, category=category, score=score, source="threshold")
        for category, flagged in result.categories.items():
            if flagged:
                score = result.category_scores.get(category, 0.0)
                found[category] = FlaggedCategory(side=side, category=category, score=score, source="provider")
        if result.flagged and not any(c.source == "provider" for c in found.values()):
            # Flagged without naming a category: still flagged (fail closed), with the top score shown.
            top = max(result.category_scores.values(), default=0.0)
            found[UNSPECIFIED] = FlaggedCategory(side=side, category=UNSPECIFIED, score=top, source="provider")
    return sorted(found.values(), key=lambda c: (-c.score, c.category))


def moderation_reason(moderation: Moderation | None, choices: int, thresholds: Thresholds) -> Reason | None:
    """The content reason to review the moderation of a completion with ``choices`` choices, or None when both
    sides are clean. The output side needs a result per choice: a choice without one was never moderated."""
    if moderation is None:
        return ModerationMissing(detail="moderation was requested but the response carried none")
    empty = [
        side for side, outcome in _sides(moderation) if isinstance(outcome, ModerationResults) and not outcome.results
    ]
    if empty:
        return ModerationMissing(detail=f"moderation results were empty for: {', '.join(empty)}")
    output = moderation.output
    if isinstance(output, ModerationResults) and len(output.results) < choices:
        return ModerationMissing(detail=f"output moderation has {len(output.results)} result(s) for {choices} choices")
    errors = [(side, outcome) for side, outcome in _sides(moderation) if isinstance(outcome, ModerationError)]
    if errors:
        first = errors[0][1]
        return ModerationFailed(side=_which([side for side, _ in errors]), code=first.code, message=first.message)
    flagged: list[FlaggedCategory] = []
    for side, outcome in _sides(moderation):
        assert isinstance(outcome, ModerationResults)
        flagged.extend(_flagged_categories(side, outcome, thresholds))
    if flagged:
        sides = sorted({c.side for c in flagged}, key=("input", "output").index)
        return Flagged(side=_which(sides), categories=flagged)
    return None


def review_reason(outcome: Outcome, thresholds: Thresholds = NO_THRESHOLDS) -> Reason | None:
    """Why this outcome must be reviewed, or None when it is clean."""
    if isinstance(outcome, Failed):
        return ApiFailure(
            failure=outcome.failure,
            message=outcome.message,
            attempts=outcome.attempts,
            status=outcome.status,
            error_type=outcome.error_type,
            code=outcome.code,
        )
    completion = outcome.completion
    if not completion.choices:
        return ApiFailure(failure="decode", message="the response carried no choices", attempts=outcome.attempts)
    reason = moderation_reason(completion.moderation, len(completion.choices), thresholds)
    if reason is not None:
        return reason
    filtered = [choice.index for choice in completion.choices if choice.finish_reason == "content_filter"]
    if filtered:
        return ContentFiltered(choices=filtered)
    unknown = [
        ChoiceFinish(index=choice.index, finish_reason=choice.finish_reason)
        for choice in completion.choices
        if not is_known_finish_reason(choice.finish_reason)
    ]
    if unknown:
        return UnknownFinishReason(choices=unknown)
    return None


def _result(job: Job, source: Source, outcome: Completed) -> Result:
    completion: ChatCompletion = outcome.completion
    first = completion.choices[0]
    finish_reason = first.finish_reason
    assert is_known_finish_reason(finish_reason), "review_reason sends any other finish_reason to review"
    return Result(
        id=job.id,
        model=completion.model,
        content=first.message.content,
        finish_reason=finish_reason,
        usage=completion.usage,
        moderation=completion.moderation,
        metadata=job.metadata,
        attempts=outcome.attempts,
        latency_ms=outcome.latency_ms,
        completion_id=completion.id,
        source=source,
        # a batch's results are Batch API lines holding the whole chat.completion
        completion=completion if batch_of(job.metadata) is not None else None,
    )


def route(job: Job, source: Source, outcome: Outcome, thresholds: Thresholds = NO_THRESHOLDS) -> Route:
    """The destination record for a job that reached the provider."""
    reason = review_reason(outcome, thresholds)
    if reason is None:
        assert isinstance(outcome, Completed)
        return ToOutput(_result(job, source, outcome))
    return ToReview(
        Review(
            id=job.id,
            reason=reason,
            source=source,
            job=job,
            completion=outcome.completion if isinstance(outcome, Completed) else None,
            metadata=job.metadata,
            attempts=outcome.attempts,
            latency_ms=outcome.latency_ms,
        )
    )


def route_cancelled(job: Job, source: Source, reason: Cancelled) -> ToReview:
    """The review record for a job of a cancelled batch that was not called (``pipeline replay`` can send
    the job again: a job published after the cancellation runs)."""
    return ToReview(Review(id=job.id, reason=reason, source=source, job=job, metadata=job.metadata, attempts=0))


class _JobIdOnly(msgspec.Struct):
    id: str | None = None


_job_id_decoder: Final = msgspec.json.Decoder(_JobIdOnly)


def salvage_job_id(raw: bytes) -> str | None:
    """The ``id`` of an invalid job when it still has a readable string one, so review can key it."""
    try:
        job_id = _job_id_decoder.decode(raw).id
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
        return None
    return job_id or None


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise _RepeatedKey(next(name for name in names if names.count(name) > 1))
    return dict(pairs)


_any_decoder: Final = msgspec.json.Decoder()
_any_encoder: Final = msgspec.json.Encoder()
_ESCAPED_COLON: Final = re.compile(rb"\\u003[aA]")


def _no_repeated_key(raw: bytes) -> bool:
    """A cheap proof that no object in ``raw`` (valid JSON) names a key twice; False means "look closer".

    Every colon of JSON text outside a string separates an object member. Decoding keeps one member per
    distinct key, and re-encoding writes one colon per member kept plus every colon inside the strings kept.
    So the two texts have as many colons exactly when no key repeats: a repeated member takes its colon (and
    any in its strings) with it. A colon written as an escape (``\\u003a``) is a colon only once decoded,
    which would break the count: such a record takes the exact path.
    """
    if _ESCAPED_COLON.search(raw):
        return False
    try:
        again = _any_encoder.encode(_any_decoder.decode(raw))
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError, OverflowError):
        return False
    return raw.count(b":") == again.count(b":")


def repeated_key(raw: bytes) -> str | None:
    """A key that some object of a decoded job names twice (msgspec silently keeps the last value, another
    reader may keep the first: which job is meant is ambiguous, so it is not a job)."""
    if _no_repeated_key(raw):
        return None  # the common case, at about a fifth of the cost of the exact check below
    try:
        json.loads(raw, object_pairs_hook=_unique_keys)
    except _RepeatedKey as exc:
        return str(exc)
    except (ValueError, RecursionError):
        pass  # the record already decoded as a job; this only looks for repeated keys
    return None


def route_invalid(raw: bytes, reason: InvalidJob) -> ToReview:
    """The review record for a record that is not a job; nothing was sent to the provider."""
    return ToReview(Review(id=salvage_job_id(raw), reason=reason, source=reason.source))
