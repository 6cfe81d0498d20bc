"""Every fault the simulator injects ends in the right outcome after the right number of attempts.

Faults are set per job with ``[[sim:…]]`` in the prompt (``FAULT*N``: the first N attempts of the job). The
attempt count is checked on both sides: the outcome's, and the simulator's count per ``X-Client-Request-Id``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from pipeline.outcomes import Completed, Failed, Outcome
from pipeline.simulator import Simulator
from pipeline.simulator.outage import Outage
from schemas.chat import ModerationError, ModerationResults
from schemas.topics import ApiFailureKind
from tests.integration.client_support import Recorder, client_for, job
from tests.unit.worker.fakes import until


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


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        ("invalid_api_key", "unauthorized"),
        ("model_access_denied", "forbidden"),
        ("model_not_found", "model_not_found"),
        ("insufficient_quota", "insufficient_quota"),
    ],
)
async def test_a_provider_wide_failure_holds_the_job_instead_of_failing_it(
    simulator: Simulator, error: str, cause: str
) -> None:
    """A bad key, a project without access, the default model missing, no quota: not the job's fault. The call
    is held (the breaker opens, then probes) and the job completes once the provider answers again."""
    recorder = Recorder()
    simulator.app.outage.start(Outage(error=error, requests=3))  # type: ignore[arg-type]
    async with client_for(simulator, observer=recorder) as client:
        outcome = await client.complete(job("Hi", job_id=f"held-{error}"))
        assert client.provider_available
    assert isinstance(outcome, Completed), outcome
    assert outcome.attempts == 1, "held retries are not the job's attempts"
    assert recorder.blocked[0] == cause and recorder.blocked[-1] is None, "opened for the cause, then closed"
    assert simulator.stats().by_fault.get(f"outage_{error}") == 3


async def test_a_refusal_that_repeats_after_others_got_through_is_the_jobs_own(simulator: Simulator) -> None:
    """One job refused for no quota while the provider answers a fresh call: after the breaker closed, the same
    refusal again is that job's failure (review), not a reason to hold everything for ever."""
    recorder = Recorder()
    async with client_for(simulator, observer=recorder) as client:
        refused = asyncio.create_task(client.complete(job("Hi [[sim: insufficient_quota]]", job_id="refused")))
        await until(lambda: not client.provider_available, "the breaker opened", within_s=5)
        fresh = await asyncio.wait_for(client.complete(job("Hi", job_id="fresh")), 5)
        outcome = await asyncio.wait_for(refused, 5)
    assert isinstance(fresh, Completed), fresh
    assert isinstance(outcome, Failed) and outcome.code == "insufficient_quota", outcome
    assert simulator.stats().attempts_by_job["refused"] == 2, "refused, held, refused again after the probe"
    assert recorder.blocked == ["insufficient_quota", None], "opened once, closed by the fresh call"


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
