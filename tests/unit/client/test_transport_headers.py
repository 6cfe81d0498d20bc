"""Byte-exact header handling, driven through ``httpx.MockTransport`` under the real client.

The client runs unchanged (retries, pacing, decoding); only the wire is scripted. Sleeps are recorded
instead of slept, and the wall clock is fixed, so HTTP-date arithmetic is exact.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from pipeline.backoff import Backoff
from pipeline.client import ChatClient, ClientConfig
from pipeline.client.transport import HttpxTransport
from pipeline.outcomes import Completed, Failed, Outcome
from pipeline.secret import Secret
from schemas import Job, JobParams, UserMessage

KEY = "sk-test-0123456789abcdef"
WALL_CLOCK = 1_795_000_000.0  # Wed, 18 Nov 2026 11:06:40 GMT
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi."}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}
JOB = Job(id="job-1", messages=[UserMessage(content="Hello")])

Handler = Callable[[httpx.Request], httpx.Response]


def ok(headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(200, json=COMPLETION, headers=headers)


def error(status: int, message: str = "nope", headers: dict[str, str] | None = None, **detail: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, **detail}}, headers=headers)


def scripted(*responses: httpx.Response) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering with ``responses`` in order, and the requests it saw."""
    seen: list[httpx.Request] = []
    remaining: Iterator[httpx.Response] = iter(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(remaining)

    return handle, seen


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client_for(handler: Handler, sleeps: Sleeps, **config: object) -> ChatClient:
    settings: dict[str, object] = {"api_key": Secret(KEY), "base_url": "https://api.test/v1", **config}
    client_config = ClientConfig(**settings)  # type: ignore[arg-type]
    return ChatClient(
        client_config,
        probe_backoff=Backoff(0.01, 0.01, jitter=0.0),
        transport=HttpxTransport(httpx.MockTransport(handler), max_response_bytes=client_config.max_response_bytes),
        sleep=sleeps,
        wall_clock=lambda: WALL_CLOCK,
    )


async def run(handler: Handler, job: Job = JOB, **config: object) -> tuple[Outcome, Sleeps]:
    sleeps = Sleeps()
    async with client_for(handler, sleeps, **config) as client:
        return await client.complete(job), sleeps


async def test_the_request_carries_credentials_correlation_and_moderation() -> None:
    handler, seen = scripted(ok())
    job = Job(
        id="job-7",
        messages=[UserMessage(content="Hello")],
        model="gpt-4.1",
        moderation_model="omni-moderation-2024-09-26",
        params=JobParams(temperature=0.2, max_completion_tokens=64),
    )
    outcome, _ = await run(
        handler, job, organization="org-1", project="proj-1", moderation_policy={"input": "block", "output": "score"}
    )
    assert isinstance(outcome, Completed)
    (request,) = seen
    assert request.url == "https://api.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["x-client-request-id"] == "job-7"
    assert request.headers["openai-organization"] == "org-1"
    assert request.headers["openai-project"] == "proj-1"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "Hello"}],
        "moderation": {
            "model": "omni-moderation-2024-09-26",
            "policy": {"input": {"mode": "block"}, "output": {"mode": "score"}},
        },
        "temperature": 0.2,
        "max_completion_tokens": 64,
    }


async def test_retry_after_as_an_http_date() -> None:
    handler, seen = scripted(error(503, headers={"Retry-After": "Wed, 18 Nov 2026 11:06:45 GMT"}), ok())
    outcome, sleeps = await run(handler)
    assert isinstance(outcome, Completed) and outcome.attempts == 2
    assert len(seen) == 2
    assert 5.0 <= sleeps[0] <= 5.5
    assert seen[1].headers["x-client-request-id"] == "job-1"  # a retry is the same job


async def test_retry_after_ms_wins_over_retry_after() -> None:
    handler, _ = scripted(error(429, headers={"retry-after-ms": "1500", "retry-after": "30"}), ok())
    outcome, sleeps = await run(handler)
    assert isinstance(outcome, Completed)
    assert 1.5 <= sleeps[0] <= 1.65


async def test_a_429_without_retry_after_waits_no_longer_than_the_go_duration_reset() -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "12ms"}
    handler, _ = scripted(error(429, headers=headers), ok())
    outcome, sleeps = await run(handler)
    assert isinstance(outcome, Completed)
    assert sleeps[0] == pytest.approx(0.012)


@pytest.mark.parametrize(("reset", "longest"), [("1.5s", 0.5), ("6m0s", 0.5), ("1h2m3.5s", 0.5), ("250ms", 0.25)])
async def test_token_reset_durations_bound_the_backoff(reset: str, longest: float) -> None:
    headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": reset}
    handler, _ = scripted(error(429, headers=headers), ok())
    _, sleeps = await run(handler)
    assert 0 < sleeps[0] <= longest


