"""The Kafka wire format as far as the fault-injecting proxy needs it.

Frames are an int32 size and that many bytes. A request frame starts with its header (api_key int16,
api_version int16, correlation_id int32, client_id nullable string, then tagged fields in flexible versions);
a response frame starts with the correlation id (then tagged fields in flexible versions, except ApiVersions).
Bodies are decoded and re-encoded with aiokafka's own protocol classes, found by (api_key, api_version): the
versions aiokafka knows are the ones the proxy can change; every other frame passes through byte for byte.
"""

from __future__ import annotations

import asyncio
import importlib
import struct
from collections.abc import Iterator
from enum import IntEnum
from functools import cache
from io import BytesIO
from typing import Any, Final

import msgspec
from aiokafka.protocol.admin import ApiVersionResponse_v0
from aiokafka.protocol.api import RequestStruct
from aiokafka.protocol.types import Array, Boolean, Bytes, CompactBytes, Schema, String, TaggedFields

#: Frames larger than this are treated as garbage (Kafka's own socket.request.max.bytes default is 100 MiB).
MAX_FRAME_BYTES: Final = 100 * 1024 * 1024
UNSUPPORTED_VERSION: Final = 35


class ApiKey(IntEnum):
    """The Kafka API keys aiokafka clients use (any other key is a plain int to the proxy)."""

    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    FIND_COORDINATOR = 10
    JOIN_GROUP = 11
    HEARTBEAT = 12
    LEAVE_GROUP = 13
    SYNC_GROUP = 14
    DESCRIBE_GROUPS = 15
    LIST_GROUPS = 16
    SASL_HANDSHAKE = 17
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    DELETE_RECORDS = 21
    INIT_PRODUCER_ID = 22
    ADD_PARTITIONS_TO_TXN = 24
    ADD_OFFSETS_TO_TXN = 25
    END_TXN = 26
    TXN_OFFSET_COMMIT = 28
    DESCRIBE_CONFIGS = 32
    SASL_AUTHENTICATE = 36
    DELETE_GROUPS = 42


def api_name(api_key: int) -> str:
    try:
        return ApiKey(api_key).name
    except ValueError:
        return f"api key {api_key}"


class KafkaProxyError(Exception):
    """Base of the proxy's errors."""


class UnsupportedFault(KafkaProxyError, ValueError):
    """A fault rule that cannot apply: an API key or version the proxy cannot decode, or a fault its response
    has no place for (a top-level error code in a response without one)."""


class ProtocolError(KafkaProxyError):
    """A frame the proxy cannot parse, or a response that does not answer the request it was waiting for."""


# --- frames and headers -----------------------------------------------------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's bytes (without the size), or None when the peer closed the connection."""
    try:
        size = int.from_bytes(await reader.readexactly(4), "big", signed=True)
        if not 0 <= size <= MAX_FRAME_BYTES:
            raise ProtocolError(f"a frame of {size} bytes: not the Kafka protocol")
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def sized(frame: bytes) -> bytes:
    return struct.pack(">i", len(frame)) + frame


class RequestHeader(msgspec.Struct, frozen=True):
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    #: where the body starts in the frame (right only for versions the registry knows, or Produce)
    body_offset: int


def parse_request_header(frame: bytes) -> RequestHeader:
    if len(frame) < 10:
        raise ProtocolError(f"a request frame of {len(frame)} bytes is shorter than a request header")
    api_key, api_version, correlation_id, length = struct.unpack_from(">hhih", frame)
    end = 10 + max(length, 0)
    if len(frame) < end:
        raise ProtocolError("a request header's client id runs past the end of its frame")
    client_id = frame[10:end].decode("utf-8", "replace") if length >= 0 else None
    request = request_class(api_key, api_version)
    flexible = request.FLEXIBLE_VERSION if request is not None else (api_key == ApiKey.PRODUCE and api_version >= 9)
    if flexible:
        end = _skip_tagged_fields(frame, end)
    return RequestHeader(api_key, api_version, correlation_id, client_id, end)


def response_correlation_id(frame: bytes) -> int:
    if len(frame) < 4:
        raise ProtocolError("a response frame shorter than its correlation id")
    return int(struct.unpack_from(">i", frame)[0])


def _skip_tagged_fields(frame: bytes, offset: int) -> int:
    buffer = BytesIO(frame)
    buffer.seek(offset)
    try:
        TaggedFields.decode(buffer)
    except (ValueError, struct.error) as error:
        raise ProtocolError(f"bad tagged fields in a header: {error}") from error
    return buffer.tell()


def produce_acks(frame: bytes, header: RequestHeader) -> int:
    """The ``acks`` of a Produce request (0 means the broker sends no response), read without decoding records."""
    at = header.body_offset
    if header.api_version >= 9:  # transactional_id is a compact nullable string
        buffer = BytesIO(frame)
        buffer.seek(at)
        length = _uvarint(buffer) - 1
        at = buffer.tell() + max(length, 0)
    elif header.api_version >= 3:
        (length,) = struct.unpack_from(">h", frame, at)
        at += 2 + max(length, 0)
    return int(struct.unpack_from(">h", frame, at)[0])


