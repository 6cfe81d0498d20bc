"""The simulator's HTTP/1.1 layer over raw sockets: pipelining, Connection: close, 100-continue, bad input."""

from __future__ import annotations

import asyncio

import msgspec

from pipeline.simulator import Simulator
from schemas.chat import ChatCompletion, ErrorBody


def request(body: bytes, *extra_headers: str) -> bytes:
    head = ["POST /v1/chat/completions HTTP/1.1", "Host: sim", "Authorization: Bearer k", *extra_headers]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chat(content: str) -> bytes:
    return msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": content}], "seed": 1})


async def exchange(sim: Simulator, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=5)  # until the server closes
    writer.close()
    return data


def split_responses(data: bytes) -> list[tuple[bytes, bytes]]:
    responses = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        responses.append((head, rest[:length]))
        data = rest[length:]
    return responses


def content(body: bytes) -> str | None:
    return msgspec.json.decode(body, type=ChatCompletion).choices[0].message.content


async def test_pipelined_requests_are_answered_in_order(simulator: Simulator) -> None:
    prompts = ["[[sim: latency=50]] first", "second", "third"]
    alone = [
        content(split_responses(await exchange(simulator, request(chat(p), "Connection: close")))[0][1])
        for p in prompts
    ]
    raw = request(chat(prompts[0])) + request(chat(prompts[1])) + request(chat(prompts[2]), "Connection: close")
    responses = split_responses(await exchange(simulator, raw))
    assert [head.split(b"\r\n")[0] for head, _ in responses] == [b"HTTP/1.1 200 OK"] * 3
    assert b"Connection: close" in responses[2][0]
    assert [content(body) for _, body in responses] == alone
    assert len(set(alone)) == 3


async def test_expect_100_continue_is_answered(simulator: Simulator) -> None:
    data = await exchange(simulator, request(chat("hi"), "Expect: 100-continue", "Connection: close"))
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")


async def test_malformed_http_gets_400_and_a_closed_connection(simulator: Simulator) -> None:
    data = await exchange(simulator, b"NOT HTTP AT ALL\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert msgspec.json.decode(body, type=ErrorBody).error.type == "invalid_request_error"


async def test_requests_with_query_strings_route_by_path(simulator: Simulator) -> None:
    raw = b"GET /v1/models?limit=5 HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer k\r\nConnection: close\r\n\r\n"
    assert (await exchange(simulator, raw)).startswith(b"HTTP/1.1 200 OK")
