"""``GET /events``: server-sent events, one ``change`` event each time the desk's state changes.

Each event carries the new version and the queue's counts (``data: {"version": 7, "open": 12, …}``); the
page's script then refreshes the parts of the page that show the queue. A comment line every
:data:`KEEPALIVE_S` keeps proxies from closing an idle stream and finds clients that went away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

import msgspec
from aiohttp import web

from pipeline.review.web.context import console

KEEPALIVE_S: Final = 15.0
#: The open streams, ended when the application shuts down (they would otherwise hold it open).
STREAMS: Final[web.AppKey[set[asyncio.Task[object]]]] = web.AppKey("review.event_streams")
_encoder: Final = msgspec.json.Encoder()


async def _next(changes: AsyncIterator[int]) -> int:
    return await anext(changes)


def _event(request: web.Request, version: int) -> bytes:
    counts = console(request).desk.counts()
    data = {
        "version": version,
        "open": sum(counts.open_by_reason.values()),
        "open_by_reason": counts.open_by_reason,
        "escalated": counts.escalated,
        "decided": counts.decided,
        "oldest_undecided_at": counts.oldest_undecided_at,
    }
    return b"event: change\ndata: " + _encoder.encode(data) + b"\n\n"


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    task = asyncio.current_task()
    streams = request.app[STREAMS]
    if task is not None:
        streams.add(task)
    changes = aiter(console(request).desk.changes())
    pending: asyncio.Task[int] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.create_task(_next(changes))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
            if not done:
                await response.write(b": keepalive\n\n")
                continue
            finished, pending = pending, None
            try:
                version = finished.result()
            except StopAsyncIteration:
                break
            await response.write(_event(request, version))
    except ConnectionError:
        pass  # the client went away
    finally:
        if task is not None:
            streams.discard(task)
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        close = getattr(changes, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
    return response


async def end_streams(app: web.Application) -> None:
    """``on_shutdown``: end every open stream so the server stops without waiting for them."""
    streams = app[STREAMS]
    for task in tuple(streams):
        task.cancel()
