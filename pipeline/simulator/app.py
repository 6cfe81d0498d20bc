"""The simulator's request handling: routes, authorization, the endpoints and the control plane.

Order of work for ``POST /v1/chat/completions`` (``/v1/moderations`` passes the same gate):
authorize (401) → decode (400) → directives (400 on a typo) → job id and fault plan → context window (400)
→ rate limits (429) → latency → the injected failure, or the answer (JSON, or SSE when ``stream`` is true).
The gate is :mod:`pipeline.simulator.gate`, the writing of answers and their headers
:mod:`pipeline.simulator.exchange`. A provider-wide outage (:mod:`pipeline.simulator.outage`) refuses every
``/v1`` request once it is authorized. ``/sim/*`` is the control plane and needs no key.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Final

import msgspec

from pipeline.simulator import errors
from pipeline.simulator.classifier import classify, thresholds_with
from pipeline.simulator.completion import Shape, answer_chat, read_chat_input
from pipeline.simulator.config import SimulatorConfig
from pipeline.simulator.directives import DirectiveError, extract_from_text
from pipeline.simulator.encoding import ENCODER, encode_body, stream_events
from pipeline.simulator.errors import ApiError
from pipeline.simulator.exchange import JSON, AnswerWriter, Exchange
from pipeline.simulator.gate import Gate, directive_error
from pipeline.simulator.http import HttpConnection, HttpRequest
from pipeline.simulator.outage import Outage, ProviderOutage, refusal
from pipeline.simulator.ratelimit import Clock
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
DEFAULT_MODERATION_MODEL: Final = "omni-moderation-latest"
MODELS_CREATED: Final = 1_700_000_000
_CHAT_REQUEST: Final = msgspec.json.Decoder(ChatCompletionRequest)
_MODERATION_REQUEST: Final = msgspec.json.Decoder(ModerationCreateRequest)
_OUTAGE: Final = msgspec.json.Decoder(Outage)


class _ModelNamed(msgspec.Struct):
    model: str | None = None


_MODEL_NAMED: Final = msgspec.json.Decoder(_ModelNamed)

Route = Callable[[Exchange], Awaitable[None]]


class Health(msgspec.Struct, frozen=True):
    """The body of ``GET /sim/health``."""

    status: str


class SimulatorApp:
    """All server state: config, counters, the gate, the answer writer. Runs on one event loop."""

    def __init__(self, config: SimulatorConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.stats = StatsRecorder()
        self.outage = ProviderOutage(clock)
        self._gate = Gate(config, self.stats, clock)
        self._writer = AnswerWriter(self._gate.limiter, ttft_ms=config.ttft_ms, per_token_ms=config.per_token_ms)
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
        self._gate.reset()

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
            self._refuse_in_outage(request)
            await route(exchange)
        except ApiError as error:
            exchange.extra_headers.update(error.headers)
            self._writer.respond(exchange, error.status, ENCODER.encode(error.body))
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

    def _refuse_in_outage(self, request: HttpRequest) -> None:
        error = self.outage.error()
        if error is None:
            return
        self.stats.by_fault[f"outage_{error}"] += 1
        try:
            model = _MODEL_NAMED.decode(request.body).model if request.body else None
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            model = None
        raise refusal(error, model)

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
            raise directive_error(exc) from None
        metadata = chat.metadata
        exchange.job_id = request.headers.get(JOB_ID_HEADER) or (metadata.get("job_id") if metadata else None)
        if exchange.job_id is not None:
            self.stats.attempts_by_job[exchange.job_id] += 1
        directives = self._gate.directives(request, metadata).merged_with(chat_input.directives)
        chat_input = replace(chat_input, directives=directives)
        plan = self._gate.plan(exchange, directives)

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
                moderation_results_short="moderation_results_short" in plan.shape,
                moderation_again_clean="moderation_again_clean" in plan.shape,
                moderation_again_error="moderation_again_error" in plan.shape,
            ),
        )
        usage = answer.completion.usage
        completion_tokens = usage.completion_tokens if usage is not None else 0
        self._gate.admit(chat.model, chat_input.prompt_tokens + (max_tokens * n if max_tokens else completion_tokens))
        await self._gate.delay(directives)
        if await self._gate.injected_failure(exchange, chat.model, streaming=bool(chat.stream)):
            return

        self.stats.prompt_tokens += chat_input.prompt_tokens
        self.stats.completion_tokens += completion_tokens
        self.stats.flagged_input += answer.input_flagged
        self.stats.flagged_output += answer.output_flagged
        unknown_type = "moderation_unknown_type" in plan.shape
        if not chat.stream:
            body = encode_body(answer.completion, unknown_moderation_type=unknown_type)
            self._writer.write_body(exchange, body)
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
        await self._writer.write_stream(exchange, [event.data for event in events], [event.content for event in events])

    async def _moderations(self, exchange: Exchange) -> None:
        request = exchange.request
        try:
            moderation = _MODERATION_REQUEST.decode(request.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise errors.invalid_request(f"Invalid request body: {exc}") from None
        model = moderation.model or DEFAULT_MODERATION_MODEL
        directives = self._gate.directives(request, None)
        groups: list[tuple[list[str], list[str]]] = []
        for texts, urls in _moderation_groups(moderation.input):
            cleaned = []
            for raw in texts:
                try:
                    text, found = extract_from_text(raw)
                except DirectiveError as exc:
                    raise directive_error(exc) from None
                cleaned.append(text)
                directives = directives.merged_with(found)
            groups.append((cleaned, urls))
        self._gate.plan(exchange, directives)
        self._gate.admit(model, sum(len(text) for texts, _ in groups for text in texts) // 4 + 1)
        await self._gate.delay(directives)
        if await self._gate.injected_failure(exchange, model, streaming=False):
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
        self._writer.write_body(exchange, ENCODER.encode(reply))

    async def _models(self, exchange: Exchange) -> None:
        exchange.succeeded = True
        self._writer.respond(exchange, 200, self._models_body)

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
            case ("GET" | "POST" | "DELETE" as method, "/sim/outage"):
                status, body = self._outage_control(method, request.body)
                connection.respond(status, headers, body)
            case _:
                error = errors.not_found(request.method, request.path)
                connection.respond(error.status, headers, ENCODER.encode(error.body))

    def _outage_control(self, method: str, body: bytes) -> tuple[int, bytes]:
        """``/sim/outage``: start one (POST), end it (DELETE) or look (GET); answers the state, or a 400."""
        if method == "POST":
            try:
                self.outage.start(_OUTAGE.decode(body))
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                error = errors.invalid_request(f"Invalid outage: {exc}")
                return error.status, ENCODER.encode(error.body)
        elif method == "DELETE":
            self.outage.end()
        return 200, ENCODER.encode(self.outage.state())


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
