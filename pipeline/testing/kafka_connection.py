"""One proxied connection: a client's connection and its broker connection. Requests flow up in order; answers
come back in request order (as Kafka promises per connection), each as planned: the broker's (edited) answer or
one the proxy gives itself, maybe delayed, maybe replaced by closing the connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from typing import Any, Protocol

import msgspec

from pipeline.testing.kafka_faults import Plan
from pipeline.testing.kafka_wire import (
    KafkaProxyError,
    ProtocolError,
    RequestHeader,
    api_name,
    parse_request_header,
    read_frame,
    response_correlation_id,
    sized,
)


class Proxy(Protocol):
    """What a connection asks of the proxy it belongs to (the proxy's internals, hence the underscores)."""

    _upstream_ssl: ssl.SSLContext | None

    def _plan(self, connection: Connection, header: RequestHeader, frame: bytes) -> Plan: ...

    async def _answer(self, header: RequestHeader, plan: Plan, frame: bytes) -> bytes: ...

    def _record(self, error: KafkaProxyError) -> None: ...


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a refused connection looks to a client that got as far as connecting."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Slot(msgspec.Struct):
    header: RequestHeader
    plan: Plan


class Connection:
    """One client connection and its broker connection: requests flow up, answers come back in request order."""

    def __init__(
        self,
        proxy: Proxy,
        number: int,
        upstream: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.number = number
        self.upstream = upstream
        self.client = (reader, writer)
        self.broker: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.slots: asyncio.Queue[_Slot] = asyncio.Queue()
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.finished = asyncio.Event()

    def abort(self) -> None:
        self.client[1].transport.abort()
        if self.broker is not None:
            self.broker[1].transport.abort()

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            try:
                host, port = self.upstream
                self.broker = await asyncio.open_connection(host, port, ssl=self.proxy._upstream_ssl)
            except OSError:
                reset(self.client[1])
                return
            tasks = [
                asyncio.create_task(self._guarded(self._requests())),
                asyncio.create_task(self._guarded(self._broker_answers())),
                asyncio.create_task(self._guarded(self._responses())),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.abort()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.finished.set()

    async def _guarded(self, pump: Any) -> None:
        try:
            await pump
        except KafkaProxyError as error:
            self.proxy._record(error)
        except (ConnectionError, OSError):
            pass  # a peer went away: the connection ends
        except Exception as error:  # a bug in the proxy: make the test see it
            failure = ProtocolError(f"the proxy failed on connection {self.number}: {error!r}")
            failure.__cause__ = error
            self.proxy._record(failure)

    async def _requests(self) -> None:
        assert self.broker is not None
        while (frame := await read_frame(self.client[0])) is not None:
            header = parse_request_header(frame)
            plan = self.proxy._plan(self, header, frame)
            if plan.close_before_forwarding:
                return
            if plan.answer is not None or (plan.forward is not None and plan.answered):
                self.slots.put_nowait(_Slot(header, plan))
            if plan.forward is not None:
                self.broker[1].write(sized(plan.forward))
                await self.broker[1].drain()
            if plan.close_instead_of_answering and not plan.answered:
                return

    async def _broker_answers(self) -> None:
        assert self.broker is not None
        while (frame := await read_frame(self.broker[0])) is not None:
            self.answers.put_nowait(frame)

    async def _responses(self) -> None:
        writer = self.client[1]
        while True:
            slot = await self.slots.get()
            header, plan = slot.header, slot.plan
            if plan.answer is not None:
                frame = plan.answer
            else:
                broker_frame = await self.answers.get()
                if response_correlation_id(broker_frame) != header.correlation_id:
                    raise ProtocolError(
                        f"the broker answered correlation id {response_correlation_id(broker_frame)} where "
                        f"{header.correlation_id} ({api_name(header.api_key)}) was due"
                    )
                frame = await self.proxy._answer(header, plan, broker_frame)
            if plan.delay:
                await asyncio.sleep(plan.delay)
            if plan.close_instead_of_answering:
                return
            writer.write(sized(frame))
            await writer.drain()
