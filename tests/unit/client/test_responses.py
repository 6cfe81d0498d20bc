"""Bodies read within the cap: ``Content-Encoding`` decoded in pieces that never pass the room left under it."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import pytest

from pipeline.client.responses import ResponseTooLarge, UndecodableBody, body_chunks, read_body

TEXT = b'{"id": "chatcmpl-1", "choices": []}' * 50


async def arrive(body: bytes, size: int) -> AsyncIterator[bytes]:
    """``body`` as it might come off the wire, ``size`` bytes at a time."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("", TEXT),
        ("identity", TEXT),
        ("gzip", gzip.compress(TEXT)),
        ("x-gzip", gzip.compress(TEXT)),
        ("deflate", zlib.compress(TEXT)),
        ("deflate", raw_deflate(TEXT)),
    ],
)
async def test_a_body_is_read_as_the_server_meant_it_whatever_its_pieces(encoding: str, body: bytes) -> None:
    headers = {"content-encoding": encoding} if encoding else {}
    assert await read_body(arrive(body, 7), headers, len(TEXT)) == TEXT


async def test_a_bomb_is_refused_without_decoding_more_than_the_cap() -> None:
    cap = 64 * 1024
    bomb = gzip.compress(b"\0" * (1024 * cap))  # inflates to 1024 times the cap
    pieces: list[int] = []
    with pytest.raises(ResponseTooLarge):
        async for piece in body_chunks(arrive(bomb, 64 * 1024), {"content-encoding": "gzip"}, cap):
            pieces.append(len(piece))
    assert sum(pieces) <= cap


async def test_a_body_that_fits_the_cap_exactly_is_read() -> None:
    assert await read_body(arrive(gzip.compress(TEXT), 100), {"content-encoding": "gzip"}, len(TEXT)) == TEXT
    with pytest.raises(ResponseTooLarge):
        await read_body(arrive(gzip.compress(TEXT), 100), {"content-encoding": "gzip"}, len(TEXT) - 1)


async def test_a_declared_length_over_the_cap_is_refused_before_a_byte_is_read() -> None:
    async def unread() -> AsyncIterator[bytes]:
        raise AssertionError("read")
        yield b""

    with pytest.raises(ResponseTooLarge):
        await read_body(unread(), {"content-length": "5000"}, 4096)


@pytest.mark.parametrize(
    ("headers", "body", "why"),
    [
        ({"content-encoding": "br"}, b"\x1b\x00", "Content-Encoding 'br' was not asked for"),
        ({"content-encoding": "gzip, gzip"}, b"", "was not asked for"),
        ({"content-encoding": "gzip"}, b"not gzip at all", "not valid gzip"),
    ],
)
async def test_a_body_that_does_not_decode_is_undecodable(headers: dict[str, str], body: bytes, why: str) -> None:
    with pytest.raises(UndecodableBody, match=why) as raised:
        await read_body(arrive(body, 4), headers, 4096)
    assert (raised.value.retriable, raised.value.failure) == (False, "decode")
