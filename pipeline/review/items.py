"""What a review record is as an item of the queue: its key, its score, which decisions it allows, which filters
it passes. Pure functions of the record (and of the time, passed in)."""

from __future__ import annotations

from pipeline.review.desk import ItemFilter, Problem
from schemas.chat import ModerationResults, is_known_finish_reason
from schemas.decisions import DecisionKind, ReviewRef
from schemas.topics import Flagged, ModerationFailed, Review


def item_key(review: Review, ref: ReviewRef) -> str:
    """The job id, or ``@topic:partition:offset`` of the review record when it has none."""
    return review.id if review.id else f"@{ref.topic}:{ref.partition}:{ref.offset}"


def max_score(review: Review) -> float | None:
    """Highest moderation score over both sides and every category (completion moderation and flagged
    categories), or None when the review carries no score."""
    scores: list[float] = []
    moderation = review.completion.moderation if review.completion is not None else None
    if moderation is not None:
        for outcome in (moderation.input, moderation.output):
            if isinstance(outcome, ModerationResults):
                for result in outcome.results:
                    scores.extend(result.category_scores.values())
    if isinstance(review.reason, Flagged):
        scores.extend(category.score for category in review.reason.categories)
    return max(scores) if scores else None


def decision_problem(review: Review, decision: DecisionKind) -> tuple[Problem, str] | None:
    """Why ``decision`` cannot be carried out for this review record, or None.

    Approve publishes a :class:`~schemas.topics.Result` from the completion's first choice, whose
    ``finish_reason`` must be one a Result can hold; rerun sends the job back, so the record must hold it.
    """
    if decision == "approve":
        completion = review.completion
        if completion is None or not completion.choices:
            return "no_completion", "approve needs a completion, and the review record holds none"
        finish = completion.choices[0].finish_reason
        if not is_known_finish_reason(finish):
            return "no_completion", f"the completion ended for a reason a Result cannot carry ({finish!r})"
    if decision == "rerun" and review.job is None:
        return "no_job", "rerun needs the job, and the review record holds none"
    return None


def _sides_of(review: Review) -> set[str]:
    reason = review.reason
    if isinstance(reason, Flagged):
        return {category.side for category in reason.categories} | (
            {"input", "output"} if reason.side == "both" else {reason.side}
        )
    if isinstance(reason, ModerationFailed):
        return {"input", "output"} if reason.side == "both" else {reason.side}
    return set()


def _categories_of(review: Review, side: str | None) -> set[str]:
    found: set[str] = set()
    if isinstance(review.reason, Flagged):
        found.update(c.category for c in review.reason.categories if side is None or c.side == side)
    moderation = review.completion.moderation if review.completion is not None else None
    if moderation is not None:
        for name, outcome in (("input", moderation.input), ("output", moderation.output)):
            if isinstance(outcome, ModerationResults) and side in (None, name):
                for result in outcome.results:
                    found.update(category for category, flagged in result.categories.items() if flagged)
    return found


def _models_of(review: Review) -> set[str]:
    models = {review.completion.model} if review.completion is not None else set()
    if review.job is not None and review.job.model is not None:
        models.add(review.job.model)
    return models


def matches(where: ItemFilter, review: Review, reason: str, score: float | None, received_at: int, now_ms: int) -> bool:
    """Whether an item passes every bound of ``where`` but its state (which the fold knows)."""
    if where.reason is not None and reason != where.reason:
        return False
    if where.side is not None and where.side not in _sides_of(review):
        return False
    if where.category is not None and where.category not in _categories_of(review, where.side):
        return False
    if where.score_min is not None and (score is None or score < where.score_min):
        return False
    if where.score_max is not None and (score is None or score > where.score_max):
        return False
    if where.model is not None and where.model not in _models_of(review):
        return False
    if where.metadata:
        metadata = review.metadata or (review.job.metadata if review.job is not None else None) or {}
        if any(metadata.get(name) != value for name, value in where.metadata):
            return False
    age_s = (now_ms - received_at) / 1000
    if where.min_age_s is not None and age_s < where.min_age_s:
        return False
    return not (where.max_age_s is not None and age_s > where.max_age_s)
