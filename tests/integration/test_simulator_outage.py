"""A provider-wide outage over real HTTP: every ``/v1`` request refused alike, for N answers or S seconds."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import openai
import pytest
from openai import AsyncOpenAI

from pipeline.simulator import Simulator
from pipeline.simulator.outage import OutageState
from schemas.chat import ErrorBody
from tests.fixtures.simulator import MakeSimulator

AUTH = {"Authorization": "Bearer sk-test"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def control(sim: Simulator, method: str, body: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.url) as client:
        return await client.request(method, "/sim/outage", json=body)


async def chat(sim: Simulator) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        return await client.post("/chat/completions", json=CHAT, headers=AUTH)


@pytest.mark.parametrize(
    ("error", "status", "code", "message"),
    [
        ("invalid_api_key", 401, "invalid_api_key", "Incorrect API key provided."),
        ("model_access_denied", 403, "model_not_found", "does not have access to model `gpt-4o-mini`"),
        ("model_not_found", 404, "model_not_found", "The model `gpt-4o-mini` does not exist"),
        ("insufficient_quota", 429, "insufficient_quota", "You exceeded your current quota"),
    ],
)
async def test_every_endpoint_is_refused_for_n_requests_then_the_provider_recovers(
    simulator: Simulator, error: str, status: int, code: str, message: str
) -> None:
    started = await control(simulator, "POST", {"error": error, "requests": 3})
    assert msgspec.json.decode(started.content, type=OutageState).remaining_requests == 3
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=AUTH) as client:
        refused = [
            await client.post("/chat/completions", json=CHAT),
            await client.post("/moderations", json={"input": "hi"}),
            await client.get("/models"),
        ]
    assert [response.status_code for response in refused] == [status] * 3
    detail = msgspec.json.decode(refused[0].content, type=ErrorBody).error
    assert detail.code == code and message in detail.message
    assert (await chat(simulator)).status_code == 200
    stats = simulator.stats()
    assert stats.by_fault == {f"outage_{error}": 3} and stats.by_status == {status: 3, 200: 1}


async def test_an_outage_of_seconds_ends_on_the_servers_clock(make_simulator: MakeSimulator) -> None:
    clock = FakeClock()
    sim = await make_simulator(clock=clock)
    await control(sim, "POST", {"error": "insufficient_quota", "seconds": 30})
    assert [(await chat(sim)).status_code for _ in range(3)] == [429] * 3
    clock.now += 30
    assert (await chat(sim)).status_code == 200
    state = msgspec.json.decode((await control(sim, "GET")).content, type=OutageState)
    assert state == OutageState(error=None, remaining_requests=None, remaining_s=None, refused=3)


async def test_an_open_outage_lasts_until_it_is_ended(simulator: Simulator) -> None:
    await control(simulator, "POST", {"error": "invalid_api_key"})
    assert [(await chat(simulator)).status_code for _ in range(5)] == [401] * 5
    ended = await control(simulator, "DELETE")
    assert msgspec.json.decode(ended.content, type=OutageState).error is None
    assert (await chat(simulator)).status_code == 200


@pytest.mark.parametrize("body", [{"error": "meteor_strike"}, {"error": "invalid_api_key", "requests": 0}, {}])
async def test_a_bad_outage_is_refused_and_changes_nothing(simulator: Simulator, body: dict[str, Any]) -> None:
    assert (await control(simulator, "POST", body)).status_code == 400
    assert (await chat(simulator)).status_code == 200


@pytest.mark.parametrize(
    ("error", "raised", "code"),
    [
        ("invalid_api_key", openai.AuthenticationError, "invalid_api_key"),
        ("model_access_denied", openai.PermissionDeniedError, "model_not_found"),
        ("model_not_found", openai.NotFoundError, "model_not_found"),
        ("insufficient_quota", openai.RateLimitError, "insufficient_quota"),
    ],
)
async def test_the_official_sdk_reads_each_outage_as_the_apis_own_error(
    simulator: Simulator, error: str, raised: type[openai.APIStatusError], code: str
) -> None:
    await control(simulator, "POST", {"error": error, "requests": 1})
    async with AsyncOpenAI(base_url=simulator.base_url, api_key="sk-test", max_retries=0) as sdk:
        with pytest.raises(raised) as caught:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
        assert caught.value.code == code
        answer = await sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content
