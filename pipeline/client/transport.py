"""The HTTP seam: the only place the client touches an HTTP library, and the only one that sends the API key.

The rest of the pipeline sees :class:`HttpTransport` (``post``, ``stream``, ``aclose``) and plain values
(:class:`RawResponse`, byte chunks). Two implementations:

- :class:`AiohttpTransport`, the hot path. Chosen by measurement (``bench/http_transport.py``): at 256
  requests in flight it costs a fraction of the client CPU per request of httpx's own pool.
- :class:`HttpxTransport`, wrapping any ``httpx.AsyncBaseTransport``: lets ``httpx.MockTransport`` drive
  byte-exact header tests and lets a user who prefers httpx keep it.

:class:`AuthorizedTransport` goes over either (or any other): it holds the key as a
:class:`~pipeline.secret.Secret` and adds ``Authorization`` to each request as it is sent, so no header map
the client builds or keeps ever holds the key.

Both implementations read bodies the same way (:func:`~pipeline.client.responses.body_chunks`): they ask
for ``gzip, deflate`` only and decode it themselves, so ``max_response_bytes`` caps what a body decompresses
to, not only what crosses the wire. Redirects are never followed (the key would go to the ``Location``).
Errors are the :class:`~pipeline.client.responses.TransportError` hierarchy, re-exported here.

Headers of a response are a case-insensitive mapping (aiohttp's ``CIMultiDictProxy`` or ``httpx.Headers``);
callers look names up in lower case. Messages never contain request headers (the API key lives there).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp
import httpx

from pipeline.client.responses import (
    ACCEPT_ENCODING,
    ConnectionFailed,
    RawResponse,
    ResponseTooLarge,
    StreamingResponse,
    TimeoutPhase,
    TransportError,
    TransportTimeout,
    UndecodableBody,
    body_chunks,
    read_body,
)
from pipeline.secret import Secret

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "AiohttpTransport",
    "AuthorizedTransport",
    "ConnectionFailed",
    "HttpTransport",
    "HttpxTransport",
    "RawResponse",
    "ResponseTooLarge",
    "StreamingResponse",
    "TimeoutPhase",
    "Timeouts",
    "TransportError",
    "TransportTimeout",
    "UndecodableBody",
]

#: Default cap on a response body (and on the whole of a streamed response).
DEFAULT_MAX_RESPONSE_BYTES: Final = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts in seconds: split ones as httpx defines them, and a deadline for a whole non-streamed call.

    ``call`` bounds a non-streamed call from hand-off to the last byte of its body: such an answer sends
    nothing until it is complete, and a reasoning model at high effort takes minutes, so a socket read
    timeout there would fail (and bill) every attempt of a long answer. A stream instead has ``read``
    between its chunks (and before its headers): a quiet stream may last longer than ``read`` as long as
    bytes keep arriving. ``write`` bounds each send, ``pool`` the wait for a free connection. aiohttp has
    no write timeout: there the call's deadline (or, for a stream, the per-job deadline) bounds a stuck write.
    """

    connect: float = 5.0
    read: float = 120.0
    write: float = 30.0
    pool: float = 30.0
    call: float = 600.0


