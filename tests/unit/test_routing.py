"""Routing reads like the table: fail closed, in order, on each side independently."""

from __future__ import annotations

import msgspec
import pytest

from pipeline.outcomes import Completed, Failed
from pipeline.routing import (
    UNSPECIFIED,
    Thresholds,
    ToOutput,
    ToReview,
    review_reason,
    route,
    route_invalid,
)
from schemas import Job, JobDecodeError, Source, UserMessage, invalid_job
from schemas.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    Choice,
    FinishReason,
    Moderation,
    ModerationError,
    ModerationOutcome,
    ModerationResult,
    ModerationResults,
    Usage,
)
from schemas.topics import (
    ApiFailure,
    ChoiceFinish,
    ContentFiltered,
    Flagged,
    ModerationFailed,
    ModerationMissing,
    UnknownFinishReason,
)

SOURCE = Source(topic="prompts", partition=0, offset=7)
JOB = Job(id="job-7", messages=[UserMessage(content="hello")], metadata={"tenant": "acme"})


def results(flags: dict[str, float] | None = None, scores: dict[str, float] | None = None) -> ModerationResults:
    flags = flags or {}
    scores = {"violence": 0.01, "hate": 0.02, **(scores or {}), **flags}
    return ModerationResults(
        model="omni-moderation-latest",
        results=[
            ModerationResult(
                categories={c: c in flags for c in scores},
                category_applied_input_types={c: ["text"] for c in scores},
                category_scores=scores,
                flagged=bool(flags),
                model="omni-moderation-latest",
            )
        ],
    )


def completed(
    input: ModerationOutcome | None = None,
    output: ModerationOutcome | None = None,
    *,
    moderation: bool = True,
    finish_reason: FinishReason = "stop",
) -> Completed:
    mod = Moderation(input=input or results(), output=output or results()) if moderation else None
    completion = ChatCompletion(
        id="chatcmpl-1",
        object="chat.completion",
        created=1,
        model="gpt-4o-mini",
        choices=[
            Choice(
                index=0,
                finish_reason=finish_reason,
                message=ChatCompletionMessage(role="assistant", content="hi there"),
            )
        ],
        moderation=mod,
        usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
    )
    return Completed(completion=completion, attempts=1, latency_ms=12.5)


ERROR = ModerationError(code="moderation_unavailable", message="try later")


def test_clean_on_both_sides_goes_to_output_with_the_job_carried_across() -> None:
    routed = route(JOB, SOURCE, completed())
    assert isinstance(routed, ToOutput)
    result = routed.result
    assert (result.id, result.content, result.finish_reason, result.metadata) == (
        "job-7",
        "hi there",
        "stop",
        JOB.metadata,
    )
    assert result.source == SOURCE
    assert result.moderation is not None


def test_api_failure_comes_first() -> None:
    failed = Failed(failure="http_status", message="server error", attempts=4, latency_ms=900.0, status=503)
    routed = route(JOB, SOURCE, failed)
    assert isinstance(routed, ToReview)
    assert routed.review.reason == ApiFailure(failure="http_status", message="server error", attempts=4, status=503)
    assert routed.review.completion is None
    assert routed.review.job == JOB


def test_missing_moderation_is_never_clean() -> None:
    reason = review_reason(completed(moderation=False))
    assert isinstance(reason, ModerationMissing)


def test_empty_results_count_as_missing_moderation() -> None:
    empty = ModerationResults(model="m", results=[])
    assert isinstance(review_reason(completed(output=empty)), ModerationMissing)


@pytest.mark.parametrize(
    ("input", "output", "side"),
    [(ERROR, None, "input"), (None, ERROR, "output"), (ERROR, ERROR, "both")],
)
def test_moderation_error_on_either_side(
    input: ModerationOutcome | None, output: ModerationOutcome | None, side: str
) -> None:
    reason = review_reason(completed(input, output))
    assert reason == ModerationFailed(side=side, code="moderation_unavailable", message="try later")  # type: ignore[arg-type]


def test_moderation_error_outranks_a_flag_on_the_other_side() -> None:
    reason = review_reason(completed(results({"violence": 0.95}), ERROR))
    assert isinstance(reason, ModerationFailed)


def test_flagged_output_names_side_categories_and_scores() -> None:
    reason = review_reason(completed(output=results({"violence": 0.91, "violence/graphic": 0.7})))
    assert isinstance(reason, Flagged)
    assert reason.side == "output"
    assert [(c.category, c.score, c.side, c.source) for c in reason.categories] == [
        ("violence", 0.91, "output", "provider"),
        ("violence/graphic", 0.7, "output", "provider"),
    ]


def test_flagged_on_both_sides() -> None:
    reason = review_reason(completed(results({"hate": 0.8}), results({"violence": 0.9})))
    assert isinstance(reason, Flagged)
    assert reason.side == "both"


def test_flagged_outranks_content_filter() -> None:
    reason = review_reason(completed(results({"hate": 0.8}), finish_reason="content_filter"))
    assert isinstance(reason, Flagged)


