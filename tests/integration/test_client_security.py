"""Key hygiene: the API key appears in no log line, outcome, exception or repr, whatever goes wrong, and no
object outside the transport holds it."""

from __future__ import annotations

import asyncio
import logging
import types
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager

import msgspec
import pytest

from pipeline.client import ChatClient, ClientConfig, ModerationMode
from pipeline.client.request import RequestHeaders
from pipeline.client.transport import (
    AiohttpTransport,
    AuthorizedTransport,
    RawResponse,
    StreamingResponse,
    Timeouts,
)
from pipeline.outcomes import Completed, Failed
from pipeline.secret import Secret
from pipeline.simulator import Simulator
from tests.fixtures.simulator import MakeSimulator
from tests.integration.client_support import KEY, Sleeps, client_for, job

DIRECTIVES = [
    "",
    "500*1",
    "429*1",
    "reset*1",
    "hang*1",
    "truncated*1",
    "stream_error*1",
    "malformed_json",
    "insufficient_quota*1",
    "context_length_exceeded",
    "moderation_missing",
    "moderation_unknown_type",
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("mode", ["inline", "auto", "separate"])
async def test_the_key_is_in_no_log_or_outcome(
    simulator: Simulator, caplog: pytest.LogCaptureFixture, stream: bool, mode: str
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's included
    async with client_for(simulator, stream=stream, moderation_mode=mode) as client:
        outcomes = [
            await client.complete(job(f"Hello [[sim:{directive}]]" if directive else "Hello", f"job-{index}"))
            for index, directive in enumerate(DIRECTIVES)
        ]
        seen = [repr(client), repr(client.config), str(client.config)]
    seen += [msgspec.json.encode(outcome).decode() for outcome in outcomes]
    seen += [record.getMessage() + repr(record.__dict__) for record in caplog.records]
    assert caplog.records  # the client did log at DEBUG: the scan had something to scan
    assert all(KEY not in text for text in seen)


async def test_a_rejected_key_is_probed_not_hammered_and_named_nowhere(
    make_simulator: MakeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A key the provider rejects holds every call (it is not the jobs' fault): one probe at a time, with
    backoff, and the key appears in no log line."""
    caplog.set_level(logging.DEBUG)
    sim = await make_simulator(api_key="sk-the-right-one")
    async with client_for(sim) as client:
        calls = [asyncio.create_task(client.complete(job("Hello", f"held-{i}"))) for i in range(20)]
        for _ in range(500):
            if sim.stats().requests >= 4:
                break
            await asyncio.sleep(0.01)
        assert not client.provider_available and not any(call.done() for call in calls)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    assert sim.stats().requests < 20, "twenty held jobs, but only the probes reached the provider"
    assert all(KEY not in record.getMessage() + repr(record.__dict__) for record in caplog.records)


async def test_a_refused_connection_names_no_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = ClientConfig(api_key=Secret(KEY), base_url="http://127.0.0.1:9/v1", max_attempts=2)
    async with ChatClient(config, sleep=Sleeps()) as client:
        outcome = await client.complete(job("Hello"))
    assert isinstance(outcome, Failed)
    assert (outcome.failure, outcome.attempts) == ("transport", 2)
    assert KEY not in outcome.message
    assert all(KEY not in record.getMessage() + repr(record.__dict__) for record in caplog.records)


# --------------------------------------------------------------------------------------------------
# Only the transport holds the key
# --------------------------------------------------------------------------------------------------


def _referents(obj: object) -> Iterable[object]:
    if isinstance(obj, Mapping):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, list | tuple | set | frozenset | deque):
        return list(obj)
    if isinstance(obj, types.FunctionType):
        return [cell.cell_contents for cell in obj.__closure__ or () if cell.cell_contents is not None]
    if isinstance(obj, types.MethodType):
        return [obj.__self__, obj.__func__]
    fields = getattr(type(obj), "__struct_fields__", ())  # a msgspec Struct's
    names = list(fields) if isinstance(fields, tuple) else []
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return [*getattr(obj, "__dict__", {}).values(), *(getattr(obj, name) for name in names if hasattr(obj, name))]


def text_held_by(root: object, *, outside: tuple[type, ...]) -> Iterator[str]:
    """Every text reachable from ``root`` through attributes, containers and closures, short of instances of
    ``outside``, :class:`Secret` (which reveals nothing unasked), classes, modules and the event loop."""
    stop = (*outside, Secret, type, types.ModuleType, types.BuiltinFunctionType, asyncio.AbstractEventLoop)
    seen: set[int] = set()
    pending = [root]
    while pending:
        obj = pending.pop()
        if id(obj) in seen or isinstance(obj, stop):
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            yield obj
        elif isinstance(obj, bytes | bytearray):
            yield bytes(obj).decode("latin-1")
        else:
            pending.extend(_referents(obj))


class Inspecting:
    """The real transport, beneath the one that adds the key: while each request is in flight, it looks
    through everything the client holds for the key."""

    def __init__(self) -> None:
        self._inner = AiohttpTransport(pool_size=4)
        self.client: ChatClient | None = None
        self.held_during_calls: list[bool] = []  # per request: did anything outside the transport hold the key?
        self.sent_with_the_key: list[bool] = []

    def _inspect(self, headers: Mapping[str, str]) -> None:
        self.sent_with_the_key.append(headers.get("Authorization") == f"Bearer {KEY}")
        self.held_during_calls.append(holds_the_key(self.client))

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> RawResponse:
        self._inspect(headers)
        return await self._inner.post(url, headers, body, timeouts)

    def stream(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> AbstractAsyncContextManager[StreamingResponse]:
        self._inspect(headers)
        return self._inner.stream(url, headers, body, timeouts)

    async def aclose(self) -> None:
        await self._inner.aclose()


def holds_the_key(root: object) -> bool:
    return any(KEY in text for text in text_held_by(root, outside=(AuthorizedTransport, Inspecting)))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("mode", ["inline", "separate"])
async def test_no_object_outside_the_transport_holds_the_key(
    make_simulator: MakeSimulator, stream: bool, mode: ModerationMode
) -> None:
    sim = await make_simulator(api_key=KEY)  # answers only a request that carries the key
    config = ClientConfig(api_key=Secret(KEY), base_url=sim.base_url, stream=stream, moderation_mode=mode)
    transport = Inspecting()
    async with ChatClient(config, transport=transport, sleep=Sleeps()) as client:
        transport.client = client
        outcome = await client.complete(job("Hello"))
        held_after = holds_the_key(client)
    assert isinstance(outcome, Completed), outcome
    calls = 1 if mode == "inline" else 3
    assert transport.sent_with_the_key == [True] * calls  # the transport did add it to every request
    assert transport.held_during_calls == [False] * calls, "something outside the transport held the key"
    assert not held_after, "something outside the transport held the key after the call"
    headers = RequestHeaders(config)
    built = [headers.for_call("job-1"), headers.for_call("job-1", stream=True)]
    assert all("Authorization" not in each and not holds_the_key(each) for each in built)
