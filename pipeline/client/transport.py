"""The HTTP seam: the only place the client touches an HTTP library.

The rest of the pipeline sees :class:`HttpTransport` (``post``, ``stream``, ``aclose``) and plain values
(:class:`RawResponse`, byte chunks). Two implementations:

- :class:`AiohttpTransport`, the hot path. Chosen by measurement (``bench/http_transport.py``): at 256
  requests in flight it costs a fraction of the client CPU per request of httpx's own pool.
- :class:`HttpxTransport`, wrapping any ``httpx.AsyncBaseTransport``: lets ``httpx.MockTransport`` drive
  byte-exact header tests and lets a user who prefers httpx keep it.

Exception hierarchy (every error says whether a retry may help, as data)::

    TransportError                  retriable, failure="transport"
    ├── ConnectionFailed            connect/TLS/reset/server closed early: retriable
    ├── TransportTimeout            a connect/pool/read/write timeout: retriable, failure="timeout"
    └── ResponseTooLarge            body over the configured cap: not retriable

Headers of a response are a case-insensitive mapping (aiohttp's ``CIMultiDictProxy`` or ``httpx.Headers``);
callers look names up in lower case. Messages never contain request headers (the API key lives there).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import aiohttp
import httpx

from schemas.topics import ApiFailureKind

#: Default cap on a response body (and on the whole of a streamed response).
DEFAULT_MAX_RESPONSE_BYTES: Final = 10 * 1024 * 1024

TimeoutPhase = Literal["connect", "pool", "read", "write"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Split timeouts in seconds, as httpx defines them.

    ``read`` and ``write`` bound each socket operation (a quiet stream may last longer than ``read`` as long
    as bytes keep arriving); ``pool`` bounds the wait for a free connection. aiohttp has no write timeout:
    there the per-job deadline bounds a stuck write.
    """

    connect: float = 5.0
    read: float = 120.0
    write: float = 30.0
    pool: float = 30.0


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class TransportError(Exception):
    """The request did not produce a complete HTTP response."""

    retriable: bool = True
    failure: ApiFailureKind = "transport"


class ConnectionFailed(TransportError):
    pass


class TransportTimeout(TransportError):
    failure: ApiFailureKind = "timeout"

    def __init__(self, phase: TimeoutPhase) -> None:
        super().__init__(f"{phase} timeout")
        self.phase = phase


class ResponseTooLarge(TransportError):
    retriable = False

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body larger than the cap of {limit} bytes")
        self.limit = limit


class StreamingResponse(Protocol):
    """A response whose body is consumed as it arrives."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in arbitrary pieces; raises ``ResponseTooLarge`` past the cap."""
        ...

    async def read(self) -> bytes:
        """The whole (capped) body: for error responses, which are not streamed."""
        ...


class HttpTransport(Protocol):
    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> RawResponse: ...

    def stream(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> AbstractAsyncContextManager[StreamingResponse]: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# aiohttp: the hot path
# --------------------------------------------------------------------------------------------------


def _aiohttp_error(exc: BaseException) -> TransportError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransportTimeout("connect")
    if isinstance(exc, TimeoutError):
        return TransportTimeout("read")
    # aiohttp's messages name the host and the cause, never the request's headers.
    return ConnectionFailed(f"{type(exc).__name__}: {exc}")


async def _capped(chunks: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """A body's chunks, refused as soon as more than ``max_bytes`` have arrived."""
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > max_bytes:
            raise ResponseTooLarge(max_bytes)
        yield chunk


class _AiohttpStreamingResponse:
    def __init__(self, response: aiohttp.ClientResponse, max_bytes: int) -> None:
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers
        self._response = response
        self._max_bytes = max_bytes

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in _capped(self._response.content.iter_any(), self._max_bytes):
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _aiohttp_error(exc) from None

    async def read(self) -> bytes:
        try:
            return await _read_capped_aiohttp(self._response, self._max_bytes)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _aiohttp_error(exc) from None


async def _read_capped_aiohttp(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    length = response.content_length
    if length is not None:
        if length > max_bytes:
            raise ResponseTooLarge(max_bytes)
        return await response.read()
    parts: list[bytes] = []
    received = 0
    async for chunk in response.content.iter_any():
        received += len(chunk)
        if received > max_bytes:
            raise ResponseTooLarge(max_bytes)
        parts.append(chunk)
    return b"".join(parts)


class AiohttpTransport:
    """One ``aiohttp.ClientSession`` with a connection pool sized to the worker's concurrency.

    The session is created on first use, inside the running event loop (aiohttp binds it to the loop).
    TLS certificates are verified unless an ``ssl_context`` that does otherwise is passed in.
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
        self._client_timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    def _session_for_loop(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, limit_per_host=0, ssl=self._ssl_context, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return self._session

    def _client_timeout(self, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        converted = self._client_timeouts.get(timeouts)
        if converted is None:
            # aiohttp's ``connect`` covers the pool wait plus the connection; ``sock_connect`` the latter.
            converted = aiohttp.ClientTimeout(
                total=None,
                connect=timeouts.pool + timeouts.connect,
                sock_connect=timeouts.connect,
                sock_read=timeouts.read,
            )
            self._client_timeouts[timeouts] = converted
        return converted

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> RawResponse:
        session = self._session_for_loop()
        try:
            async with session.post(
                url, data=body, headers=headers, timeout=self._client_timeout(timeouts), allow_redirects=False
            ) as response:
                payload = await _read_capped_aiohttp(response, self._max_bytes)
                return RawResponse(response.status, response.headers, payload)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _aiohttp_error(exc) from None

    @asynccontextmanager
    async def stream(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> AsyncIterator[StreamingResponse]:
        session = self._session_for_loop()
        try:
            response = await session.post(
                url, data=body, headers=headers, timeout=self._client_timeout(timeouts), allow_redirects=False
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

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in _capped(self._response.aiter_bytes(), self._max_bytes):
                yield chunk
        except httpx.TransportError as exc:
            raise _httpx_error(exc) from None

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)


class HttpxTransport:
    """An ``httpx.AsyncClient`` over the given httpx transport (its native pool when none is given)."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        pool_size: int = 100,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
        self._client = httpx.AsyncClient(transport=transport, limits=limits, verify=verify)
        self._max_bytes = max_response_bytes

    @asynccontextmanager
    async def stream(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> AsyncIterator[StreamingResponse]:
        timeout = httpx.Timeout(connect=timeouts.connect, read=timeouts.read, write=timeouts.write, pool=timeouts.pool)
        request = self._client.build_request("POST", url, headers=headers, content=body, timeout=timeout)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _httpx_error(exc) from None
        try:
            yield _HttpxStreamingResponse(response, self._max_bytes)
        finally:
            await response.aclose()

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> RawResponse:
        async with self.stream(url, headers, body, timeouts) as response:
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self._max_bytes:
                raise ResponseTooLarge(self._max_bytes)
            payload = await response.read()
            return RawResponse(response.status, response.headers, payload)

    async def aclose(self) -> None:
        await self._client.aclose()
