"""Requests per second of the simulator on one core, and of the HTTP stacks it was chosen against.

Each server runs in its own process pinned to core 0; the load generator runs in another process pinned to
core 1 (``wrk -t1 -c64`` when installed, else this module's own keep-alive load generator, a raw asyncio
client). Every request is a small moderated ``POST /v1/chat/completions`` (about 160 bytes in, 2.8 KB out).

Stacks:

- ``simulator``: ``python -m pipeline.simulator`` (asyncio.Protocol + httptools, uvloop when installed),
  with its full work per request (auth, directives, stats, moderation of input and output, generation).
- ``simulator-asyncio``: the same with the standard asyncio event loop.
- ``aiohttp-web``, ``aiohttp-lowlevel``, ``uvicorn-httptools``, ``granian``: the same *core* work (decode,
  moderate, generate, encode; no gate or stats) behind other servers, to compare the HTTP layers. A stack
  whose package is not installed is reported as skipped.

    .venv/bin/python -m bench.simulator_throughput            # 5 s per stack, best of 2
    .venv/bin/python -m bench.simulator_throughput --quick    # 2 s per stack, 1 run
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from pipeline.simulator import SimulatorProcess
from pipeline.simulator.classifier import DEFAULT_THRESHOLDS
from pipeline.simulator.completion import Shape, answer_chat, read_chat_input
from pipeline.simulator.encoding import encode_body
from schemas.chat import ChatCompletionRequest

PATH: Final = "/v1/chat/completions"
BODY: Final = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_completion_tokens": 16,
        "moderation": {"model": "omni-moderation-latest"},
    }
).encode()
SERVER_CPU: Final = 0
LOAD_CPU: Final = 1
REPO: Final = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------
# The reference work, served by the other stacks
# --------------------------------------------------------------------------------------------------

_DECODER: Final = msgspec.json.Decoder(ChatCompletionRequest)
_THRESHOLDS: Final = dict(DEFAULT_THRESHOLDS)


def core_work(raw: bytes) -> bytes:
    """What every reference stack does per request: the simulator's answer without its gate and stats."""
    request = _DECODER.decode(raw)
    chat_input = read_chat_input(request)
    answer = answer_chat(
        request,
        chat_input,
        completion_id="chatcmpl-bench",
        created=int(time.time()),
        thresholds=_THRESHOLDS,
        shape=Shape(),
    )
    return encode_body(answer.completion)


async def asgi_app(
    scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
) -> None:
    """The reference work as an ASGI app (uvicorn, granian)."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = core_work(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


def serve_aiohttp(port: int, low_level: bool) -> None:
    from aiohttp import web

    async def handle(request: web.BaseRequest) -> web.Response:
        return web.Response(body=core_work(await request.read()), content_type="application/json")

    async def main() -> None:
        if low_level:
            runner: web.BaseRunner = web.ServerRunner(web.Server(handle, access_log=None))
        else:
            app = web.Application()
            app.router.add_post(PATH, handle)
            runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    _run_loop(main())


def _run_loop(main: Awaitable[None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]
    else:
        uvloop.run(main)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# The Python load generator (used when wrk is not installed)
# --------------------------------------------------------------------------------------------------

_CONTENT_LENGTH: Final = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


class _LoadConnection(asyncio.Protocol):
    """Sends the request, waits for the whole response, sends the next one (keep-alive, no pipelining)."""

    def __init__(self, request: bytes, counts: dict[str, int], stop_at: float) -> None:
        self._request = request
        self._counts = counts
        self._stop_at = stop_at
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            match = _CONTENT_LENGTH.search(self._buffer, 0, head_end)
            length = int(match[1]) if match else 0
            end = head_end + 4 + length
            if len(self._buffer) < end:
                return
            status = self._buffer[9:12]
            self._buffer = self._buffer[end:]
            self._counts["ok" if status == b"200" else "non_2xx"] += 1
            if time.perf_counter() >= self._stop_at:
                assert self._transport is not None
                self._transport.close()
                return
            assert self._transport is not None
            self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def python_load(url: str, connections: int, seconds: float) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer sk-bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    loop = asyncio.get_running_loop()
    counts = {"ok": 0, "non_2xx": 0}
    started = time.perf_counter()
    stop_at = started + seconds
    protocols = []
    for _ in range(connections):
        _, protocol = await loop.create_connection(lambda: _LoadConnection(request, counts, stop_at), host, int(port))
        protocols.append(protocol)
    await asyncio.gather(*(protocol.done for protocol in protocols))
    elapsed = time.perf_counter() - started
    return {"rps": (counts["ok"] + counts["non_2xx"]) / elapsed, "non_2xx": counts["non_2xx"]}


def wrk_load(url: str, connections: int, seconds: float) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        body = BODY.decode().replace("\\", "\\\\").replace('"', '\\"')
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer sk-bench"\nwrk.body = "{body}"\n'
        )
    try:
        command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script.name, url + PATH]
        output = subprocess.run(
            command, capture_output=True, text=True, check=True, preexec_fn=lambda: _pin(LOAD_CPU)
        ).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", output)[1])  # type: ignore[index]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    return {"rps": rps, "non_2xx": int(non_2xx[1]) if non_2xx else 0}


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


# --------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    name: str
    description: str
    needs: tuple[str, ...]


STACKS: Final = (
    Stack("simulator", "pipeline simulate: asyncio.Protocol + httptools, uvloop", ("httptools", "uvloop")),
    Stack("simulator-asyncio", "pipeline simulate: asyncio.Protocol + httptools, asyncio loop", ("httptools",)),
    Stack("aiohttp-web", "aiohttp.web Application + router, uvloop (core work)", ("aiohttp",)),
    Stack("aiohttp-lowlevel", "aiohttp low-level web.Server, uvloop (core work)", ("aiohttp",)),
    Stack("uvicorn-httptools", "uvicorn --http httptools --loop uvloop (core work)", ("uvicorn", "httptools")),
    Stack("granian", "granian ASGI, 1 worker (core work)", ("granian",)),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


def _reference_server(stack: str, port: int) -> subprocess.Popen[bytes]:
    python = sys.executable
    if stack in ("aiohttp-web", "aiohttp-lowlevel"):
        command = [python, "-m", "bench.simulator_throughput", "--serve", stack, "--port", str(port)]
    elif stack == "uvicorn-httptools":
        command = [python, "-m", "uvicorn", "bench.simulator_throughput:asgi_app", "--port", str(port)]
        command += ["--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
    else:
        command = [python, "-m", "granian", "--interface", "asgi", "--port", str(port), "--workers", "1"]
        command += ["--log-level", "warning", "bench.simulator_throughput:asgi_app"]
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: _pin(SERVER_CPU)
    )


def measure(stack: str, load: str, connections: int, seconds: float) -> dict[str, float]:
    """Start the stack's server, warm it up, run the load once, stop it."""
    if stack.startswith("simulator"):
        args = ["--loop", "asyncio" if stack == "simulator-asyncio" else "auto"]
        with SimulatorProcess(args, cpu=SERVER_CPU if (os.cpu_count() or 1) > 1 else None) as sim:
            return _load(load, sim.url, connections, seconds)
    port = _free_port()
    process = _reference_server(stack, port)
    try:
        _wait_for_port(port, process)
        return _load(load, f"http://127.0.0.1:{port}", connections, seconds)
    finally:
        process.terminate()
        process.wait(10)