def _uvarint(buffer: BytesIO) -> int:
    value, shift = 0, 0
    while True:
        byte = buffer.read(1)
        if not byte:
            raise ProtocolError("a varint runs past the end of its frame")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7


# --- the registry of aiokafka's protocol classes ----------------------------------------------------------------


def _subclasses(cls: type[Any]) -> Iterator[type[Any]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


#: aiokafka's protocol modules, imported for the RequestStruct subclasses they define
_PROTOCOL_MODULES: Final = (
    "admin",
    "commit",
    "coordination",
    "fetch",
    "group",
    "metadata",
    "offset",
    "produce",
    "transaction",
)


@cache
def _registry() -> dict[tuple[int, int], type[Any]]:
    for module in _PROTOCOL_MODULES:
        importlib.import_module(f"aiokafka.protocol.{module}")
    table: dict[tuple[int, int], type[Any]] = {}
    for cls in _subclasses(RequestStruct):
        # First definition wins: aiokafka 0.14 also names a second ListGroups class "v1".
        table.setdefault((cls.API_KEY, cls.API_VERSION), cls)
    return table


def request_class(api_key: int, api_version: int) -> type[Any] | None:
    return _registry().get((api_key, api_version))


def known_versions(api_key: int) -> list[int]:
    return sorted(version for key, version in _registry() if key == api_key)


def editable_class(api_key: int, api_version: int) -> type[Any]:
    """The request class of a version the proxy can decode and re-encode, or :class:`UnsupportedFault`."""
    request = request_class(api_key, api_version)
    if request is None:
        raise UnsupportedFault(
            f"{api_name(api_key)} v{api_version}: aiokafka has no protocol class for it "
            f"(it knows v{known_versions(api_key)})"
        )
    if request.FLEXIBLE_VERSION:
        raise UnsupportedFault(f"{api_name(api_key)} v{api_version} is a flexible version: the proxy does not edit it")
    return request


# --- bodies -----------------------------------------------------------------------------------------------------


def decode_request(frame: bytes, header: RequestHeader) -> Any:
    return _decode_exact(editable_class(header.api_key, header.api_version), frame, header.body_offset)


def with_request_body(frame: bytes, header: RequestHeader, request: Any) -> bytes:
    body: bytes = request.encode()
    return frame[: header.body_offset] + body


def decode_response(frame: bytes, api_key: int, api_version: int) -> Any:
    request = editable_class(api_key, api_version)
    return _decode_exact(request.RESPONSE_TYPE, frame, 4)


def encode_response(correlation_id: int, response: Any) -> bytes:
    body: bytes = response.encode()
    return struct.pack(">i", correlation_id) + body


def _decode_exact(cls: type[Any], frame: bytes, offset: int) -> Any:
    buffer = BytesIO(frame)
    buffer.seek(offset)
    try:
        value = cls.decode(buffer)
    except (ValueError, struct.error, UnicodeDecodeError) as error:
        raise ProtocolError(f"cannot decode {cls.__name__}: {error}") from error
    if buffer.tell() != len(frame):
        raise ProtocolError(f"{cls.__name__} leaves {len(frame) - buffer.tell()} bytes undecoded")
    return value


def fields(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.SCHEMA.names}


def rebuilt(value: Any, **changes: Any) -> Any:
    """A copy of an aiokafka struct with some top-level fields changed."""
    return type(value)(**{**fields(value), **changes})


def _blank(name: str, kind: Any, error_code: int) -> Any:
    """The value a broker puts in a field of an error answer: nothing (empty, none, -1) but the error code."""
    if name == "error_code":
        return error_code
    if isinstance(kind, Schema):
        return tuple(_blank(n, k, 0) for n, k in zip(kind.names, kind.fields, strict=True))
    if isinstance(kind, Array):
        return []
    if isinstance(kind, String):
        return None if name == "error_message" else ""
    if kind in (Bytes, CompactBytes):
        return b""
    if kind is Boolean:
        return False
    if kind is TaggedFields:
        return {}
    return 0 if name == "throttle_time_ms" else -1  # ids, offsets, ports, epochs, timestamps


def has_top_level_error(api_key: int, api_version: int) -> bool:
    return "error_code" in editable_class(api_key, api_version).RESPONSE_TYPE.SCHEMA.names


def error_response(api_key: int, api_version: int, error_code: int) -> Any:
    """The whole answer a broker gives when a request fails as a whole, in the version the client asked for:
    the error code, empty lists (OffsetFetch v2+ answers a group-level error with no topics), -1 ids."""
    if not has_top_level_error(api_key, api_version):
        raise UnsupportedFault(f"{api_name(api_key)} v{api_version} responses have no top-level error code")
    return blank_response(api_key, api_version, error_code)


def blank_response(api_key: int, api_version: int, error_code: int = 0) -> Any:
    response_type = editable_class(api_key, api_version).RESPONSE_TYPE
    schema = response_type.SCHEMA
    return response_type(*[_blank(n, k, error_code) for n, k in zip(schema.names, schema.fields, strict=True)])


# --- per-partition edits ----------------------------------------------------------------------------------------


class TopicsLayout(msgspec.Struct, frozen=True):
    """Where a body keeps its ``topics: [(topic, partitions: [(partition, …)] | [partition])]``."""

    entry: Any  # the topic entry's Schema
    partitions_at: int
    partition_entry: Any  # a Schema, or Int32 in requests that list bare partition numbers


def topics_layout(schema: Any) -> TopicsLayout | None:
    if "topics" not in schema.names:
        return None
    kind = schema.fields[schema.names.index("topics")]
    if not isinstance(kind, Array) or not isinstance(kind.array_of, Schema):
        return None
    entry = kind.array_of
    if "partitions" not in entry.names:
        return None
    at = entry.names.index("partitions")
    partitions = entry.fields[at]
    if not isinstance(partitions, Array):
        return None
    return TopicsLayout(entry, at, partitions.array_of)


def partition_layouts(api_key: int, api_version: int) -> tuple[TopicsLayout, TopicsLayout]:
    """The request's and the response's topic layouts, or :class:`UnsupportedFault` when either lacks one or the
    response's partitions carry no error code."""
    request = editable_class(api_key, api_version)
    asked, answered = topics_layout(request.SCHEMA), topics_layout(request.RESPONSE_TYPE.SCHEMA)
    if (
        asked is None
        or answered is None
        or not isinstance(answered.partition_entry, Schema)
        or "error_code" not in answered.partition_entry.names
    ):
        raise UnsupportedFault(f"{api_name(api_key)} v{api_version} has no per-partition error codes")
    return asked, answered


def _partition_number(entry: Any) -> int:
    return int(entry if isinstance(entry, int) else entry[0])


def listed_partitions(body: Any, layout: TopicsLayout) -> list[tuple[str, int]] | None:
    """The (topic, partition) pairs a body lists; None when its topics are null (OffsetFetch v2+: "all")."""
    if body.topics is None:
        return None
    return [(entry[0], _partition_number(p)) for entry in body.topics for p in entry[layout.partitions_at] or ()]


def without_partitions(body: Any, layout: TopicsLayout, drop: set[tuple[str, int]]) -> Any:
    """The body without the given partitions (and without topics left with none)."""
    topics = []
    for entry in body.topics:
        kept = [p for p in entry[layout.partitions_at] if (entry[0], _partition_number(p)) not in drop]
        if kept:
            topics.append((*entry[: layout.partitions_at], kept, *entry[layout.partitions_at + 1 :]))
    return rebuilt(body, topics=topics)


def partition_error(layout: TopicsLayout, partition: int, error_code: int) -> tuple[Any, ...]:
    entry = layout.partition_entry
    values = [_blank(n, k, error_code) for n, k in zip(entry.names, entry.fields, strict=True)]
    values[entry.names.index("partition")] = partition
    return tuple(values)


def with_partition_errors(response: Any, layout: TopicsLayout, errors: dict[tuple[str, int], int]) -> Any:
    """The response with each (topic, partition) in ``errors`` answered by that error code alone (an entry the
    response lacks is added; its other fields are blank, as a broker's error entries are)."""
    pending = dict(errors)
    topics = []
    for entry in response.topics or []:
        partitions = []
        for p in entry[layout.partitions_at]:
            code = pending.pop((entry[0], p[0]), None)
            partitions.append(p if code is None else partition_error(layout, p[0], code))
        topics.append([*entry[: layout.partitions_at], partitions, *entry[layout.partitions_at + 1 :]])
    for (topic, partition), code in pending.items():
        entry = next((e for e in topics if e[0] == topic), None)
        if entry is None:
            names, kinds = layout.entry.names, layout.entry.fields
            entry = [_blank(n, k, 0) for n, k in zip(names, kinds, strict=True)]
            entry[0] = topic
            topics.append(entry)
        entry[layout.partitions_at] = [*entry[layout.partitions_at], partition_error(layout, partition, code)]
    return rebuilt(response, topics=[tuple(entry) for entry in topics])


# --- the answers the proxy always edits -------------------------------------------------------------------------


def capped_api_versions(response: Any) -> Any:
    """ApiVersions with each API's max version lowered to the newest one aiokafka's classes decode, so that any
    client (librdkafka too) negotiates versions the proxy understands."""
    capped = []
    for api_key, low, high in response.api_versions:
        known = known_versions(api_key)
        capped.append((api_key, low, min(high, known[-1]) if known and known[-1] >= low else high))
    return rebuilt(response, api_versions=capped)


def api_versions_unsupported() -> Any:
    """The answer to an ApiVersions request newer than aiokafka's (v0 body, as Kafka answers one; the client
    retries with a version from the list)."""
    return ApiVersionResponse_v0(
        UNSUPPORTED_VERSION, [(ApiKey.API_VERSIONS, 0, known_versions(ApiKey.API_VERSIONS)[-1])]
    )