def test_content_filter_finish_reason() -> None:
    assert review_reason(completed(finish_reason="content_filter")) == ContentFiltered(choices=[0])


@pytest.mark.parametrize("finish_reason", ["stop", "length", "tool_calls", "function_call"])
def test_known_finish_reasons_keep_going_to_output(finish_reason: FinishReason) -> None:
    routed = route(JOB, SOURCE, completed(finish_reason=finish_reason))
    assert isinstance(routed, ToOutput) and routed.result.finish_reason == finish_reason


def test_a_finish_reason_the_api_added_goes_to_review_with_the_paid_answer() -> None:
    outcome = completed(finish_reason="safety_stop")
    routed = route(JOB, SOURCE, outcome)
    assert isinstance(routed, ToReview)
    review = routed.review
    assert review.reason == UnknownFinishReason(choices=[ChoiceFinish(index=0, finish_reason="safety_stop")])
    assert review.completion == outcome.completion, "a paid answer is never thrown away"
    assert (review.attempts, review.job) == (1, JOB)


def test_content_reasons_outrank_an_unknown_finish_reason() -> None:
    assert isinstance(review_reason(completed(results({"hate": 0.8}), finish_reason="safety_stop")), Flagged)
    assert isinstance(review_reason(completed(moderation=False, finish_reason="safety_stop")), ModerationMissing)


def with_choices(outcome: Completed, finish_reasons: list[str]) -> Completed:
    message = ChatCompletionMessage(role="assistant", content="hi")
    choices = [Choice(index=i, finish_reason=reason, message=message) for i, reason in enumerate(finish_reasons)]
    return msgspec.structs.replace(outcome, completion=msgspec.structs.replace(outcome.completion, choices=choices))


def test_each_choice_with_an_unknown_finish_reason_is_named_after_content_filter() -> None:
    outcome = completed(output=ModerationResults(model="m", results=results().results * 4))
    mixed = with_choices(outcome, ["stop", "safety_stop", "content_filter", "paused"])
    assert review_reason(mixed) == ContentFiltered(choices=[2])
    unknown = with_choices(outcome, ["stop", "safety_stop", "length", "paused"])
    assert review_reason(unknown) == UnknownFinishReason(
        choices=[ChoiceFinish(index=1, finish_reason="safety_stop"), ChoiceFinish(index=3, finish_reason="paused")]
    )


def test_fewer_output_results_than_choices_is_moderation_missing() -> None:
    one = results()
    outcome = with_choices(completed(output=one), ["stop", "stop"])
    reason = review_reason(outcome)
    assert reason == ModerationMissing(detail="output moderation has 1 result(s) for 2 choices")
    every_choice = ModerationResults(model="m", results=one.results * 2)
    assert review_reason(with_choices(completed(output=every_choice), ["stop", "stop"])) is None


def test_flagged_without_a_category_is_still_flagged() -> None:
    odd = ModerationResults(
        model="m",
        results=[
            ModerationResult(
                categories={"hate": False},
                category_applied_input_types={},
                category_scores={"hate": 0.4},
                flagged=True,
                model="m",
            )
        ],
    )
    reason = review_reason(completed(input=odd))
    assert isinstance(reason, Flagged)
    assert [(c.category, c.score) for c in reason.categories] == [(UNSPECIFIED, 0.4)]


def test_stricter_thresholds_flag_what_the_provider_did_not() -> None:
    outcome = completed(output=results(scores={"violence": 0.35, "hate": 0.1}))
    assert review_reason(outcome) is None
    assert review_reason(outcome, Thresholds(per_category={"hate": 0.5})) is None
    reason = review_reason(outcome, Thresholds(per_category={"violence": 0.3}))
    assert isinstance(reason, Flagged)
    assert [(c.category, c.source) for c in reason.categories] == [("violence", "threshold")]
    reason = review_reason(outcome, Thresholds(any_category=0.05))
    assert isinstance(reason, Flagged)
    assert {c.category for c in reason.categories} == {"violence", "hate"}


def test_a_completion_without_choices_is_a_failure_not_clean() -> None:
    outcome = completed()
    empty = Completed(
        completion=ChatCompletion(
            id="x", object="chat.completion", created=0, model="m", choices=[], moderation=outcome.completion.moderation
        ),
        attempts=1,
        latency_ms=1.0,
    )
    assert isinstance(review_reason(empty), ApiFailure)


def test_invalid_jobs_keep_a_readable_id_and_their_coordinates() -> None:
    raw = b'{"id": "job-9", "messages": []}'
    routed = route_invalid(raw, invalid_job(raw, JobDecodeError(error="empty messages"), SOURCE))
    assert routed.review.id == "job-9"
    assert routed.review.source == SOURCE
    garbage = b"\xff\x00"
    assert route_invalid(garbage, invalid_job(garbage, JobDecodeError(error="x"), SOURCE)).review.id is None