def _load(load: str, url: str, connections: int, seconds: float) -> dict[str, float]:
    _load_once(load, url, connections, min(1.0, seconds))  # warm-up: connections, caches
    return _load_once(load, url, connections, seconds)


def _load_once(load: str, url: str, connections: int, seconds: float) -> dict[str, float]:
    if load == "wrk":
        return wrk_load(url, connections, seconds)
    command = [sys.executable, "-m", "bench.simulator_throughput", "--load-only", url]
    command += ["--connections", str(connections), "--seconds", str(seconds)]
    output = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, check=True, preexec_fn=lambda: _pin(LOAD_CPU)
    ).stdout
    result: dict[str, float] = json.loads(output)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulator_throughput", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 s per stack, one run")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=2, help="runs per stack; the best is reported")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--stacks", default=",".join(stack.name for stack in STACKS))
    parser.add_argument("--serve", choices=("aiohttp-web", "aiohttp-lowlevel"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load-only", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve:
        serve_aiohttp(args.port, low_level=args.serve == "aiohttp-lowlevel")
        return 0
    if args.load_only:
        _pin(LOAD_CPU)
        print(json.dumps(_run_python_load(args.load_only, args.connections, args.seconds)))
        return 0

    seconds, repeat = (2.0, 1) if args.quick else (args.seconds, args.repeat)
    load = ("wrk" if shutil.which("wrk") else "python") if args.load == "auto" else args.load
    wanted = args.stacks.split(",")
    print(f"load: {load}, {args.connections} keep-alive connections, {seconds:g} s per run, best of {repeat}")
    print(f"server on core {SERVER_CPU}, load generator on core {LOAD_CPU} (of {os.cpu_count()})\n")
    print(f"| {'stack':<20} | {'req/s':>8} | {'non-2xx':>7} | what |")
    print(f"|{'-' * 22}|{'-' * 10}:|{'-' * 9}:|------|")
    for stack in STACKS:
        if stack.name not in wanted:
            continue
        missing = [module for module in stack.needs if importlib.util.find_spec(module) is None]
        if missing:
            print(f"| {stack.name:<20} | {'-':>8} | {'-':>7} | skipped: {', '.join(missing)} not installed |")
            continue
        runs = [measure(stack.name, load, args.connections, seconds) for _ in range(repeat)]
        best = max(runs, key=lambda run: run["rps"])
        print(
            f"| {stack.name:<20} | {best['rps']:>8,.0f} | {int(best['non_2xx']):>7} | {stack.description} |", flush=True
        )
    return 0


def _run_python_load(url: str, connections: int, seconds: float) -> dict[str, float]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(python_load(url, connections, seconds))
    return uvloop.run(python_load(url, connections, seconds))


if __name__ == "__main__":
    raise SystemExit(main())
