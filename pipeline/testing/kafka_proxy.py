"""A fault-injecting Kafka proxy: a hostile double between Kafka clients and a broker (or a whole cluster).

::

    async with KafkaProxy("127.0.0.1:9092") as proxy:           # or: with proxy.in_background(): (a thread)
        proxy.fail(ApiKey.OFFSET_FETCH, NotCoordinatorError, times=2)
        proxy.fail_partitions(ApiKey.PRODUCE, TopicAuthorizationFailedError, topics={"jobs"})
        consumer = AIOKafkaConsumer(bootstrap_servers=proxy.bootstrap_servers, ...)

Every connection goes through it: the proxy rewrites the broker addresses in Metadata and FindCoordinator
answers to listeners of its own (one per upstream broker, opened as brokers are discovered), so it works in front
of any cluster. It caps the versions in ApiVersions answers to those aiokafka's protocol classes decode.
Everything else passes byte for byte unless a rule touches it.

Errors (``pipeline.testing.kafka_wire``)::

    KafkaProxyError
     ├── UnsupportedFault   a rule that cannot apply: raised when it is added, or recorded when a request
     │                      arrives in a version it cannot edit (the connection is closed; check() raises it)
     └── ProtocolError      a frame the proxy cannot parse (recorded; the connection is closed)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ssl
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterator
from typing import Final, TypeVar

import msgspec

from pipeline.testing.kafka_connection import Connection, reset
from pipeline.testing.kafka_faults import (
    CommitMetadata,
    Delay,
    Disconnect,
    ErrorCode,
    Fault,
    Match,
    PartitionErrors,
    Plan,
    Rule,
    TopLevelError,
    error_code,
    plan_request,
)
from pipeline.testing.kafka_wire import (
    ApiKey,
    KafkaProxyError,
    ProtocolError,
    RequestHeader,
    api_name,
    capped_api_versions,
    decode_response,
    encode_response,
    rebuilt,
)

T = TypeVar("T")
#: Requests remembered for :meth:`KafkaProxy.requests` (the oldest are forgotten first).
LOG_SIZE: Final = 100_000


class SeenRequest(msgspec.Struct, frozen=True):
    """One request the proxy saw."""

    api_key: int
    api_version: int
    client_id: str | None
    #: the proxy's number for the client connection it came on
    connection: int
    #: the broker the connection leads to, "host:port"
    upstream: str

    @property
    def api(self) -> str:
        return api_name(self.api_key)


class _Listener:
    def __init__(self, upstream: tuple[str, int], server: asyncio.Server) -> None:
        self.upstream = upstream
        self.server = server
        self.port = int(server.sockets[0].getsockname()[1])


class KafkaProxy:
    """The proxy (see the module docstring). The rule and control methods may be called from any thread."""

    def __init__(
        self, upstream: str, *, host: str = "127.0.0.1", port: int = 0, upstream_ssl: ssl.SSLContext | None = None
    ) -> None:
        first = upstream.split(",")[0].strip()
        upstream_host, _, upstream_port = first.rpartition(":")
        if not upstream_host or not upstream_port.isdigit():
            raise ValueError(f"upstream must be host:port, not {upstream!r}")
        self.upstream = (upstream_host, int(upstream_port))
        self.host = host
        self._port = port
        self._upstream_ssl = upstream_ssl
        self._listeners: dict[tuple[str, int], _Listener] = {}
        self._connections: set[Connection] = set()
        self._numbered = 0
        self._rules: list[Rule] = []
        self._log: deque[SeenRequest] = deque(maxlen=LOG_SIZE)
        self._errors: list[KafkaProxyError] = []
        self._commits: CommitMetadata | None = None
        self._refuse_until: float | None = None
        self.refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> KafkaProxy:
        if self._loop is not None:
            return self
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await self._listen(self.upstream, self._port)
        return self

    async def stop(self) -> None:
        for listener in list(self._listeners.values()):
            listener.server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.abort()
        await asyncio.gather(*(c.finished.wait() for c in connections))
        for listener in self._listeners.values():
            await listener.server.wait_closed()
        self._listeners.clear()
        self._loop = None

    async def __aenter__(self) -> KafkaProxy:
        return await self.start()

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        await self.stop()
        if exc_type is None:
            self.check()

    @contextlib.contextmanager
    def in_background(self) -> Iterator[KafkaProxy]:
        """Run the proxy on an event loop of its own in a thread (for sync tests, or a fixture that outlives the
        event loop of each test)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="kafka-proxy", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)
            yield self
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    @property
    def bootstrap_servers(self) -> str:
        listener = self._listeners.get(self.upstream)
        if listener is None:
            raise RuntimeError("the proxy is not running")
        return f"{self.host}:{listener.port}"

    # --- faults ---------------------------------------------------------------------------------------------

    def fail(
        self,
        api_key: int,
        error: ErrorCode,
        *,
        times: int | None = None,
        forward: bool = False,
        version: int | None = None,
        client_id: str | None = None,
    ) -> Rule:
        """Answer matching requests with a top-level error (e.g. OffsetFetch v2+, FindCoordinator, Heartbeat,
        JoinGroup, SyncGroup); without ``forward`` the broker never sees them."""
        fault = TopLevelError(code=error_code(error), forward=forward)
        return self._arm(Match(api_key=api_key, version=version, client_id=client_id), fault, times)

    def fail_partitions(
        self,
        api_key: int,
        error: ErrorCode,
        *,
        topics: Collection[str] | None = None,
        partitions: Collection[int] | None = None,
        times: int | None = None,
        forward: bool = False,
        version: int | None = None,
        client_id: str | None = None,
    ) -> Rule:
        """Answer the chosen partitions of matching requests (Produce, Fetch, OffsetCommit, OffsetFetch,
        ListOffsets) with an error. Without ``forward`` the broker never sees those partitions (a refused
        record is not appended); with it, the broker acts and the client is told it failed. A request naming
        none of the chosen partitions is not touched and does not count."""
        fault = PartitionErrors(
            code=error_code(error),
            topics=None if topics is None else frozenset(topics),
            partitions=None if partitions is None else frozenset(partitions),
            forward=forward,
        )
        return self._arm(Match(api_key=api_key, version=version, client_id=client_id), fault, times)

    def delay(
        self,
        api_key: int,
        seconds: float,
        *,
        times: int | None = None,
        version: int | None = None,
        client_id: str | None = None,
    ) -> Rule:
        """Hold the responses to matching requests for ``seconds`` (later responses on that connection wait)."""
        return self._arm(Match(api_key=api_key, version=version, client_id=client_id), Delay(seconds=seconds), times)

    def disconnect(
        self,
        api_key: int,
        *,
        times: int | None = 1,
        forward: bool = False,
        version: int | None = None,
        client_id: str | None = None,
    ) -> Rule:
        """Close the connection a matching request arrives on: before forwarding it, or with ``forward`` after
        the broker answered it (the client never hears that it succeeded)."""
        match = Match(api_key=api_key, version=version, client_id=client_id)
        return self._arm(match, Disconnect(forward=forward), times)

    def remove(self, rule: Rule) -> None:
        self._on_loop(lambda: self._rules.remove(rule) if rule in self._rules else None)

    def close_connections(self) -> int:
        """Close every client connection now (and its broker connection); how many were open."""

        def close_all() -> int:
            connections = list(self._connections)
            for connection in connections:
                connection.abort()
            return len(connections)

        return self._on_loop(close_all)

    def refuse_connections(self, seconds: float | None = None) -> None:
        """Reset new connections at once, for ``seconds`` or until :meth:`accept_connections`. Open connections
        stay open (close them with :meth:`close_connections`)."""

        def refuse() -> None:
            assert self._loop is not None
            self._refuse_until = float("inf") if seconds is None else self._loop.time() + seconds

        self._on_loop(refuse)

    def accept_connections(self) -> None:
        def accept() -> None:
            self._refuse_until = None

        self._on_loop(accept)

    @property
    def keep_commit_metadata(self) -> bool:
        """Keep the metadata of accepted OffsetCommits and serve it back in OffsetFetch answers (off by default:
        the broker's own behaviour passes through)."""
        return self._commits is not None

    @keep_commit_metadata.setter
    def keep_commit_metadata(self, keep: bool) -> None:
        def switch() -> None:
            if not keep:
                self._commits = None
            elif self._commits is None:
                self._commits = CommitMetadata()

        self._on_loop(switch)

    def clear(self) -> None:
        """Back to a plain proxy: no rules, no refusal, no kept metadata, an empty request log and no errors."""

        def clear_all() -> None:
            self._rules.clear()
            self._refuse_until = None
            self._commits = None
            self._log.clear()
            self._errors.clear()
            self.refused = 0

        self._on_loop(clear_all)

    # --- what happened --------------------------------------------------------------------------------------

    def requests(self, api_key: int | None = None) -> list[SeenRequest]:
        """The requests seen (of one API key), oldest first."""
        return self._on_loop(lambda: [r for r in self._log if api_key is None or r.api_key == api_key])

    def versions_seen(self) -> dict[int, set[int]]:
        seen: dict[int, set[int]] = {}
        for request in self.requests():
            seen.setdefault(request.api_key, set()).add(request.api_version)
        return seen

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def take_errors(self) -> list[KafkaProxyError]:
        def take() -> list[KafkaProxyError]:
            errors, self._errors = self._errors, []
            return errors

        return self._on_loop(take)

    def check(self) -> None:
        """Raise the first error the proxy recorded (a rule that could not apply, an unparsable frame)."""
        errors = self.take_errors()
        if errors:
            first = errors[0]
            for other in errors[1:]:
                first.add_note(f"also: {type(other).__name__}: {other}")
            raise first

    # --- internals (on the proxy's loop) --------------------------------------------------------------------

    def _arm(self, match: Match, fault: Fault, times: int | None) -> Rule:
        rule = Rule(match, fault, times)  # validates: UnsupportedFault here, in the test
        self._on_loop(lambda: self._rules.append(rule))
        return rule

    def _on_loop(self, call: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread or not loop.is_running():
            return call()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(call())
            except BaseException as error:
                done.set_exception(error)

        loop.call_soon_threadsafe(run)
        return done.result(timeout=10)

    async def _listen(self, upstream: tuple[str, int], port: int = 0) -> _Listener:
        server = await asyncio.start_server(lambda r, w: self._accept(upstream, r, w), self.host, port)
        listener = self._listeners[upstream] = _Listener(upstream, server)
        return listener

    async def _address_for(self, host: str, port: int) -> tuple[str, int]:
        listener = self._listeners.get((host, port)) or await self._listen((host, port))
        return self.host, listener.port

    async def _accept(
        self, upstream: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert self._loop is not None
        if self._refuse_until is not None and self._loop.time() >= self._refuse_until:
            self._refuse_until = None
        if self._refuse_until is not None:
            self.refused += 1
            reset(writer)
            return
        self._numbered += 1
        connection = Connection(self, self._numbered, upstream, reader, writer)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    def _record(self, error: KafkaProxyError) -> None:
        self._errors.append(error)

    def _plan(self, connection: Connection, header: RequestHeader, frame: bytes) -> Plan:
        upstream = f"{connection.upstream[0]}:{connection.upstream[1]}"
        self._log.append(SeenRequest(header.api_key, header.api_version, header.client_id, connection.number, upstream))
        if header.api_key == ApiKey.SASL_HANDSHAKE and header.api_version == 0:
            raise ProtocolError("SaslHandshake v0 switches to raw SASL frames, which the proxy cannot follow")
        return plan_request(header, frame, self._rules, self._commits)

    async def _answer(self, header: RequestHeader, plan: Plan, frame: bytes) -> bytes:
        """The broker's answer, with the broker addresses rewritten and the planned edits applied."""
        key = header.api_key
        touched = key in (ApiKey.METADATA, ApiKey.FIND_COORDINATOR, ApiKey.API_VERSIONS)
        if not plan.edits and not touched:
            return frame
        response = decode_response(frame, key, header.api_version)
        if key == ApiKey.API_VERSIONS:
            response = capped_api_versions(response)
        elif key == ApiKey.METADATA:
            brokers = []
            for node_id, host, port, *rest in response.brokers:
                brokers.append((node_id, *(await self._address_for(host, port)), *rest))
            response = rebuilt(response, brokers=brokers)
        elif key == ApiKey.FIND_COORDINATOR and response.error_code == 0 and response.port >= 0:
            host, port = await self._address_for(response.host, response.port)
            response = rebuilt(response, host=host, port=port)
        for edit in plan.edits:
            response = edit(response)
        return encode_response(header.correlation_id, response)
