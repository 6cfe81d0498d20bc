"""What comes back over the wire, whichever HTTP library carried it: :class:`RawResponse`, the
:class:`StreamingResponse` protocol, the :class:`TransportError` hierarchy, and bodies read within the size cap
with their ``Content-Encoding`` decoded (:func:`body_chunks`). The transports (:mod:`pipeline.client.transport`)
use these and re-export them.

Exception hierarchy (every error says whether a retry may help, as data)::

    TransportError                  retriable, failure="transport"
    ├── ConnectionFailed            connect/TLS/reset/server closed early: retriable
    ├── TransportTimeout            a connect/pool/read/write timeout, or the call's deadline: retriable,
    │                               failure="timeout"
    ├── ResponseTooLarge            body over the configured cap, decompressed size included: not retriable
    └── UndecodableBody             a Content-Encoding not asked for, or a body that does not decode:
                                    not retriable, failure="decode"

Why bodies are decoded here and not by the HTTP library: a small compressed body can inflate a thousandfold,
and the libraries inflate as much as they are given before a cap can look (httpx each network chunk whole,
aiohttp's ``read()`` the whole body); here the decoder never produces more than the room left under the cap.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from schemas.topics import ApiFailureKind


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


TimeoutPhase = Literal["connect", "pool", "read", "write", "call"]


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


class UndecodableBody(TransportError):
    retriable = False
    failure: ApiFailureKind = "decode"


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


#: The encodings asked for (``Accept-Encoding``): the ones :func:`body_chunks` decodes within the cap.
ACCEPT_ENCODING: Final = "gzip, deflate"


class _Inflater:
    """gzip or deflate, decoded in pieces no larger than what is left under the cap."""

    def __init__(self, encoding: str, max_bytes: int) -> None:
        self._encoding = encoding
        self._max_bytes = max_bytes
        self._room = max_bytes
        self._zlib: zlib._Decompress | None = None

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._zlib is None:
            if self._encoding == "gzip":
                wbits = 16 + zlib.MAX_WBITS
            elif data[0] & 0x0F == 8:  # deflate as the standard has it: zlib-wrapped
                wbits = zlib.MAX_WBITS
            else:  # raw deflate, as some servers send it
                wbits = -zlib.MAX_WBITS
            self._zlib = zlib.decompressobj(wbits)
        try:
            # At most one byte past the room: what stops short of it consumed all of ``data``.
            out = self._zlib.decompress(data, self._room + 1)
        except zlib.error:
            raise UndecodableBody(f"the response body is not valid {self._encoding}") from None
        if len(out) > self._room:
            raise ResponseTooLarge(self._max_bytes)
        self._room -= len(out)
        return out


async def body_chunks(raw: AsyncIterator[bytes], headers: Mapping[str, str], max_bytes: int) -> AsyncIterator[bytes]:
    """A body's chunks as the server meant them, ``Content-Encoding`` decoded, refused past ``max_bytes``:
    before a byte is read when ``Content-Length`` says so, else as soon as more have arrived or would come
    out of the decoder."""
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ResponseTooLarge(max_bytes)
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
        raise UndecodableBody(f"response Content-Encoding {encoding[:40]!r} was not asked for")
    inflater = None if encoding in ("", "identity") else _Inflater(encoding.removeprefix("x-"), max_bytes)
    received = 0
    async for chunk in raw:
        received += len(chunk)
        if received > max_bytes:
            raise ResponseTooLarge(max_bytes)
        decoded = chunk if inflater is None else inflater.feed(chunk)
        if decoded:
            yield decoded


async def read_body(raw: AsyncIterator[bytes], headers: Mapping[str, str], max_bytes: int) -> bytes:
    """The whole body, as :func:`body_chunks` gives it."""
    return b"".join([chunk async for chunk in body_chunks(raw, headers, max_bytes)])
