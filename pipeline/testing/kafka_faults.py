"""Fault rules and what the proxy does with one request: the plan (forward it or not, answer it, edit the answer,
delay it, close the connection) and the commit metadata it keeps.

Per request at most one *outcome* rule applies (the first armed one that matches: a disconnect, a top-level
error or per-partition errors) plus at most one delay rule. A rule counts a hit each time it applies and disarms
after ``times`` hits (``None``: until removed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pipeline.testing.kafka_wire import (
    ApiKey,
    RequestHeader,
    UnsupportedFault,
    api_name,
    api_versions_unsupported,
    blank_response,
    decode_request,
    encode_response,
    error_response,
    has_top_level_error,
    known_versions,
    listed_partitions,
    partition_layouts,
    produce_acks,
    rebuilt,
    topics_layout,
    with_partition_errors,
    with_request_body,
    without_partitions,
)

#: An error code, or an aiokafka error class (its ``errno``), e.g. ``aiokafka.errors.NotCoordinatorError``.
ErrorCode = int | type[Exception]


def error_code(error: ErrorCode) -> int:
    code = error if isinstance(error, int) else getattr(error, "errno", None)
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"not a Kafka error code or an aiokafka error class with an errno: {error!r}")
    return code


class Match(msgspec.Struct, frozen=True, kw_only=True):
    """Which requests a rule applies to: an API key, optionally one version and one client id."""

    api_key: int
    version: int | None = None
    client_id: str | None = None

    def accepts(self, header: RequestHeader) -> bool:
        return (
            header.api_key == self.api_key
            and (self.version is None or header.api_version == self.version)
            and (self.client_id is None or header.client_id == self.client_id)
        )

    def __str__(self) -> str:
        version = "" if self.version is None else f" v{self.version}"
        return f"{api_name(self.api_key)}{version}"


class TopLevelError(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Answer the whole request with this error (the rest of the answer empty)."""

    code: int
    #: let the broker act on the request first (then the client is told it failed)
    forward: bool = False


