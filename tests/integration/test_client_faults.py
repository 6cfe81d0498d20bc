"""Every fault the simulator injects ends in the right outcome after the right number of attempts.

Faults are set per job with ``[[sim:…]]`` in the prompt (``FAULT*N``: the first N attempts of the job). The
attempt count is checked on both sides: the outcome's, and the simulator's count per ``X-Client-Request-Id``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline.outcomes import Completed, Failed, Outcome
from pipeline.simulator import Simulator
from schemas.chat import ModerationError, ModerationResults
from schemas.topics import ApiFailureKind
from tests.fixtures.simulator import MakeSimulator
from tests.integration.client_support import Recorder, client_for, job


@dataclass(frozen=True)
class Expect:
    attempts: int
    failure: ApiFailureKind | None = None  # None: completed
    status: int | None = None


RECOVERED = {
    "": Expect(1),
    "500*2": Expect(3),
    "502*1": Expect(2),
    "503*1": Expect(2),
    "429*1": Expect(2),
    "reset*1": Expect(2),
    "hang*1": Expect(2),
    "truncated*1": Expect(2),
    "stream_error*1": Expect(2),
}
GAVE_UP = {
    "500": Expect(3, "http_status", 500),
    "503": Expect(3, "http_status", 503),
    "reset": Expect(3, "transport"),
    "hang": Expect(3, "timeout"),
    "insufficient_quota": Expect(1, "http_status", 429),
    "context_length_exceeded": Expect(1, "http_status", 400),
    "malformed_json": Expect(1, "decode"),
    "moderation_unknown_type": Expect(1, "decode"),
}
GAVE_UP_STREAMING = {
    "truncated": Expect(3, "stream"),
    "stream_error": Expect(3, "stream"),
}


async def complete(sim: Simulator, directive: str, *, stream: bool) -> Outcome:
    async with client_for(sim, stream=stream) as client:
        prompt = f"Tell me about herons. [[sim:{directive}]]" if directive else "Tell me about herons."
        return await client.complete(job(prompt, job_id=f"job-{directive or 'clean'}-{stream}"))


def check(sim: Simulator, outcome: Outcome, expect: Expect, job_id: str) -> None:
    assert outcome.attempts == expect.attempts
    assert sim.stats().attempts_by_job[job_id] == expect.attempts
    if expect.failure is None:
        assert isinstance(outcome, Completed), outcome
        assert sim.stats().successes_by_job == {job_id: 1}
    else:
        assert isinstance(outcome, Failed), outcome
        assert (outcome.failure, outcome.status) == (expect.failure, expect.status)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("directive", list(RECOVERED))
async def test_transient_faults_are_retried_until_the_job_completes(
    simulator: Simulator, directive: str, stream: bool
) -> None:
    outcome = await complete(simulator, directive, stream=stream)
    check(simulator, outcome, RECOVERED[directive], f"job-{directive or 'clean'}-{stream}")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("directive", list(GAVE_UP))
async def test_lasting_and_permanent_faults_end_in_the_right_failure(
    simulator: Simulator, directive: str, stream: bool
) -> None:
    outcome = await complete(simulator, directive, stream=stream)
    check(simulator, outcome, GAVE_UP[directive], f"job-{directive}-{stream}")


@pytest.mark.parametrize("directive", list(GAVE_UP_STREAMING))
async def test_lasting_stream_faults_end_in_a_stream_failure(simulator: Simulator, directive: str) -> None:
    outcome = await complete(simulator, directive, stream=True)
    check(simulator, outcome, GAVE_UP_STREAMING[directive], f"job-{directive}-True")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_moderation_shape_faults_complete_with_what_the_provider_said(simulator: Simulator, stream: bool) -> None:
    async with client_for(simulator, stream=stream) as client:
        missing = await client.complete(job("Hi [[sim:moderation_missing]]", "missing"))
        input_error = await client.complete(job("Hi [[sim:moderation_error_input]]", "input-error"))
        output_error = await client.complete(job("Hi [[sim:moderation_error_output]]", "output-error"))
    assert isinstance(missing, Completed) and missing.completion.moderation is None  # routing: moderation_missing
    assert isinstance(input_error, Completed) and input_error.completion.moderation is not None
    assert isinstance(input_error.completion.moderation.input, ModerationError)
    assert isinstance(input_error.completion.moderation.output, ModerationResults)
    assert isinstance(output_error, Completed) and output_error.completion.moderation is not None
    assert isinstance(output_error.completion.moderation.output, ModerationError)


async def test_a_wrong_key_is_not_retried(make_simulator: MakeSimulator) -> None:
    sim = await make_simulator(api_key="sk-the-right-one")
    async with client_for(sim) as client:
        outcome = await client.complete(job("Hi"))
    assert isinstance(outcome, Failed)
    assert (outcome.status, outcome.code, outcome.attempts) == (401, "invalid_api_key", 1)


async def test_the_observer_hears_every_attempt_and_retry(simulator: Simulator) -> None:
    recorder = Recorder()
    async with client_for(simulator, observer=recorder) as client:
        outcome = await client.complete(job("Hi [[sim:503*1, 429*2]]"))
    assert isinstance(outcome, Completed) and outcome.attempts == 3
    assert recorder.statuses == [503, 429, 200]
    assert recorder.retries == ["http_503", "http_429"]
    assert recorder.rate_limited == 1
    assert [model for model, _ in recorder.usage] == ["gpt-4o-mini"]


async def test_a_deadline_ends_the_job_as_a_deadline_failure(simulator: Simulator) -> None:
    async with client_for(simulator, read_timeout_s=30.0, job_deadline_s=0.2) as client:
        outcome = await client.complete(job("Hi [[sim:hang]]"))
    assert isinstance(outcome, Failed)
    assert (outcome.failure, outcome.attempts) == ("deadline", 1)
