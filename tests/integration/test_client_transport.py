"""What the transports promise, over real HTTP on loopback, for both of them (aiohttp and httpx):

- a non-streamed answer is bounded as a whole by the call timeout, not by the socket read timeout (a long
  answer sends nothing until it is done); a stream keeps the read timeout as a gap between its chunks;
- a compressed body is capped at ``max_response_bytes`` once decompressed, and inflating it past the cap
  allocates nothing near its full size;
- a redirect is never followed: the ``Location`` server is never called, and never sees the key.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from pipeline.broker import free_port
from pipeline.client import ChatClient, ClientConfig
from pipeline.outcomes import Completed, Failed
from pipeline.secret import Secret
from pipeline.simulator import Simulator
from tests.fixtures.simulator import MakeSimulator
from tests.integration.client_support import KEY, Sleeps, client_for, job

TRANSPORTS = ["aiohttp", "httpx"]
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi."}}],
}
CAP = 1024 * 1024
#: Inflates to 64 times the cap; about 64 KiB on the wire, well under the cap.
BOMB = gzip.compress(b" " * (64 * CAP), compresslevel=9)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """An HTTP server on loopback answering every request with ``handler``; yields its ``/v1`` base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def answering(body: bytes, **headers: str) -> Handler:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, headers=headers)

    return answer


def client(base_url: str, http_client: str, **config: object) -> ChatClient:
    settings: dict[str, object] = {
        "api_key": Secret(KEY),
        "base_url": base_url,
        "http_client": http_client,
        "max_attempts": 3,
        **config,
    }
    return ChatClient(ClientConfig(**settings), sleep=Sleeps())  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("http_client", TRANSPORTS)
async def test_a_non_streamed_answer_slower_than_the_read_timeout_succeeds_in_one_attempt(
    simulator: Simulator, http_client: str
) -> None:
    async with client_for(simulator, http_client=http_client, read_timeout_s=0.2, call_timeout_s=10.0) as client:
        outcome = await client.complete(job("A long think. [[sim: latency=700]]"))
    assert isinstance(outcome, Completed), outcome
    assert outcome.attempts == 1
    assert simulator.stats().attempts_by_job == {"job-1": 1}


@pytest.mark.parametrize("http_client", TRANSPORTS)
async def test_the_call_timeout_bounds_a_non_streamed_call_as_a_whole(simulator: Simulator, http_client: str) -> None:
    async with client_for(
        simulator, http_client=http_client, read_timeout_s=30.0, call_timeout_s=0.3, max_attempts=2
    ) as client:
        outcome = await client.complete(job("Too long. [[sim: latency=5000]]"))
    assert isinstance(outcome, Failed)
    assert (outcome.failure, outcome.attempts, outcome.message) == ("timeout", 2, "call timeout")


@pytest.mark.parametrize("http_client", TRANSPORTS)
async def test_a_stream_longer_than_the_call_timeout_succeeds_while_its_chunks_keep_coming(
    make_simulator: MakeSimulator, http_client: str
) -> None:
    sim = await make_simulator(per_token_ms=40)
    async with client_for(sim, stream=True, http_client=http_client, read_timeout_s=1.0, call_timeout_s=0.1) as client:
        outcome = await client.complete(job("Tell me a long story about herons."))
    assert isinstance(outcome, Completed), outcome
    assert outcome.attempts == 1 and outcome.latency_ms > 300  # several times the call timeout


@pytest.mark.parametrize("http_client", TRANSPORTS)
async def test_a_stream_silent_for_longer_than_the_read_timeout_times_out(
    make_simulator: MakeSimulator, http_client: str
) -> None:
    sim = await make_simulator(ttft_ms=800)
    async with client_for(
        sim, stream=True, http_client=http_client, read_timeout_s=0.2, call_timeout_s=30.0, max_attempts=1
    ) as client:
        outcome = await client.complete(job("Hello"))
    assert isinstance(outcome, Failed)
    assert outcome.failure == "stream" and "read timeout" in outcome.message


