"""One ``/v1`` request being answered, and the writing of its answer: whole, streamed, or deliberately broken.

Every answer carries ``x-request-id``, ``openai-version``, ``openai-processing-ms`` and, when a limit is
configured, the ``x-ratelimit-*`` headers. The fault plan's ``malformed_json``, ``truncated`` and
``stream_error`` break the answer here, while it is written (the faults that replace the answer are the
gate's, :mod:`pipeline.simulator.gate`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from pipeline.simulator import errors
from pipeline.simulator.encoding import ENCODER, sse
from pipeline.simulator.faults import NO_FAULTS, FaultPlan
from pipeline.simulator.http import HttpConnection, HttpRequest
from pipeline.simulator.ratelimit import RateLimiter

JSON: Final = "application/json"
EVENT_STREAM: Final = "text/event-stream; charset=utf-8"


@dataclass(slots=True)
class Exchange:
    """One ``/v1`` request being answered: its ids and timing, what the gate learned, how it ended."""

    request: HttpRequest
    connection: HttpConnection
    request_id: str
    started: float
    job_id: str | None = None
    plan: FaultPlan = NO_FAULTS
    #: A complete, well-formed 200 (what duplicate-completion counting counts).
    succeeded: bool = False
    extra_headers: dict[str, str] = field(default_factory=dict)


class AnswerWriter:
    """Writes answers with the common headers; a stream is paced by ``ttft_ms`` and ``per_token_ms``.

    Reads the rate limiter (owned by the gate) only for its ``x-ratelimit-*`` headers.
    """

    def __init__(self, limiter: RateLimiter, *, ttft_ms: float, per_token_ms: float) -> None:
        self._limiter = limiter
        self._ttft_ms = ttft_ms
        self._per_token_ms = per_token_ms

    def headers(self, exchange: Exchange, content_type: str = JSON) -> dict[str, str]:
        headers = {
            "Content-Type": content_type,
            "x-request-id": exchange.request_id,
            "openai-version": "2020-10-01",
            "openai-processing-ms": str(int((time.perf_counter() - exchange.started) * 1000)),
        }
        if self._limiter.enabled:
            headers.update(self._limiter.headers())
        if exchange.extra_headers:
            headers.update(exchange.extra_headers)
        if not exchange.request.keep_alive:
            headers["Connection"] = "close"
        return headers

    def respond(self, exchange: Exchange, status: int, body: bytes) -> None:
        exchange.connection.respond(status, self.headers(exchange), body)

    def write_body(self, exchange: Exchange, body: bytes) -> None:
        """Send a 200 with ``body``, or the plan's broken version of it."""
        match exchange.plan.failure:
            case "malformed_json":
                self.respond(exchange, 200, body[:-1] + b",,}")
            case "truncated":
                exchange.connection.respond_truncated(200, self.headers(exchange), body)
            case _:
                exchange.succeeded = True
                self.respond(exchange, 200, body)

    async def write_stream(self, exchange: Exchange, events: Sequence[bytes], content: Sequence[bool]) -> None:
        """Send the events; the plan's failure may cut the stream, break one event or end it with an error."""
        connection = exchange.connection
        failure = exchange.plan.failure
        connection.start_stream(200, self.headers(exchange, EVENT_STREAM))
        last = len(events) // 2 if failure == "truncated" else len(events)
        first_content = True
        for data, is_content in zip(events[:last], content[:last], strict=True):
            if not is_content:
                await connection.send_chunk(data)
                continue
            delay_ms = self._ttft_ms if first_content else self._per_token_ms
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            if first_content and failure == "malformed_json":
                data = data[: len(data) // 2] + b"\n\n"
            await connection.send_chunk(data)
            if first_content and failure == "stream_error":
                await connection.send_chunk(sse(ENCODER.encode(errors.server_error(500).body)))
                connection.end_stream()
                return
            first_content = False
        if failure == "truncated":
            connection.close()
            return
        connection.end_stream()
        exchange.succeeded = failure is None
