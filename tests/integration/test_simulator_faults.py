"""Each fault appears as configured: per request (header, metadata, prompt) and per server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
import pytest

from pipeline.simulator import Simulator
from pipeline.simulator.directives import FaultRule
from pipeline.simulator.encoding import UNKNOWN_MODERATION_TYPE
from schemas.chat import ChatCompletion, ChatCompletionChunk, ErrorBody, ModerationError

AUTH = {"Authorization": "Bearer sk-test"}
MODERATION = {"model": "omni-moderation-latest"}


def chat_body(content: str = "Tell me about rivers.", **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        "moderation": MODERATION,
        **extra,
    }


async def post(
    sim: Simulator, body: dict[str, Any], headers: dict[str, str] | None = None, client_timeout: float = 10
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=client_timeout) as client:
        return await client.post("/chat/completions", json=body, headers={**AUTH, **(headers or {})})


def error_of(response: httpx.Response) -> Any:
    return msgspec.json.decode(response.content, type=ErrorBody).error


@pytest.mark.parametrize(
    ("fault", "status", "error_type", "code"),
    [
        ("429", 429, "requests", "rate_limit_exceeded"),
        ("insufficient_quota", 429, "insufficient_quota", "insufficient_quota"),
        ("500", 500, "server_error", None),
        ("502", 502, "cf_bad_gateway", 502),
        ("503", 503, "server_error", None),
        ("context_length_exceeded", 400, "invalid_request_error", "context_length_exceeded"),
    ],
)
async def test_error_faults_answer_with_the_apis_error_body(
    simulator: Simulator, fault: str, status: int, error_type: str, code: object
) -> None:
    response = await post(simulator, chat_body(), {"x-sim-fault": fault})
    assert response.status_code == status
    error = error_of(response)
    assert (error.type, error.code) == (error_type, code)
    assert response.headers["x-request-id"].startswith("req_")
    assert simulator.stats().by_fault == {fault: 1}


async def test_an_injected_429_says_when_to_retry(make_simulator: Any) -> None:
    sim = await make_simulator(fault_retry_after_ms=250)
    response = await post(sim, chat_body(), {"x-sim-fault": "429"})
    assert response.headers["retry-after-ms"] == "250"
    assert response.headers["retry-after"] == "1"
    quota = await post(sim, chat_body(), {"x-sim-fault": "insufficient_quota"})
    assert "retry-after" not in quota.headers


async def test_times_fails_the_first_attempts_of_a_job_then_succeeds(simulator: Simulator) -> None:
    headers = {"x-sim-fault": "503*2", "X-Client-Request-Id": "job-1"}
    statuses = [(await post(simulator, chat_body(), headers)).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    other_job = await post(simulator, chat_body(), {**headers, "X-Client-Request-Id": "job-2"})
    assert other_job.status_code == 503


async def test_prompt_directives_key_attempts_by_metadata_job_id(simulator: Simulator) -> None:
    body = chat_body("Summarise [[sim: 500*1]] this", metadata={"job_id": "job-7"})
    assert [(await post(simulator, body)).status_code for _ in range(2)] == [500, 200]
    assert simulator.stats().attempts_by_job == {"job-7": 2}


async def test_without_a_job_id_attempts_are_keyed_by_the_body(simulator: Simulator) -> None:
    body = chat_body("[[sim: 502*1]] one")
    assert [(await post(simulator, body)).status_code for _ in range(2)] == [502, 200]
    assert (await post(simulator, chat_body("[[sim: 502*1]] two"))).status_code == 502


async def test_metadata_directives_apply(simulator: Simulator) -> None:
    response = await post(simulator, chat_body(metadata={"sim_fault": "moderation_missing"}))
    assert response.status_code == 200
    assert msgspec.json.decode(response.content, type=ChatCompletion).moderation is None


async def test_a_bad_directive_is_a_400_not_silently_ignored(simulator: Simulator) -> None:
    for response in (
        await post(simulator, chat_body(), {"x-sim-fault": "550"}),
        await post(simulator, chat_body("[[sim: flag_output=rude]]")),
    ):
        assert response.status_code == 400
        assert error_of(response).code == "sim_invalid_directive"


@pytest.mark.parametrize("side", ["input", "output"])
async def test_moderation_error_on_either_side(simulator: Simulator, side: str) -> None:
    response = await post(simulator, chat_body(f"[[sim: moderation_error_{side}]]"))
    moderation = msgspec.json.decode(response.content, type=ChatCompletion).moderation
    assert moderation is not None
    assert isinstance(getattr(moderation, side), ModerationError)
    other = "output" if side == "input" else "input"
    assert not isinstance(getattr(moderation, other), ModerationError)


async def test_an_input_moderation_error_cannot_block(simulator: Simulator) -> None:
    body = chat_body("you idiot [[sim: moderation_error_input]]")
    body["moderation"] = {**MODERATION, "policy": {"input": {"mode": "block"}}}
    completion = msgspec.json.decode((await post(simulator, body)).content, type=ChatCompletion)
    assert completion.choices[0].finish_reason == "stop"


async def test_unknown_moderation_type_fails_schema_decoding_at_the_output_tag(simulator: Simulator) -> None:
    for stream in (False, True):
        response = await post(simulator, chat_body("[[sim: moderation_unknown_type]]", stream=stream))
        assert response.status_code == 200
        raw = response.content if not stream else _moderation_event(response.text)
        assert msgspec.json.decode(raw)["moderation"]["output"]["type"] == UNKNOWN_MODERATION_TYPE
        with pytest.raises(msgspec.ValidationError, match=r"\$\.moderation\.output"):
            msgspec.json.decode(raw, type=ChatCompletion if not stream else ChatCompletionChunk)


def _moderation_event(text: str) -> bytes:
    return next(line[6:].encode() for line in text.split("\n") if line.startswith("data: ") and '"moderation"' in line)


async def test_moderation_before_content_moves_the_moderation_chunk_first(simulator: Simulator) -> None:
    response = await post(simulator, chat_body("[[sim: moderation_before_content]]", stream=True))
    first = next(line for line in response.text.split("\n") if line.startswith("data: "))
    assert msgspec.json.decode(first[6:], type=ChatCompletionChunk).moderation is not None


async def test_malformed_json_is_a_200_that_does_not_parse(simulator: Simulator) -> None:
    response = await post(simulator, chat_body(), {"x-sim-fault": "malformed_json"})
    assert response.status_code == 200
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(response.content)


async def test_malformed_json_in_a_stream_breaks_one_event(simulator: Simulator) -> None:
    response = await post(simulator, chat_body(stream=True), {"x-sim-fault": "malformed_json"})
    events = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    broken = [event for event in events if event != "[DONE]" and not _decodes(event)]
    assert len(broken) == 1
    assert events[-1] == "[DONE]"


def _decodes(event: str) -> bool:
    try:
        msgspec.json.decode(event, type=ChatCompletionChunk)
    except msgspec.DecodeError:
        return False
    return True


@pytest.mark.parametrize("stream", [False, True])
async def test_truncated_bodies_end_early(simulator: Simulator, stream: bool) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await post(simulator, chat_body(stream=stream), {"x-sim-fault": "truncated"})
    assert simulator.stats().by_status == {200: 1}
    assert simulator.stats().successes_by_job == {}


async def test_reset_drops_the_connection(simulator: Simulator) -> None:
    with pytest.raises(httpx.TransportError):
        await post(simulator, chat_body(), {"x-sim-fault": "reset"})
    stats = simulator.stats()
    assert stats.by_fault == {"reset": 1} and stats.by_status == {}


async def test_hang_never_answers(simulator: Simulator) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await post(simulator, chat_body(), {"x-sim-fault": "timeout"}, client_timeout=0.3)
    assert simulator.stats().by_fault == {"hang": 1}


async def test_hang_gives_up_after_hang_s(make_simulator: Any) -> None:
    sim = await make_simulator(hang_s=0.05)
    with pytest.raises(httpx.RemoteProtocolError):
        await post(sim, chat_body(), {"x-sim-fault": "hang"})


async def test_stream_error_sends_an_error_event_mid_stream(simulator: Simulator) -> None:
    response = await post(simulator, chat_body(stream=True), {"x-sim-fault": "stream_error"})
    events = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert "[DONE]" not in events
    error = msgspec.json.decode(events[-1], type=ErrorBody).error
    assert error.type == "server_error"
    assert any(_decodes(event) and '"content"' in event for event in events[:-1])
    non_stream = await post(simulator, chat_body(), {"x-sim-fault": "stream_error"})
    assert non_stream.status_code == 500


async def test_server_fault_rates_are_reproducible(make_simulator: Any) -> None:
    async def statuses(seed: int) -> list[int]:
        sim = await make_simulator(faults=(FaultRule(fault="500", rate=0.5),), random_seed=seed)
        async with httpx.AsyncClient(base_url=sim.base_url, headers=AUTH) as client:
            return [(await client.post("/chat/completions", json=chat_body())).status_code for _ in range(40)]

    first = await statuses(5)
    assert first == await statuses(5)
    assert 8 < first.count(500) < 32 and first.count(200) == 40 - first.count(500)


async def test_server_times_rule_fails_every_jobs_first_attempt(make_simulator: Any) -> None:
    sim = await make_simulator(faults=(FaultRule(fault="503", times=1),))
    for job in ("a", "b"):
        headers = {"X-Client-Request-Id": job}
        assert [(await post(sim, chat_body(), headers)).status_code for _ in range(2)] == [503, 200]


async def test_reset_stats_restarts_the_attempt_count(simulator: Simulator) -> None:
    headers = {"x-sim-fault": "500*1", "X-Client-Request-Id": "job"}
    assert (await post(simulator, chat_body(), headers)).status_code == 500
    simulator.reset_stats()
    assert (await post(simulator, chat_body(), headers)).status_code == 500


async def test_latency_directive_delays_the_answer(simulator: Simulator) -> None:
    started = time.perf_counter()
    response = await post(simulator, chat_body("[[sim: latency=150]]"))
    assert response.status_code == 200
    assert time.perf_counter() - started >= 0.15  # a lower bound only: sleeping never ends early


async def test_streaming_delays_apply_per_token(make_simulator: Any) -> None:
    sim = await make_simulator(ttft_ms=50, per_token_ms=5)
    started = time.perf_counter()
    response = await post(sim, chat_body(stream=True, max_completion_tokens=10))
    content_chunks = response.text.count('"content":"') - 1  # the role chunk carries content ""
    assert content_chunks == 10
    assert time.perf_counter() - started >= 0.05 + 9 * 0.005


async def test_a_client_that_gives_up_frees_the_server(simulator: Simulator) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await post(simulator, chat_body(), {"x-sim-fault": "hang"}, client_timeout=0.2)
    for _ in range(100):
        if simulator.stats().in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert simulator.stats().in_flight == 0