# --------------------------------------------------------------------------------------------------
# Compressed bodies
# --------------------------------------------------------------------------------------------------


def raw_deflate(data: bytes) -> bytes:
    """Deflate without the zlib wrapper, as some servers send ``Content-Encoding: deflate``."""
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ANSWER = json.dumps(COMPLETION).encode()
COMPRESSED = {"gzip": gzip.compress(ANSWER), "deflate": zlib.compress(ANSWER), "raw-deflate": raw_deflate(ANSWER)}


@pytest.mark.parametrize("http_client", TRANSPORTS)
@pytest.mark.parametrize("encoding", sorted(COMPRESSED))
async def test_a_compressed_answer_is_decoded(http_client: str, encoding: str) -> None:
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding", ""))
        headers = {"Content-Type": "application/json", "Content-Encoding": encoding.removeprefix("raw-")}
        return web.Response(body=COMPRESSED[encoding], headers=headers)

    async with serving(answer) as base_url, client(base_url, http_client) as chat:
        outcome = await chat.complete(job("Hello"))
    assert isinstance(outcome, Completed), outcome
    assert outcome.completion.choices[0].message.content == "Hi."
    assert seen == ["gzip, deflate"]  # only what the transport decodes itself, within the cap


@pytest.mark.parametrize("http_client", TRANSPORTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_body_inflating_past_the_cap_fails_at_once_without_being_inflated(
    http_client: str, stream: bool
) -> None:
    content_type = "text/event-stream" if stream else "application/json"
    handler = answering(BOMB, **{"Content-Type": content_type, "Content-Encoding": "gzip"})
    async with (
        serving(handler) as base_url,
        client(base_url, http_client, max_response_bytes=CAP, stream=stream) as chat,
    ):
        tracemalloc.start()
        try:
            outcome = await chat.complete(job("Hello"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert isinstance(outcome, Failed)
    assert outcome.attempts == 1  # not retried
    assert f"response body larger than the cap of {CAP} bytes" in outcome.message
    assert peak < 8 * CAP, f"{peak / CAP:.1f} times the cap allocated while reading a body refused at the cap"


@pytest.mark.parametrize("http_client", TRANSPORTS)
async def test_an_encoding_not_asked_for_is_a_decode_failure_not_retried(http_client: str) -> None:
    handler = answering(b"\x1b\x00\x00", **{"Content-Type": "application/json", "Content-Encoding": "br"})
    async with serving(handler) as base_url, client(base_url, http_client) as chat:
        outcome = await chat.complete(job("Hello"))
    assert isinstance(outcome, Failed)
    assert (outcome.failure, outcome.attempts) == ("decode", 1)
    assert "Content-Encoding 'br'" in outcome.message


# --------------------------------------------------------------------------------------------------
# Redirects
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("http_client", TRANSPORTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("location", ["another-server", "same-server"])
async def test_a_redirect_is_not_followed_and_its_target_never_sees_the_key(
    http_client: str, stream: bool, location: str
) -> None:
    """aiohttp and httpx drop ``Authorization`` on a redirect to another origin, but keep it on the same one."""
    carried_the_key: list[bool] = []  # one entry per request the Location got (never the header itself)

    async def target(request: web.Request) -> web.Response:
        carried_the_key.append(KEY in request.headers.get("Authorization", ""))
        return web.json_response(COMPLETION)

    async with serving(target) as another_server:

        async def redirect(request: web.Request) -> web.Response:
            if request.path == "/v1/moved":
                return await target(request)
            await request.read()
            moved = f"{another_server}/chat/completions" if location == "another-server" else "/v1/moved"
            return web.Response(status=307, headers={"Location": moved})

        async with serving(redirect) as base_url, client(base_url, http_client, stream=stream) as chat:
            outcome = await chat.complete(job("Hello"))
    assert True not in carried_the_key, "the key was sent to the Location"
    assert carried_the_key == [], "the Location was called"
    assert isinstance(outcome, Failed)
    assert (outcome.status, outcome.attempts) == (307, 1)