class PartitionErrors(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Answer the chosen partitions with this error; the others are the broker's answer."""

    code: int
    topics: frozenset[str] | None = None
    partitions: frozenset[int] | None = None
    #: let the broker act on the refused partitions too (a lost acknowledgement) instead of never seeing them
    forward: bool = False

    def covers(self, topic: str, partition: int) -> bool:
        return (self.topics is None or topic in self.topics) and (
            self.partitions is None or partition in self.partitions
        )


class Delay(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Hold the response this long (later responses on the connection wait behind it, as Kafka orders them)."""

    seconds: float


class Disconnect(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Close the client's connection on the request: before forwarding it, or (``forward``) once the broker has
    answered it, dropping the answer."""

    forward: bool = False


Fault = TopLevelError | PartitionErrors | Delay | Disconnect


class Rule:
    """A fault armed in a proxy. ``hits`` counts the requests it applied to; it disarms after ``times`` of them."""

    def __init__(self, match: Match, fault: Fault, times: int | None) -> None:
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (or None: until removed), not {times}")
        validate(match, fault)
        self.match = match
        self.fault = fault
        self.times = times
        self.hits = 0

    @property
    def active(self) -> bool:
        return self.times is None or self.hits < self.times

    def __repr__(self) -> str:
        times = "until removed" if self.times is None else f"{self.hits}/{self.times} hits"
        return f"Rule({self.match}: {self.fault!r}, {times})"


def validate(match: Match, fault: Fault) -> None:
    """Raise :class:`UnsupportedFault` for a fault the proxy could never apply to the matched requests."""
    if isinstance(fault, Delay | Disconnect):
        if isinstance(fault, Delay) and fault.seconds < 0:
            raise ValueError(f"a delay cannot be negative: {fault.seconds}")
        return
    versions = [match.version] if match.version is not None else known_versions(match.api_key)
    problems: list[str] = []
    for version in versions:
        try:
            if isinstance(fault, PartitionErrors):
                partition_layouts(match.api_key, version)
            elif not has_top_level_error(match.api_key, version):
                raise UnsupportedFault(f"{api_name(match.api_key)} v{version} responses have no top-level error code")
        except UnsupportedFault as problem:
            problems.append(str(problem))
        else:
            return
    kind = "a top-level error" if isinstance(fault, TopLevelError) else "per-partition errors"
    raise UnsupportedFault(f"cannot inject {kind} into {match}: " + ("; ".join(problems) or "no versions known"))


class CommitMetadata:
    """(group, topic, partition) → (offset, metadata) from each OffsetCommit the broker accepted, served back in
    OffsetFetch answers whose offset matches (the embedded broker reads commit metadata back empty)."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, str, int], tuple[int, str]] = {}

    def remember(self, request: Any) -> Callable[[Any], Any]:
        layout = topics_layout(request.SCHEMA)
        assert layout is not None
        names = layout.partition_entry.names
        at_offset, at_metadata = names.index("offset"), names.index("metadata")
        asked = {
            (entry[0], p[0]): (p[at_offset], p[at_metadata] or "")
            for entry in request.topics or []
            for p in entry[layout.partitions_at]
        }

        def keep_accepted(response: Any) -> Any:
            for topic, partitions in response.topics or []:
                for partition, code in partitions:
                    if code == 0 and (topic, partition) in asked:
                        self.kept[request.consumer_group, topic, partition] = asked[topic, partition]
            return response

        return keep_accepted

    def serve(self, group: str) -> Callable[[Any], Any]:
        def fill(response: Any) -> Any:
            topics = []
            for topic, partitions in response.topics or []:
                filled = []
                for partition, offset, metadata, code in partitions:
                    kept = self.kept.get((group, topic, partition))
                    if code == 0 and kept is not None and kept[0] == offset:
                        metadata = kept[1]
                    filled.append((partition, offset, metadata, code))
                topics.append((topic, filled))
            return rebuilt(response, topics=topics)

        return fill


@dataclass
class Plan:
    """What the proxy does with one request."""

    #: the frame sent to the broker (None: not forwarded)
    forward: bytes | None
    #: the client waits for an answer (False only for Produce with acks=0)
    answered: bool = True
    #: the answer the proxy gives itself (correlation id + body), when it does not wait for the broker's
    answer: bytes | None = None
    #: edits of the broker's decoded answer, in order
    edits: list[Callable[[Any], Any]] = field(default_factory=list)
    #: the request as forwarded, when the proxy took partitions out of it
    forwarded_request: Any = None
    delay: float = 0.0
    close_before_forwarding: bool = False
    close_instead_of_answering: bool = False


def plan_request(header: RequestHeader, frame: bytes, rules: list[Rule], commits: CommitMetadata | None) -> Plan:
    """Decide what happens to a request; raises :class:`UnsupportedFault` when a matching rule cannot apply."""
    key, version = header.api_key, header.api_version
    plan = Plan(forward=frame)
    if key == ApiKey.PRODUCE:
        plan.answered = produce_acks(frame, header) != 0
    elif key == ApiKey.API_VERSIONS and version > known_versions(key)[-1]:
        return Plan(forward=None, answer=encode_response(header.correlation_id, api_versions_unsupported()))
    request: Any = None
    if commits is not None and key in (ApiKey.OFFSET_COMMIT, ApiKey.OFFSET_FETCH):
        try:
            request = decode_request(frame, header)
        except UnsupportedFault as problem:
            raise UnsupportedFault(f"cannot keep commit metadata: {problem}") from problem
    matching = [rule for rule in rules if rule.active and rule.match.accepts(header)]
    for rule in matching:  # the first outcome that applies
        fault = rule.fault
        if isinstance(fault, Delay):
            continue
        if isinstance(fault, PartitionErrors):
            request = request if request is not None else decode_request(frame, header)
            if not _apply_partition_errors(plan, header, frame, request, fault):
                continue
        elif isinstance(fault, TopLevelError):
            _apply_top_level_error(plan, header, fault)
        else:
            plan.close_before_forwarding = not fault.forward
            plan.close_instead_of_answering = fault.forward
        rule.hits += 1
        break
    for rule in matching:  # and the first delay
        if isinstance(rule.fault, Delay):
            plan.delay = rule.fault.seconds
            rule.hits += 1
            break
    if commits is not None and plan.forward is not None and request is not None:
        if key == ApiKey.OFFSET_COMMIT:
            forwarded = plan.forwarded_request if plan.forwarded_request is not None else request
            plan.edits.insert(0, commits.remember(forwarded))
        elif key == ApiKey.OFFSET_FETCH:
            plan.edits.insert(0, commits.serve(request.consumer_group))
    return plan


def _apply_top_level_error(plan: Plan, header: RequestHeader, fault: TopLevelError) -> None:
    key, version = header.api_key, header.api_version
    answer = error_response(key, version, fault.code)  # raises UnsupportedFault for this version
    if fault.forward:
        plan.edits.append(lambda _broker_answer: answer)
    else:
        plan.forward = None
        plan.answer = encode_response(header.correlation_id, answer) if plan.answered else None


def _apply_partition_errors(
    plan: Plan, header: RequestHeader, frame: bytes, request: Any, fault: PartitionErrors
) -> bool:
    """Plan the errors; False when the request lists none of the fault's partitions."""
    key, version = header.api_key, header.api_version
    asked, answered = partition_layouts(key, version)
    listed = listed_partitions(request, asked)
    refused = None if listed is None else {tp for tp in listed if fault.covers(*tp)}
    if refused is not None and not refused:
        return False

    def errors_in(response: Any) -> dict[tuple[str, int], int]:
        present = listed_partitions(response, answered) or []
        return {tp: fault.code for tp in [*present, *(refused or ())] if fault.covers(*tp)}

    if refused is None or fault.forward:
        plan.edits.append(lambda response: with_partition_errors(response, answered, errors_in(response)))
        return True
    remaining = without_partitions(request, asked, refused)
    if remaining.topics:
        plan.forward = with_request_body(frame, header, remaining)
        plan.forwarded_request = remaining
        plan.edits.append(lambda response: with_partition_errors(response, answered, errors_in(response)))
    else:
        plan.forward = None
        if plan.answered:
            answer = with_partition_errors(
                blank_response(key, version), answered, errors_in(blank_response(key, version))
            )
            plan.answer = encode_response(header.correlation_id, answer)
    return True