class HttpTransport(Protocol):
    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> RawResponse: ...

    def stream(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> AbstractAsyncContextManager[StreamingResponse]: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# The key: added as a request is sent, by the transport only
# --------------------------------------------------------------------------------------------------


class _AuthorizedHeaders(dict[str, str]):
    """One request's headers with the key in them; ``repr`` (a traceback's locals, a debugger) hides it."""

    def __repr__(self) -> str:
        return repr({name: "***" if name == "Authorization" else value for name, value in self.items()})


class AuthorizedTransport:
    """An :class:`HttpTransport` that sends each request through ``inner`` with ``Authorization: Bearer <key>``.

    It holds the key as a :class:`~pipeline.secret.Secret` and reveals it per request into a header map that
    lives as long as the send: the header maps the client builds, and everything it keeps, never hold it.
    """

    __slots__ = ("_api_key", "_inner")

    def __init__(self, inner: HttpTransport, api_key: Secret) -> None:
        self._inner = inner
        self._api_key = api_key

    def _authorized(self, headers: Mapping[str, str]) -> _AuthorizedHeaders:
        authorized = _AuthorizedHeaders(headers)
        authorized["Authorization"] = f"Bearer {self._api_key.reveal()}"
        return authorized

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> RawResponse:
        return await self._inner.post(url, self._authorized(headers), body, timeouts)

    def stream(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> AbstractAsyncContextManager[StreamingResponse]:
        return self._inner.stream(url, self._authorized(headers), body, timeouts)

    async def aclose(self) -> None:
        await self._inner.aclose()


# --------------------------------------------------------------------------------------------------
# aiohttp: the hot path
# --------------------------------------------------------------------------------------------------


def _aiohttp_error(exc: BaseException) -> TransportError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransportTimeout("connect")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return TransportTimeout("read")
    if isinstance(exc, TimeoutError):  # aiohttp's ``total``, set for a non-streamed call only
        return TransportTimeout("call")
    # aiohttp's messages name the host and the cause, never the request's headers.
    return ConnectionFailed(f"{type(exc).__name__}: {exc}")


class _AiohttpStreamingResponse:
    def __init__(self, response: aiohttp.ClientResponse, max_bytes: int) -> None:
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers
        self._response = response
        self._max_bytes = max_bytes

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in body_chunks(self._response.content.iter_any(), self.headers, self._max_bytes):
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _aiohttp_error(exc) from None

    async def read(self) -> bytes:
        try:
            return await read_body(self._response.content.iter_any(), self.headers, self._max_bytes)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _aiohttp_error(exc) from None


class AiohttpTransport:
    """One ``aiohttp.ClientSession`` with a connection pool sized to the worker's concurrency.

    The session is created on first use, inside the running event loop (aiohttp binds it to the loop).
    TLS certificates are verified unless an ``ssl_context`` that does otherwise is passed in. aiohttp's own
    decompression is off: :func:`~pipeline.client.responses.body_chunks` decodes within the cap.
    """

    def __init__(
        self,
        *,
        pool_size: int,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._pool_size = pool_size
        self._max_bytes = max_response_bytes
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._session: aiohttp.ClientSession | None = None
        self._client_timeouts: dict[tuple[Timeouts, bool], aiohttp.ClientTimeout] = {}

    def _session_for_loop(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, limit_per_host=0, ssl=self._ssl_context, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                raise_for_status=False,
                auto_decompress=False,
                headers={"Accept-Encoding": ACCEPT_ENCODING},
            )
        return self._session

    def _client_timeout(self, timeouts: Timeouts, *, streamed: bool) -> aiohttp.ClientTimeout:
        converted = self._client_timeouts.get((timeouts, streamed))
        if converted is None:
            # aiohttp's ``connect`` covers the pool wait plus the connection; ``sock_connect`` the latter.
            # A non-streamed call has no read timeout: ``total`` bounds it as a whole.
            converted = aiohttp.ClientTimeout(
                total=None if streamed else timeouts.call,
                connect=timeouts.pool + timeouts.connect,
                sock_connect=timeouts.connect,
                sock_read=timeouts.read if streamed else None,
            )
            self._client_timeouts[(timeouts, streamed)] = converted
        return converted

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> RawResponse:
        session = self._session_for_loop()
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                timeout=self._client_timeout(timeouts, streamed=False),
                allow_redirects=False,
            ) as response:
                return RawResponse(response.status, response.headers, await self._read(response))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _aiohttp_error(exc) from None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None and length <= self._max_bytes and "content-encoding" not in response.headers:
            return await response.read()  # the common case, at the least cost: not encoded, known to fit
        return await read_body(response.content.iter_any(), response.headers, self._max_bytes)

    @asynccontextmanager
    async def stream(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> AsyncIterator[StreamingResponse]:
        session = self._session_for_loop()
        try:
            response = await session.post(
                url,
                data=body,
                headers=headers,
                timeout=self._client_timeout(timeouts, streamed=True),
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _aiohttp_error(exc) from None
        try:
            yield _AiohttpStreamingResponse(response, self._max_bytes)
        finally:
            response.release()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --------------------------------------------------------------------------------------------------
# httpx: for MockTransport tests and for users who want httpx
# --------------------------------------------------------------------------------------------------


def _httpx_error(exc: httpx.TransportError) -> TransportError:
    if isinstance(exc, httpx.ConnectTimeout):
        return TransportTimeout("connect")
    if isinstance(exc, httpx.PoolTimeout):
        return TransportTimeout("pool")
    if isinstance(exc, httpx.WriteTimeout):
        return TransportTimeout("write")
    if isinstance(exc, httpx.TimeoutException):
        return TransportTimeout("read")
    return ConnectionFailed(type(exc).__name__)


class _HttpxStreamingResponse:
    def __init__(self, response: httpx.Response, max_bytes: int) -> None:
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self._response = response
        self._max_bytes = max_bytes

    def _raw(self) -> tuple[AsyncIterator[bytes], Mapping[str, str]]:
        """The body as it came (and the headers that say how to read it)."""
        if self._response.is_stream_consumed:
            # Built in memory (``httpx.Response(content=...)``, as MockTransport handlers answer): httpx has
            # read and decoded it already.
            return _one(self._response.content), {}
        return self._response.aiter_raw(), self.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in body_chunks(*self._raw(), self._max_bytes):
                yield chunk
        except httpx.TransportError as exc:
            raise _httpx_error(exc) from None

    async def read(self) -> bytes:
        try:
            return await read_body(*self._raw(), self._max_bytes)
        except httpx.TransportError as exc:
            raise _httpx_error(exc) from None


async def _one(body: bytes) -> AsyncIterator[bytes]:
    yield body


class HttpxTransport:
    """An ``httpx.AsyncClient`` over the given httpx transport (its native pool when none is given).

    Bodies are read raw and decoded by :func:`~pipeline.client.responses.body_chunks` (httpx's decoders
    inflate each network chunk whole, however far past the cap).
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        pool_size: int = 100,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
        self._client = httpx.AsyncClient(
            transport=transport, limits=limits, verify=verify, headers={"Accept-Encoding": ACCEPT_ENCODING}
        )
        self._max_bytes = max_response_bytes

    @asynccontextmanager
    async def _send(
        self, url: str, headers: Mapping[str, str], body: bytes, phase_timeouts: httpx.Timeout
    ) -> AsyncIterator[_HttpxStreamingResponse]:
        request = self._client.build_request("POST", url, headers=headers, content=body, timeout=phase_timeouts)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _httpx_error(exc) from None
        try:
            yield _HttpxStreamingResponse(response, self._max_bytes)
        finally:
            await response.aclose()

    def stream(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> AbstractAsyncContextManager[StreamingResponse]:
        timeout = httpx.Timeout(connect=timeouts.connect, read=timeouts.read, write=timeouts.write, pool=timeouts.pool)
        return self._send(url, headers, body, timeout)

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> RawResponse:
        # No read timeout: the call's deadline bounds it as a whole.
        timeout = httpx.Timeout(connect=timeouts.connect, read=None, write=timeouts.write, pool=timeouts.pool)
        try:
            async with asyncio.timeout(timeouts.call), self._send(url, headers, body, timeout) as response:
                payload = await response.read()
                return RawResponse(response.status, response.headers, payload)
        except TimeoutError:  # httpx's own timeouts are mapped inside; this is the deadline
            raise TransportTimeout("call") from None

    async def aclose(self) -> None:
        await self._client.aclose()
