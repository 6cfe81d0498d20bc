"""Moderation modes against the simulator: ``inline``, ``separate`` and ``auto`` all end in the inline shape."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager

import pytest

from pipeline.client import ChatClient, ClientConfig, ModerationMode
from pipeline.client.transport import AiohttpTransport, RawResponse, StreamingResponse, Timeouts
from pipeline.outcomes import Completed
from pipeline.secret import Secret
from pipeline.simulator import Simulator
from pipeline.simulator.classifier import MARKERS
from schemas.chat import Moderation, ModerationError, ModerationResults
from tests.integration.client_support import KEY, Sleeps, client_for, job

PROMPT = "Write a line about a heron."


def results(moderation: Moderation | None) -> tuple[ModerationResults, ModerationResults]:
    assert moderation is not None
    assert isinstance(moderation.input, ModerationResults) and isinstance(moderation.output, ModerationResults)
    return moderation.input, moderation.output


async def test_auto_falls_back_to_separate_moderation_when_the_answer_has_none(simulator: Simulator) -> None:
    async with client_for(simulator, moderation_mode="auto") as client:
        outcome = await client.complete(job(f"{PROMPT} [[sim:moderation_missing]]"))
    assert isinstance(outcome, Completed)
    moderation_input, moderation_output = results(outcome.completion.moderation)
    assert len(moderation_input.results) == 1 and len(moderation_output.results) == 1
    assert simulator.stats().by_endpoint == {"/v1/chat/completions": 1, "/v1/moderations": 2}


async def test_auto_keeps_inline_moderation_when_the_answer_has_it(simulator: Simulator) -> None:
    async with client_for(simulator, moderation_mode="auto") as client:
        outcome = await client.complete(job(PROMPT))
    assert isinstance(outcome, Completed)
    results(outcome.completion.moderation)
    assert simulator.stats().by_endpoint == {"/v1/chat/completions": 1}


async def test_inline_mode_leaves_a_missing_moderation_missing(simulator: Simulator) -> None:
    async with client_for(simulator, moderation_mode="inline") as client:
        outcome = await client.complete(job(f"{PROMPT} [[sim:moderation_missing]]"))
    assert isinstance(outcome, Completed) and outcome.completion.moderation is None
    assert "/v1/moderations" not in simulator.stats().by_endpoint


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_separate_mode_moderates_both_sides_through_the_endpoint(simulator: Simulator, stream: bool) -> None:
    async with client_for(simulator, moderation_mode="separate", stream=stream) as client:
        flagged = await client.complete(job(f"{PROMPT} [[sim:flag_output=hate]]", "flagged"))
        clean = await client.complete(job(PROMPT, "clean"))
    assert isinstance(flagged, Completed) and isinstance(clean, Completed)
    flagged_input, flagged_output = results(flagged.completion.moderation)
    assert not flagged_input.results[0].flagged
    assert flagged_output.results[0].flagged and flagged_output.results[0].categories["hate"]
    clean_input, clean_output = results(clean.completion.moderation)
    assert not clean_input.results[0].flagged and not clean_output.results[0].flagged
    assert simulator.stats().by_endpoint == {"/v1/chat/completions": 2, "/v1/moderations": 4}


async def test_separate_mode_agrees_with_inline_moderation(simulator: Simulator) -> None:
    """The prompt carries the classifier's violence marker word (``/moderations`` ignores ``flag_input``)."""
    prompt = f"{PROMPT} {MARKERS['violence']}"
    async with client_for(simulator) as inline, client_for(simulator, moderation_mode="separate") as separate:
        by_inline = await inline.complete(job(prompt, "inline"))
        by_separate = await separate.complete(job(prompt, "separate"))
    assert isinstance(by_inline, Completed) and isinstance(by_separate, Completed)
    inline_input, _ = results(by_inline.completion.moderation)
    separate_input, _ = results(by_separate.completion.moderation)
    assert inline_input.results[0].flagged and separate_input.results[0].flagged


class FailingModerations:
    """Real HTTP to the simulator, with ``x-sim-fault: 500`` on every ``/moderations`` call."""

    def __init__(self) -> None:
        self._inner = AiohttpTransport(pool_size=8)

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> RawResponse:
        if url.endswith("/moderations"):
            headers = {**headers, "x-sim-fault": "500"}
        return await self._inner.post(url, headers, body, timeouts)

    def stream(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> AbstractAsyncContextManager[StreamingResponse]:
        return self._inner.stream(url, headers, body, timeouts)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_failing_moderation_call_becomes_a_moderation_error_never_clean(simulator: Simulator) -> None:
    config = ClientConfig(api_key=Secret(KEY), base_url=simulator.base_url, moderation_mode="separate", max_attempts=2)
    async with ChatClient(config, transport=FailingModerations(), sleep=Sleeps()) as client:
        outcome = await client.complete(job(PROMPT))
    assert isinstance(outcome, Completed)
    moderation = outcome.completion.moderation
    assert moderation is not None
    assert isinstance(moderation.input, ModerationError) and isinstance(moderation.output, ModerationError)
    assert moderation.input.code == moderation.output.code == "moderation_http_500"
    assert outcome.attempts == 1  # the completion itself took one attempt
    assert simulator.stats().by_endpoint == {"/v1/chat/completions": 1, "/v1/moderations": 4}


class HeldModerations:
    """Real HTTP to the simulator, with every ``/moderations`` call held (``x-sim-fault: hang``) until its
    client gives up; remembers the task each of those calls runs in."""

    def __init__(self) -> None:
        self._inner = AiohttpTransport(pool_size=8)
        self.tasks: list[asyncio.Task[object]] = []
        self.both_held = asyncio.Event()

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> RawResponse:
        if url.endswith("/moderations"):
            task = asyncio.current_task()
            assert task is not None
            self.tasks.append(task)
            if len(self.tasks) == 2:
                self.both_held.set()
            headers = {**headers, "x-sim-fault": "hang"}
        return await self._inner.post(url, headers, body, timeouts)

    def stream(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> AbstractAsyncContextManager[StreamingResponse]:
        return self._inner.stream(url, headers, body, timeouts)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("mode", ["auto", "separate"])
async def test_a_cancelled_call_leaves_no_moderation_task_behind(simulator: Simulator, mode: ModerationMode) -> None:
    transport = HeldModerations()
    config = ClientConfig(api_key=Secret(KEY), base_url=simulator.base_url, moderation_mode=mode)
    async with ChatClient(config, transport=transport, sleep=Sleeps()) as client:
        call = asyncio.create_task(client.complete(job(f"{PROMPT} [[sim:moderation_missing]]")))
        await asyncio.wait_for(transport.both_held.wait(), timeout=30)  # the answer is in, both sides held
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert [task.done() for task in transport.tasks] == [True, True], "a moderation side outlived its call"
