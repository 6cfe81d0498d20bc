"""Key hygiene: the API key appears in no log line, outcome, exception or repr, whatever goes wrong."""

from __future__ import annotations

import logging

import msgspec
import pytest

from pipeline.client import ChatClient, ClientConfig
from pipeline.outcomes import Failed
from pipeline.secret import Secret
from pipeline.simulator import Simulator
from tests.fixtures.simulator import MakeSimulator
from tests.integration.client_support import KEY, Sleeps, client_for, job

DIRECTIVES = [
    "",
    "500*1",
    "429*1",
    "reset*1",
    "hang*1",
    "truncated*1",
    "stream_error*1",
    "malformed_json",
    "insufficient_quota",
    "context_length_exceeded",
    "moderation_missing",
    "moderation_unknown_type",
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("mode", ["inline", "auto", "separate"])
async def test_the_key_is_in_no_log_or_outcome(
    simulator: Simulator, caplog: pytest.LogCaptureFixture, stream: bool, mode: str
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's included
    async with client_for(simulator, stream=stream, moderation_mode=mode) as client:
        outcomes = [
            await client.complete(job(f"Hello [[sim:{directive}]]" if directive else "Hello", f"job-{index}"))
            for index, directive in enumerate(DIRECTIVES)
        ]
        seen = [repr(client), repr(client.config), str(client.config)]
    seen += [msgspec.json.encode(outcome).decode() for outcome in outcomes]
    seen += [record.getMessage() + repr(record.__dict__) for record in caplog.records]
    assert caplog.records  # the client did log at DEBUG: the scan had something to scan
    assert all(KEY not in text for text in seen)


async def test_a_rejected_key_is_not_repeated(make_simulator: MakeSimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sim = await make_simulator(api_key="sk-the-right-one")
    async with client_for(sim) as client:
        outcome = await client.complete(job("Hello"))
    assert isinstance(outcome, Failed) and outcome.status == 401
    assert KEY not in outcome.message
    assert all(KEY not in record.getMessage() + repr(record.__dict__) for record in caplog.records)


async def test_a_refused_connection_names_no_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = ClientConfig(api_key=Secret(KEY), base_url="http://127.0.0.1:9/v1", max_attempts=2)
    async with ChatClient(config, sleep=Sleeps()) as client:
        outcome = await client.complete(job("Hello"))
    assert isinstance(outcome, Failed)
    assert (outcome.failure, outcome.attempts) == ("transport", 2)
    assert KEY not in outcome.message
    assert all(KEY not in record.getMessage() + repr(record.__dict__) for record in caplog.records)
