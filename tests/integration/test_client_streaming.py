"""Streaming against the simulator: one ChatCompletion whichever side of the content moderation comes."""

from __future__ import annotations

import pytest

from pipeline.outcomes import Completed
from pipeline.routing import review_reason
from pipeline.simulator import Simulator
from schemas import Job, JobParams, UserMessage
from schemas.chat import ModerationResults
from schemas.topics import ModerationMissing, reason_kind
from tests.fixtures.simulator import MakeSimulator
from tests.integration.client_support import client_for, job

PROMPT = "Describe a quiet morning by the river."


async def both_ways(sim: Simulator, prompt: str) -> tuple[Completed, Completed]:
    async with client_for(sim, stream=False) as plain, client_for(sim, stream=True) as streaming:
        whole = await plain.complete(job(prompt, "whole"))
        streamed = await streaming.complete(job(prompt, "streamed"))
    assert isinstance(whole, Completed) and isinstance(streamed, Completed)
    return whole, streamed


def same_answer(whole: Completed, streamed: Completed) -> None:
    assert streamed.completion.choices == whole.completion.choices
    assert streamed.completion.usage == whole.completion.usage
    assert streamed.completion.moderation == whole.completion.moderation


async def test_a_stream_assembles_into_the_same_completion_as_the_json_answer(simulator: Simulator) -> None:
    whole, streamed = await both_ways(simulator, PROMPT)
    same_answer(whole, streamed)
    assert streamed.completion.object == "chat.completion"
    assert isinstance(streamed.completion.moderation and streamed.completion.moderation.output, ModerationResults)


@pytest.mark.parametrize("order", ["after_content", "before_content"])
async def test_moderation_is_captured_before_or_after_the_content(make_simulator: MakeSimulator, order: str) -> None:
    sim = await make_simulator(stream_moderation=order)
    whole, streamed = await both_ways(sim, PROMPT)
    same_answer(whole, streamed)
    assert streamed.completion.moderation is not None


async def test_the_moderation_before_content_fault_is_captured_too(simulator: Simulator) -> None:
    whole, streamed = await both_ways(simulator, f"{PROMPT} [[sim:moderation_before_content]]")
    same_answer(whole, streamed)


async def test_flagged_output_arrives_flagged_in_a_stream(simulator: Simulator) -> None:
    whole, streamed = await both_ways(simulator, f"{PROMPT} [[sim:flag_output=violence]]")
    same_answer(whole, streamed)
    moderation = streamed.completion.moderation
    assert moderation is not None and isinstance(moderation.output, ModerationResults)
    assert moderation.output.results[0].flagged


async def test_several_choices_stream_interleaved(simulator: Simulator) -> None:
    async with client_for(simulator, stream=True) as client:
        outcome = await client.complete(
            Job(id="n3", messages=[UserMessage(content=PROMPT)], params=JobParams(n=3, seed=4))
        )
    assert isinstance(outcome, Completed)
    assert [choice.index for choice in outcome.completion.choices] == [0, 1, 2]
    assert all(choice.message.content for choice in outcome.completion.choices)


@pytest.mark.parametrize(
    ("directives", "kind"),
    [
        ("flag_output, moderation_again_clean", "flagged"),
        ("moderation_error_output, moderation_again_clean", "moderation_error"),
        ("moderation_again_error", "moderation_error"),
        ("moderation_before_content, flag_input, moderation_again_clean", "flagged"),
    ],
)
async def test_a_second_moderation_chunk_never_makes_a_streamed_job_cleaner(
    simulator: Simulator, directives: str, kind: str
) -> None:
    async with client_for(simulator, stream=True) as client:
        outcome = await client.complete(job(f"{PROMPT} [[sim: {directives}]]"))
    assert isinstance(outcome, Completed) and outcome.attempts == 1, "neither retried nor thrown away"
    reason = review_reason(outcome)
    assert reason is not None and reason_kind(reason) == kind


@pytest.mark.parametrize("stream", [False, True])
async def test_fewer_output_moderation_results_than_choices_is_moderation_missing(
    simulator: Simulator, stream: bool
) -> None:
    prompt = f"{PROMPT} [[sim: moderation_results_short]]"
    async with client_for(simulator, stream=stream) as client:
        outcome = await client.complete(Job(id="n3", messages=[UserMessage(content=prompt)], params=JobParams(n=3)))
    assert isinstance(outcome, Completed) and len(outcome.completion.choices) == 3
    assert isinstance(review_reason(outcome), ModerationMissing)
