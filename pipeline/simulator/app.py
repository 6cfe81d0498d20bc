"""The simulator's request handling: routes, the gate every generating request passes, and the answers.

Order of work for ``POST /v1/chat/completions`` (``/v1/moderations`` passes the same gate):
authorize (401) → decode (400) → directives (400 on a typo) → job id and fault plan → context window (400)
→ rate limits (429) → latency → the injected failure, or the answer (JSON, or SSE when ``stream`` is true).

Every ``/v1`` answer carries ``x-request-id``, ``openai-version``, ``openai-processing-ms`` and, when a
limit is configured, the ``x-ratelimit-*`` headers. ``/sim/*`` is the control plane and needs no key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from pipeline.simulator import errors
from pipeline.simulator.classifier import classify, thresholds_with
from pipeline.simulator.completion import Shape, answer_chat, read_chat_input
from pipeline.simulator.config import SimulatorConfig
from pipeline.simulator.directives import (
    HEADER,
    METADATA_KEY,
    NO_DIRECTIVES,
    DirectiveError,
    Directives,
    extract_from_text,
    parse_directives,
)
from pipeline.simulator.encoding import ENCODER, encode_body, sse, stream_events
from pipeline.simulator.errors import ApiError
from pipeline.simulator.faults import NO_FAULTS, FaultInjector, FaultPlan
from pipeline.simulator.http import HttpConnection, HttpRequest
from pipeline.simulator.latency import sample_ms
from pipeline.simulator.ratelimit import Clock, RateLimiter
from pipeline.simulator.stats import StatsRecorder
from schemas.chat import ChatCompletionRequest
from schemas.models import Model, ModelList
from schemas.moderations import (
    ModerationCategoriesResult,
    ModerationCreateRequest,
    ModerationCreateResponse,
    ModerationInputPart,
    ModerationTextInput,
)

access_log = logging.getLogger("pipeline.simulator.access")

#: The request-correlation header the pipeline's client puts the job id in.
JOB_ID_HEADER: Final = "x-client-request-id"
JSON: Final = "application/json"
EVENT_STREAM: Final = "text/event-stream; charset=utf-8"
DEFAULT_MODERATION_MODEL: Final = "omni-moderation-latest"
MODELS_CREATED: Final = 1_700_000_000
_CHAT_REQUEST: Final = msgspec.json.Decoder(ChatCompletionRequest)
_MODERATION_REQUEST: Final = msgspec.json.Decoder(ModerationCreateRequest)


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


Route = Callable[[Exchange], Awaitable[None]]


class Health(msgspec.Struct, frozen=True):
    """The body of ``GET /sim/health``."""

    status: str


class SimulatorApp:
    """All server state: config, counters, buckets, fault rules. Runs on one event loop."""

    def __init__(self, config: SimulatorConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.stats = StatsRecorder()
        self.limiter = RateLimiter(config.rpm, config.tpm, clock)
        self._rng = random.Random(config.random_seed)
        self.faults = FaultInjector(config.faults, self._rng)
        self._thresholds = thresholds_with(config.thresholds)
        self._id_prefix = os.urandom(10).hex()
        self._counter = 0
        models = [Model(id=m, created=MODELS_CREATED, object="model", owned_by="system") for m in config.models]
        self._models_body = ENCODER.encode(ModelList(object="list", data=models))
        self._routes: dict[tuple[str, str], Route] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/moderations"): self._moderations,
            ("GET", "/v1/models"): self._models,
        }

    def reset(self) -> None:
        """Zero the stats and forget per-job attempt counts (so ``*N`` faults start over)."""
        self.stats.reset()
        self.faults.reset()

    # ---------------------------------------------------------------------------------------------
    # Entry point
    # ---------------------------------------------------------------------------------------------

    async def handle(self, request: HttpRequest, connection: HttpConnection) -> None:
        if request.path.startswith("/sim/"):
            self._control(request, connection)
            return
        self._counter += 1
        exchange = Exchange(request, connection, f"req_{self._id_prefix}{self._counter:012x}", time.perf_counter())
        route = self._routes.get((request.method, request.path))
        self.stats.started(request.path if route is not None else "other")
        try:
            if route is None:
                raise errors.not_found(request.method, request.path)
            self._authorize(request)
            await route(exchange)
        except ApiError as error:
            exchange.extra_headers.update(error.headers)
            self._respond(exchange, error.status, ENCODER.encode(error.body))
        finally:
            self.stats.finished()
            self._record(exchange)

    def _record(self, exchange: Exchange) -> None:
        status = exchange.connection.status
        if status is not None:
            self.stats.by_status[status] += 1
        if exchange.succeeded and exchange.job_id is not None:
            self.stats.successes_by_job[exchange.job_id] += 1
        if self.config.access_log:
            elapsed_ms = (time.perf_counter() - exchange.started) * 1000
            request = exchange.request
            access_log.info("%s %s %s %.1fms", request.method, request.path, status or "-", elapsed_ms)

    def _authorize(self, request: HttpRequest) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.missing_api_key()
        if self.config.api_key is not None and token != self.config.api_key:
            raise errors.invalid_api_key()

    def _headers(self, exchange: Exchange, content_type: str = JSON) -> dict[str, str]:
        headers = {
            "Content-Type": content_type,
            "x-request-id": exchange.request_id,
            "openai-version": "2020-10-01",
            "openai-processing-ms": str(int((time.perf_counter() - exchange.started) * 1000)),
        }
        if self.limiter.enabled:
            headers.update(self.limiter.headers())
        if exchange.extra_headers:
            headers.update(exchange.extra_headers)
        if not exchange.request.keep_alive:
            headers["Connection"] = "close"
        return headers

    def _respond(self, exchange: Exchange, status: int, body: bytes) -> None:
        exchange.connection.respond(status, self._headers(exchange), body)

    # ---------------------------------------------------------------------------------------------
    # The gate every generating request passes
    # ---------------------------------------------------------------------------------------------

    def _directives(self, request: HttpRequest, metadata: dict[str, str] | None) -> Directives:
        found = NO_DIRECTIVES
        header = request.headers.get(HEADER)
        try:
            if header:
                found = parse_directives(header)
            if metadata and METADATA_KEY in metadata:
                found = found.merged_with(parse_directives(metadata[METADATA_KEY]))
        except DirectiveError as exc:
            raise _directive_error(exc) from None
        return found

    def _plan(self, exchange: Exchange, directives: Directives) -> FaultPlan:
        def attempt_key() -> str:
            return exchange.job_id or hashlib.blake2b(exchange.request.body, digest_size=16).hexdigest()

        plan = self.faults.plan(directives.rules, attempt_key)
        for name in plan.names:
            self.stats.by_fault[name] += 1
        exchange.plan = plan
        return plan

    def _admit(self, model: str, tokens: int) -> None:
        refusal = self.limiter.admit(tokens)
        if refusal is not None:
            self.stats.rate_limited[refusal.kind] += 1
            raise errors.rate_limited(model, refusal)

    async def _delay(self, directives: Directives) -> None:
        ms = directives.latency_ms
        if ms is None:
            ms = sample_ms(self.config.latency, self._rng)
        if ms > 0:
            await asyncio.sleep(ms / 1000)

    async def _injected_failure(self, exchange: Exchange, model: str, streaming: bool) -> bool:
        """Carry out the plan's failure if it replaces the answer (raise, reset, hang); ``True`` if it did.

        ``malformed_json``, ``truncated`` and ``stream_error`` break the answer while it is written instead;
        ``stream_error`` on a non-streaming request is a 500.
        """
        match exchange.plan.failure:
            case "429":
                raise errors.injected_rate_limit(model, self.config.fault_retry_after_ms)
            case "insufficient_quota":
                raise errors.insufficient_quota()
            case "500" | "502" | "503" as status:
                raise errors.server_error(int(status))
            case "stream_error" if not streaming:
                raise errors.server_error(500)
            case "context_length_exceeded":
                raise errors.context_length_exceeded(self.config.context_window, self.config.context_window + 1)
            case "hang":
                # Held until the client gives up (its disconnect cancels this) or hang_s passes.
                await asyncio.sleep(self.config.hang_s)
                exchange.connection.close()
                return True
            case "reset":
                exchange.connection.reset()
                return True
            case _:
                return False

    # ---------------------------------------------------------------------------------------------
    # Endpoints
    # ---------------------------------------------------------------------------------------------

    async def _chat(self, exchange: Exchange) -> None:
        request = exchange.request
        try:
            chat = _CHAT_REQUEST.decode(request.body)
            chat_input = read_chat_input(chat)
        except msgspec.ValidationError as exc:
            raise errors.invalid_request(f"Invalid request body: {exc}") from None
        except msgspec.DecodeError:
            raise errors.invalid_request("We could not parse the JSON body of your request.") from None
        except DirectiveError as exc:
            raise _directive_error(exc) from None
        metadata = chat.metadata
        exchange.job_id = request.headers.get(JOB_ID_HEADER) or (metadata.get("job_id") if metadata else None)
        if exchange.job_id is not None:
            self.stats.attempts_by_job[exchange.job_id] += 1
        directives = self._directives(request, metadata).merged_with(chat_input.directives)
        plan = self._plan(exchange, directives)

        n = chat.n or 1
        max_tokens = chat.max_completion_tokens or chat.max_tokens
        requested = chat_input.prompt_tokens + (max_tokens or 0)
        if requested > self.config.context_window:
            raise errors.context_length_exceeded(self.config.context_window, requested)

        self._counter += 1
        answer = answer_chat(
            chat,
            chat_input,
            completion_id=f"chatcmpl-{self._id_prefix}{self._counter:x}",
            created=int(time.time()),
            thresholds=self._thresholds,
            shape=Shape(
                moderation_error_input="moderation_error_input" in plan.shape,
                moderation_error_output="moderation_error_output" in plan.shape,
                moderation_missing="moderation_missing" in plan.shape,
            ),
        )
        usage = answer.completion.usage
        completion_tokens = usage.completion_tokens if usage is not None else 0
        self._admit(chat.model, chat_input.prompt_tokens + (max_tokens * n if max_tokens else completion_tokens))
        await self._delay(directives)
        if await self._injected_failure(exchange, chat.model, streaming=bool(chat.stream)):
            return

        self.stats.prompt_tokens += chat_input.prompt_tokens
        self.stats.completion_tokens += completion_tokens
        self.stats.flagged_input += answer.input_flagged
        self.stats.flagged_output += answer.output_flagged
        unknown_type = "moderation_unknown_type" in plan.shape
        if not chat.stream:
            body = encode_body(answer.completion, unknown_moderation_type=unknown_type)
            self._write_body(exchange, body)
            return
        moderation_first = (
            self.config.stream_moderation == "before_content" or "moderation_before_content" in plan.shape
        )
        events = stream_events(
            answer,
            moderation_first=moderation_first,
            include_usage=chat.stream_options is not None and bool(chat.stream_options.include_usage),
            unknown_moderation_type=unknown_type,
        )
        await self._write_stream(exchange, [event.data for event in events], [event.content for event in events])

    async def _moderations(self, exchange: Exchange) -> None:
        request = exchange.request
        try:
            moderation = _MODERATION_REQUEST.decode(request.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise errors.invalid_request(f"Invalid request body: {exc}") from None
        model = moderation.model or DEFAULT_MODERATION_MODEL
        directives = self._directives(request, None)
        groups: list[tuple[list[str], list[str]]] = []
        for texts, urls in _moderation_groups(moderation.input):
            cleaned = []
            for raw in texts:
                try:
                    text, found = extract_from_text(raw)
                except DirectiveError as exc:
                    raise _directive_error(exc) from None
                cleaned.append(text)
                directives = directives.merged_with(found)
            groups.append((cleaned, urls))
        self._plan(exchange, directives)
        self._admit(model, sum(len(text) for texts, _ in groups for text in texts) // 4 + 1)
        await self._delay(directives)
        if await self._injected_failure(exchange, model, streaming=False):
            return
        results = []
        for texts, urls in groups:
            result = classify(texts, urls, model=model, thresholds=self._thresholds)
            results.append(
                ModerationCategoriesResult(
                    categories=result.categories,
                    category_applied_input_types=result.category_applied_input_types,
                    category_scores=result.category_scores,
                    flagged=result.flagged,
                )
            )
        self._counter += 1
        reply = ModerationCreateResponse(id=f"modr-{self._id_prefix}{self._counter:x}", model=model, results=results)
        self._write_body(exchange, ENCODER.encode(reply))

    async def _models(self, exchange: Exchange) -> None:
        exchange.succeeded = True
        self._respond(exchange, 200, self._models_body)

    # ---------------------------------------------------------------------------------------------
    # Writing answers, whole or deliberately broken
    # ---------------------------------------------------------------------------------------------

    def _write_body(self, exchange: Exchange, body: bytes) -> None:
        match exchange.plan.failure:
            case "malformed_json":
                self._respond(exchange, 200, body[:-1] + b",,}")
            case "truncated":
                exchange.connection.respond_truncated(200, self._headers(exchange), body)
            case _:
                exchange.succeeded = True
                self._respond(exchange, 200, body)

    async def _write_stream(self, exchange: Exchange, events: Sequence[bytes], content: Sequence[bool]) -> None:
        """Send the events; the plan's failure may cut the stream, break one event or end it with an error."""
        connection = exchange.connection
        failure = exchange.plan.failure
        connection.start_stream(200, self._headers(exchange, EVENT_STREAM))
        last = len(events) // 2 if failure == "truncated" else len(events)
        first_content = True
        for data, is_content in zip(events[:last], content[:last], strict=True):
            if not is_content:
                await connection.send_chunk(data)
                continue
            delay_ms = self.config.ttft_ms if first_content else self.config.per_token_ms
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

    # ---------------------------------------------------------------------------------------------
    # Control plane: /sim/*
    # ---------------------------------------------------------------------------------------------

    def _control(self, request: HttpRequest, connection: HttpConnection) -> None:
        headers = {"Content-Type": JSON}
        match (request.method, request.path):
            case ("GET", "/sim/stats"):
                connection.respond(200, headers, ENCODER.encode(self.stats.snapshot()))
            case ("POST", "/sim/stats/reset"):
                self.reset()
                connection.respond(200, headers, ENCODER.encode(self.stats.snapshot()))
            case ("GET", "/sim/health"):
                connection.respond(200, headers, ENCODER.encode(Health(status="ok")))
            case _:
                error = errors.not_found(request.method, request.path)
                connection.respond(error.status, headers, ENCODER.encode(error.body))


def _directive_error(exc: DirectiveError) -> ApiError:
    return errors.invalid_request(str(exc), param=HEADER, code="sim_invalid_directive")


def _moderation_groups(value: str | Sequence[str | ModerationInputPart]) -> list[tuple[list[str], list[str]]]:
    """The ``(texts, image urls)`` each result covers: one per string, or one for a list of parts."""
    if isinstance(value, str):
        return [([value], [])]
    groups: list[tuple[list[str], list[str]]] = []
    texts: list[str] = []
    urls: list[str] = []
    for item in value:
        if isinstance(item, str):
            groups.append(([item], []))
        elif isinstance(item, ModerationTextInput):
            texts.append(item.text)
        else:
            urls.append(item.image_url.url)
    if texts or urls:
        groups.append((texts, urls))
    return groups