async def test_a_retry_after_beyond_the_cap_gives_up_at_once() -> None:
    handler, seen = scripted(error(429, headers={"retry-after": "120"}, type="requests"))
    outcome, sleeps = await run(handler, retry_after_cap_s=60.0)
    assert isinstance(outcome, Failed)
    assert (outcome.failure, outcome.status, outcome.attempts) == ("http_status", 429, 1)
    assert len(seen) == 1 and sleeps == []


async def test_x_should_retry_false_is_obeyed() -> None:
    handler, seen = scripted(error(500, headers={"x-should-retry": "false"}))
    outcome, _ = await run(handler)
    assert isinstance(outcome, Failed) and outcome.attempts == 1
    assert len(seen) == 1


async def test_x_should_retry_true_is_obeyed() -> None:
    handler, seen = scripted(error(418, headers={"x-should-retry": "true"}), ok())
    outcome, _ = await run(handler)
    assert isinstance(outcome, Completed) and outcome.attempts == 2
    assert len(seen) == 2


async def test_insufficient_quota_is_not_retried_as_a_rate_but_holds_the_call_until_the_provider_answers() -> None:
    handler, seen = scripted(error(429, "quota", type="insufficient_quota", code="insufficient_quota"), ok())
    outcome, sleeps = await run(handler)
    assert isinstance(outcome, Completed) and outcome.attempts == 1
    assert len(seen) == 2 and sleeps == [], "no retry backoff: the probe went when the breaker let it"


async def test_attempts_are_bounded_by_max_attempts() -> None:
    handler, seen = scripted(*[error(500, type="server_error")] * 3)
    outcome, sleeps = await run(handler, max_attempts=3)
    assert isinstance(outcome, Failed)
    assert (outcome.attempts, outcome.status, outcome.error_type) == (3, 500, "server_error")
    assert len(seen) == 3 and len(sleeps) == 2


async def test_rate_limit_headers_teach_the_limits() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29989",
        "x-ratelimit-reset-tokens": "22ms",
    }
    handler, _ = scripted(ok(headers))
    sleeps = Sleeps()
    async with client_for(handler, sleeps) as client:
        await client.complete(JOB)
        lanes = client.rate_limiter.limits(client.config.model).lanes
        assert (lanes["requests"].per_minute, lanes["tokens"].per_minute) == (500, 30000)


async def test_a_redirect_is_not_followed() -> None:
    handler, seen = scripted(httpx.Response(307, headers={"location": "https://elsewhere.test/v1/chat/completions"}))
    outcome, _ = await run(handler)
    assert isinstance(outcome, Failed)
    assert (outcome.status, outcome.attempts) == (307, 1)
    assert len(seen) == 1


async def test_a_body_over_the_cap_is_refused_by_its_length() -> None:
    handler, _ = scripted(httpx.Response(200, content=b"x" * 5000))
    outcome, _ = await run(handler, max_response_bytes=4096)
    assert isinstance(outcome, Failed)
    assert outcome.attempts == 1 and "cap of 4096" in outcome.message


async def test_a_chunked_body_over_the_cap_is_cut_off() -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 1024

    handler, _ = scripted(httpx.Response(200, content=endless()))
    outcome, _ = await run(handler, max_response_bytes=4096)
    assert isinstance(outcome, Failed) and "cap of 4096" in outcome.message


async def test_a_server_echoing_the_key_does_not_put_it_in_the_outcome() -> None:
    handler, _ = scripted(error(400, f"Bad request for key {KEY}", code="invalid_request"))
    outcome, _ = await run(handler)
    assert isinstance(outcome, Failed)
    assert KEY not in outcome.message
    assert "[redacted]" in outcome.message


async def test_a_streamed_answer_is_assembled() -> None:
    def chunk(**fields: object) -> str:
        body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], **fields}
        return "data: " + json.dumps(body) + "\n\n"

    events = (
        chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}])
        + chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
        + chunk(usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
        + "data: [DONE]\n\n"
    )
    handler, seen = scripted(httpx.Response(200, text=events, headers={"content-type": "text/event-stream"}))
    outcome, _ = await run(handler, stream=True)
    assert isinstance(outcome, Completed)
    assert outcome.completion.choices[0].message.content == "Hi"
    assert json.loads(seen[0].content)["stream_options"] == {"include_usage": True}
    assert seen[0].headers["accept"] == "text/event-stream"
