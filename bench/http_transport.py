"""HTTP client cost per request at high concurrency: the measurement behind the client's transport choice.

A local aiohttp.web server (its own process, uvloop when installed) answers ``POST /v1/chat/completions``
with a small moderated completion. For each client, ``--requests`` POSTs are sent with 8 and with 256 in
flight; we report requests per second (wall clock) and client CPU per request (``time.process_time`` of
the client process only, so the server's CPU is not counted). Each case runs ``--repeat`` times after a
warm-up that fills the connection pool; the median run is reported.

    .venv/bin/python -m bench.http_transport            # 4,000 requests, 3 repeats
    .venv/bin/python -m bench.http_transport --quick    # 1,000 requests, 1 repeat
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Final

import aiohttp
import httpx

from pipeline.client import ChatClient, ClientConfig
from pipeline.client.transport import AiohttpTransport, Timeouts
from pipeline.outcomes import Completed
from pipeline.secret import Secret
from schemas import Job, UserMessage

PATH: Final = "/v1/chat/completions"
REQUEST_BODY: Final = json.dumps(
    {
        "model": "gpt-bench",
        "messages": [{"role": "user", "content": "Say hello."}],
        "moderation": {"model": "omni-moderation-latest"},
    }
).encode()
HEADERS: Final = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}


def _moderation_side() -> dict[str, object]:
    return {
        "type": "moderation_results",
        "model": "omni-moderation-latest",
        "results": [
            {
                "type": "moderation_result",
                "model": "omni-moderation-latest",
                "flagged": False,
                "categories": {"violence": False},
                "category_scores": {"violence": 0.0001},
                "category_applied_input_types": {"violence": ["text"]},
            }
        ],
    }


RESPONSE_BODY: Final = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1764028800,
        "model": "gpt-bench",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello!"}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        "moderation": {"input": _moderation_side(), "output": _moderation_side()},
    }
).encode()


# --------------------------------------------------------------------------------------------------
# Server (runs in its own process)
# --------------------------------------------------------------------------------------------------


def serve(port: int) -> None:
    from aiohttp import web

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def completions(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=RESPONSE_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_post(PATH, completions)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    def __init__(self) -> None:
        self.port = _free_port()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.http_transport", "--serve", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            raise RuntimeError("benchmark server did not start")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("benchmark server is not listening")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


# --------------------------------------------------------------------------------------------------
# Clients under test: each is "open a client sized for N in flight, return one-request coroutine"
# --------------------------------------------------------------------------------------------------

SendOne = Callable[[], Awaitable[None]]
ClientFactory = Callable[[AsyncExitStack, str, int], Awaitable[SendOne]]


async def _httpx_native(stack: AsyncExitStack, url: str, in_flight: int) -> SendOne:
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    client = await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=60))

    async def send() -> None:
        response = await client.post(url, content=REQUEST_BODY, headers=HEADERS)
        assert response.status_code == 200 and response.content

    return send


async def _httpx2_native(stack: AsyncExitStack, url: str, in_flight: int) -> SendOne:
    import httpx2

    limits = httpx2.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    client = await stack.enter_async_context(httpx2.AsyncClient(limits=limits, timeout=60))

    async def send() -> None:
        response = await client.post(url, content=REQUEST_BODY, headers=HEADERS)
        assert response.status_code == 200 and response.content

    return send


async def _httpx_over_aiohttp(stack: AsyncExitStack, url: str, in_flight: int) -> SendOne:
    from httpx_aiohttp import AiohttpTransport as HttpxAiohttpTransport

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight))
    transport = HttpxAiohttpTransport(client=session)
    client = await stack.enter_async_context(httpx.AsyncClient(transport=transport, timeout=60))
    stack.push_async_callback(session.close)

    async def send() -> None:
        response = await client.post(url, content=REQUEST_BODY, headers=HEADERS)
        assert response.status_code == 200 and response.content

    return send


async def _aiohttp_session(stack: AsyncExitStack, url: str, in_flight: int) -> SendOne:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight))
    stack.push_async_callback(session.close)

    async def send() -> None:
        async with session.post(url, data=REQUEST_BODY, headers=HEADERS) as response:
            assert response.status == 200 and await response.read()

    return send


async def _our_transport(stack: AsyncExitStack, url: str, in_flight: int) -> SendOne:
    transport = AiohttpTransport(pool_size=in_flight)
    stack.push_async_callback(transport.aclose)
    timeouts = Timeouts()

    async def send() -> None:
        response = await transport.post(url, HEADERS, REQUEST_BODY, timeouts)
        assert response.status == 200 and response.body

    return send


async def _our_chat_client(stack: AsyncExitStack, url: str, in_flight: int) -> SendOne:
    """The whole client: build the request, encode, rate-limit bookkeeping, send, decode the completion."""
    config = ClientConfig(
        api_key=Secret("sk-bench"),
        base_url=url.removesuffix("/chat/completions"),
        concurrency=in_flight,
    )
    client = ChatClient(config)
    stack.push_async_callback(client.aclose)
    job = Job(id="bench", messages=[UserMessage(content="Say hello.")])

    async def send() -> None:
        outcome = await client.complete(job)
        assert isinstance(outcome, Completed), outcome

    return send


CLIENTS: Final[dict[str, ClientFactory]] = {
    "httpx 0.28 native pool": _httpx_native,
    "httpx2 native pool": _httpx2_native,
    "httpx + httpx-aiohttp transport": _httpx_over_aiohttp,
    "aiohttp ClientSession": _aiohttp_session,
    "ours: AiohttpTransport.post": _our_transport,
    "ours: ChatClient.complete (whole client)": _our_chat_client,
}


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    requests_per_s: float
    cpu_us_per_request: float


async def _run_case(factory: ClientFactory, url: str, in_flight: int, requests: int) -> Measurement:
    async with AsyncExitStack() as stack:
        send = await factory(stack, url, in_flight)

        async def run(total: int) -> None:
            remaining = total

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await send()

            await asyncio.gather(*(worker() for _ in range(in_flight)))

        await run(max(in_flight * 2, 200))  # warm-up: open every connection of the pool
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await run(requests)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Measurement(requests / wall, cpu / requests * 1e6)


def measure(name: str, url: str, in_flight: int, requests: int, repeat: int, *, uvloop: bool) -> Measurement:
    loop_factory = None
    if uvloop:
        import uvloop as uvloop_module

        loop_factory = uvloop_module.new_event_loop
    runs = []
    for _ in range(repeat):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runs.append(runner.run(_run_case(CLIENTS[name], url, in_flight, requests)))
    runs.sort(key=lambda m: m.cpu_us_per_request)
    return runs[len(runs) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1,000 requests, 1 repeat")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[8, 256])
    parser.add_argument("--client", action="append", choices=sorted(CLIENTS), help="only these clients")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--uvloop", action="store_true", help="run the clients on uvloop (default: asyncio's loop)")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.quick:
        args.requests, args.repeat = 1000, 1

    server = ServerProcess()
    results: dict[str, dict[int, Measurement]] = {}
    try:
        loop = "uvloop" if args.uvloop else "asyncio's default loop"
        print(f"{os.cpu_count()} cores, {args.requests} POSTs per case, median of {args.repeat}, clients on {loop}")
        header = " | ".join(f"{n} in flight" for n in args.in_flight)
        print(f"| client | {header} |\n|---|" + "---|" * len(args.in_flight))
        for name in args.client or list(CLIENTS):
            results[name] = {
                n: measure(name, server.url, n, args.requests, args.repeat, uvloop=args.uvloop) for n in args.in_flight
            }
            cells = " | ".join(
                f"{m.requests_per_s:,.0f} req/s, {m.cpu_us_per_request:,.0f} µs" for m in results[name].values()
            )
            print(f"| {name} | {cells} |", flush=True)
    finally:
        server.stop()
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {name: {str(n): m.__dict__ for n, m in by_n.items()} for name, by_n in results.items()},
                out,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
