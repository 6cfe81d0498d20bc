"""A small HTTP/1.1 server: ``asyncio.Protocol`` plus the ``httptools`` parser (llhttp).

Why not aiohttp, which the project already has: on one core with the simulator's real work per request,
aiohttp's low-level server answered ~5,000 requests/s and this layer ~11,000 (README, "Throughput").
The simulator must never be a benchmark's bottleneck, and owning the transport also makes the faults exact:
a TCP reset, a body cut short of its ``Content-Length``, a chunked stream that never terminates.

What it does: keep-alive and pipelining (requests on one connection are answered in order by one task per
connection), ``Expect: 100-continue``, whole responses with ``Content-Length``, streams with chunked
transfer encoding and write backpressure, and cancelling the handler when the client goes away. What it
does not: TLS, HTTP/2, upgrades, trailers, request bodies beyond :data:`MAX_BODY_BYTES` (413).
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, cast

import httptools
import msgspec

from schemas.chat import ApiErrorDetail, ErrorBody

log = logging.getLogger("pipeline.simulator.http")

MAX_BODY_BYTES: Final = 32 * 1024 * 1024
#: Stop reading from a client that has this many requests waiting (pipelined) until they are answered.
MAX_QUEUED_REQUESTS: Final = 64
_REASONS: Final = {status.value: status.phrase for status in http.HTTPStatus}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_ENCODER: Final = msgspec.json.Encoder()


@dataclass(slots=True)
class HttpRequest:
    method: str
    #: The path without the query string.
    path: str
    query: str
    #: Header names in lower case; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


Handler = Callable[[HttpRequest, "HttpConnection"], Awaitable[None]]


def _head(status: int, headers: Mapping[str, str], framing: bytes) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n{lines}".encode("latin-1") + framing


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, hands them to the handler one at a time, writes answers.

    The handler answers each request with exactly one of :meth:`respond`, :meth:`start_stream` (then
    :meth:`send_chunk`…, :meth:`end_stream`), :meth:`respond_truncated`, :meth:`reset` or :meth:`close`.
    """

    def __init__(self, handler: Handler, connections: set[HttpConnection]) -> None:
        self._handler = handler
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[HttpRequest] = collections.deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        #: Serves this connection's requests in order; cancelled when the client goes away.
        self.task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self.closed = False
        #: The status of the answer being written (``None`` until a head is sent).
        self.status: int | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connections.add(self)
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "Upgrades are not supported.", "invalid_request_error")
        except httptools.HttpParserError:
            self._fail(400, "Malformed HTTP request.", "invalid_request_error")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._connections.discard(self)
        if self.task is not None:
            self.task.cancel()
        for waiter in (self._wakeup, self._drained):
            if waiter is not None and not waiter.done():
                waiter.cancel()

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport is not None:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            self._too_large = True
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._too_large:
            self._fail(413, f"Request body larger than {MAX_BODY_BYTES} bytes.", "invalid_request_error")
            return
        path, _, query = self._url.decode("latin-1").partition("?")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        method = self._parser.get_method().decode("ascii")
        keep_alive = self._parser.should_keep_alive()
        self._queue.append(HttpRequest(method, path, query, self._headers, body, keep_alive))
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        if len(self._queue) >= MAX_QUEUED_REQUESTS and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True

    # -- serving ------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            if not self._queue:
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
                continue
            request = self._queue.popleft()
            if self._reading_paused and len(self._queue) < MAX_QUEUED_REQUESTS // 2 and self._transport:
                self._transport.resume_reading()
                self._reading_paused = False
            self.status = None
            try:
                await self._handler(request, self)
            except ConnectionError:
                return  # the client went away mid-answer
            except Exception:
                log.exception("simulator handler failed on %s %s", request.method, request.path)
                if self.status is None:
                    self._fail(500, "The simulator failed on this request (see its log).", "server_error")
                return
            if not request.keep_alive:
                self.close()
                return
            if self._drained is not None:
                await self._drained

    def _fail(self, status: int, message: str, error_type: str) -> None:
        """Answer with the API's error body outside the handler (unparsable request, handler crash), then close."""
        body = _ENCODER.encode(ErrorBody(error=ApiErrorDetail(message=message, type=error_type)))
        self.respond(status, {"Content-Type": "application/json", "Connection": "close"}, body)
        self.close()

    # -- answering ----------------------------------------------------------------------------------

    def respond(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """A whole answer with ``Content-Length``."""
        if self._transport is None or self.closed:
            return
        self.status = status
        head = _head(status, headers, b"Content-Length: %d\r\n\r\n" % len(body))
        self._transport.write(head + body)

    def respond_truncated(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """Announce the whole body's length, send half of it, close: a connection lost mid-body."""
        if self._transport is None or self.closed:
            return
        self.status = status
        self._transport.write(_head(status, headers, b"Content-Length: %d\r\n\r\n" % len(body)))
        self._transport.write(body[: len(body) // 2])
        self.close()

    def start_stream(self, status: int, headers: Mapping[str, str]) -> None:
        if self._transport is None or self.closed:
            raise ConnectionResetError("the client went away")
        self.status = status
        self._transport.write(_head(status, headers, b"Transfer-Encoding: chunked\r\n\r\n"))

    async def send_chunk(self, data: bytes) -> None:
        """One chunk of a stream; waits while the client is not reading (backpressure)."""
        if self._transport is None or self.closed:
            raise ConnectionResetError("the client went away")
        self._transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        if self._drained is not None:
            await self._drained

    def end_stream(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(b"0\r\n\r\n")

    def close(self) -> None:
        """Close after what was written is flushed (a client sees the connection end, no more)."""
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.close()

    def reset(self) -> None:
        """Abort with a TCP RST (``SO_LINGER`` 0), as a crashed peer or a middlebox would."""
        if self._transport is None or self.closed:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.closed = True
        self._transport.abort()


class HttpServer:
    """Listens on ``host:port`` (0 picks a free port) and serves every connection with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._connections: set[HttpConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Start listening; returns the port."""
        loop = asyncio.get_running_loop()
        # Room for a worker that opens thousands of connections at once (the kernel caps it at somaxconn).
        self._server = await loop.create_server(
            lambda: HttpConnection(self._handler, self._connections), host, port, reuse_address=True, backlog=16384
        )
        port_bound: int = self._server.sockets[0].getsockname()[1]
        return port_bound

    async def close(self) -> None:
        """Stop listening and drop every connection (handlers in flight are cancelled)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        tasks = [connection.task for connection in self._connections if connection.task is not None]
        for connection in list(self._connections):
            connection.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
