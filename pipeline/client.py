"""The Chat Completions client the worker calls once per job: ``await client.complete(job) -> Outcome``.

One :class:`ChatClient` per worker, shared by every job in flight. For each job it builds the request
(:func:`build_request`: the job's model, params and moderation model over the configured defaults; every
request carries ``moderation`` except in ``separate`` mode), then attempts it:

1. take an adaptive-concurrency slot and a rate-limit permit (:mod:`pipeline.ratelimit`);
2. send it through the :class:`~pipeline.transport.HttpTransport` seam (aiohttp by default), with
   ``X-Client-Request-Id: <job id>`` so the provider (and the simulator) can correlate retries;
3. decode the answer with :mod:`schemas` (a stream is assembled into the same ``ChatCompletion``);
4. on failure, ask :func:`pipeline.retry.next_delay` whether and when to try again.

Whatever happens ends in a value: ``Completed`` or ``Failed`` (:mod:`pipeline.outcomes`); the per-job
deadline is failure ``deadline``. Moderation modes ``separate`` and ``auto`` are in :mod:`pipeline.moderation`.

The API key is a :class:`~pipeline.secret.Secret`: it is revealed only into the ``Authorization`` header
and cut out of every message the client produces. Logs carry the job id, status, attempts and latency,
never a prompt, a header or a body.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal, Protocol, TypeVar, get_args

import msgspec

from pipeline import __version__
from pipeline.config import ConfigError, Option, parse_settings
from pipeline.moderation import moderate_input, moderate_output
from pipeline.outcomes import Completed, Failed, Outcome
from pipeline.ratelimit import (
    AdaptiveConcurrency,
    AimdParams,
    Clock,
    CompletionLengths,
    Permit,
    RateLimiter,
    Signal,
    Sleep,
    TokenEstimate,
    estimate_tokens,
)
from pipeline.retry import QUOTA_ERROR, AttemptFailure, GiveUp, RetryPolicy, failure_from_status, next_delay, scrub
from pipeline.secret import Secret
from pipeline.streaming import read_stream
from pipeline.transport import (
    DEFAULT_MAX_RESPONSE_BYTES,
    AiohttpTransport,
    HttpTransport,
    HttpxTransport,
    Timeouts,
    TransportError,
)
from schemas.chat import (
    ChatCompletion,
    ChatCompletionRequest,
    Moderation,
    ModerationError,
    ModerationOutcome,
    ModerationParams,
    ModerationPolicy,
    ModerationPolicySide,
    StreamOptions,
    Usage,
)
from schemas.moderations import ModerationCreateRequest, ModerationCreateResponse
from schemas.topics import Job

log = logging.getLogger("pipeline.client")

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_MODEL: Final = "gpt-4o-mini"
DEFAULT_MODERATION_MODEL: Final = "omni-moderation-latest"
#: OpenAI accepts ``X-Client-Request-Id`` values of up to 512 printable ASCII characters.
MAX_CLIENT_REQUEST_ID: Final = 512
#: Statuses that say "the provider is overloaded": they cut the adaptive concurrency limit.
OVERLOAD_STATUSES: Final = frozenset({429, 503, 504})

ModerationMode = Literal["inline", "separate", "auto"]
HttpClient = Literal["aiohttp", "httpx"]
PolicySide = Literal["input", "output"]
PolicyMode = Literal["score", "block"]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
PerMinute = Annotated[int, msgspec.Meta(ge=1)]

_completion_decoder: Final = msgspec.json.Decoder(ChatCompletion)
_moderations_decoder: Final = msgspec.json.Decoder(ModerationCreateResponse)
_encoder: Final = msgspec.json.Encoder()
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


class ClientConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the client needs; :meth:`from_env` reads it from the variables in :data:`CLIENT_OPTIONS`."""

    api_key: Secret
    base_url: str = DEFAULT_BASE_URL
    organization: str | None = None
    project: str | None = None
    model: str = DEFAULT_MODEL
    moderation_model: str = DEFAULT_MODERATION_MODEL
    moderation_mode: ModerationMode = "inline"
    #: e.g. ``{"input": "block", "output": "score"}``; empty sends no policy.
    moderation_policy: dict[PolicySide, PolicyMode] = msgspec.field(default_factory=dict)
    stream: bool = False
    #: Calls in flight at most (the worker's ``PIPELINE_CONCURRENCY``); sizes the connection pool.
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    connect_timeout_s: Seconds = 5.0
    read_timeout_s: Seconds = 120.0
    write_timeout_s: Seconds = 30.0
    pool_timeout_s: Seconds = 30.0
    job_deadline_s: Seconds = 600.0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    retry_after_cap_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    requests_per_minute: PerMinute | None = None
    tokens_per_minute: PerMinute | None = None
    max_response_bytes: Annotated[int, msgspec.Meta(ge=1024)] = DEFAULT_MAX_RESPONSE_BYTES
    http_client: HttpClient = "aiohttp"
    #: Certificate verification; there is deliberately no environment variable to turn it off.
    verify_tls: bool = True

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(
            connect=self.connect_timeout_s,
            read=self.read_timeout_s,
            write=self.write_timeout_s,
            pool=self.pool_timeout_s,
        )

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts, retry_after_cap_s=self.retry_after_cap_s)

    @property
    def policy(self) -> ModerationPolicy | None:
        if not self.moderation_policy:
            return None
        sides = {side: ModerationPolicySide(mode=mode) for side, mode in self.moderation_policy.items()}
        return ModerationPolicy(input=sides.get("input"), output=sides.get("output"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ClientConfig:
        """Read the ``OPENAI_*`` and ``PIPELINE_*`` variables; a bad value raises :class:`ConfigError`."""
        if not environ.get("OPENAI_API_KEY", "").strip():
            raise ConfigError(["OPENAI_API_KEY: not set (the provider's API key is required)"])
        policy = environ.get("PIPELINE_MODERATION_POLICY", "")
        if not _policy_is_valid(policy):
            expected = "expected SIDE=MODE pairs, SIDE input or output, MODE score or block"
            raise ConfigError([f"PIPELINE_MODERATION_POLICY={policy!r}: {expected}"])
        config = parse_settings(cls, (*CLIENT_OPTIONS, CONCURRENCY_OPTION), environ)
        url = urllib.parse.urlsplit(config.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError([f"OPENAI_BASE_URL={config.base_url!r}: expected an http(s) URL"])
        return config


def _policy_is_valid(text: str) -> bool:
    """``input=block,output=score`` and the like (an empty text is no policy)."""
    for item in filter(None, (part.strip() for part in text.split(","))):
        side, _, mode = item.partition("=")
        if side.strip() not in get_args(PolicySide) or mode.strip() not in get_args(PolicyMode):
            return False
    return True


CLIENT_OPTIONS: Final[tuple[Option, ...]] = (
    Option("OPENAI_API_KEY", "api_key", "the provider's API key (required)", secret=True),
    Option("OPENAI_BASE_URL", "base_url", f"the API's base URL (default {DEFAULT_BASE_URL})"),
    Option("OPENAI_ORG_ID", "organization", "sent as OpenAI-Organization when set"),
    Option("OPENAI_PROJECT_ID", "project", "sent as OpenAI-Project when set"),
    Option("PIPELINE_MODEL", "model", f"model for jobs that name none (default {DEFAULT_MODEL})"),
    Option("PIPELINE_MODERATION_MODEL", "moderation_model", f"default {DEFAULT_MODERATION_MODEL}"),
    Option("PIPELINE_MODERATION_MODE", "moderation_mode", "inline (default), separate or auto"),
    Option("PIPELINE_MODERATION_POLICY", "moderation_policy", "e.g. input=block,output=score (default: none)"),
    Option("PIPELINE_STREAM", "stream", "stream completions (true/false, default false)"),
    Option("PIPELINE_CONNECT_TIMEOUT_S", "connect_timeout_s", "TCP+TLS connect timeout (default 5)"),
    Option("PIPELINE_READ_TIMEOUT_S", "read_timeout_s", "longest silence while reading (default 120)"),
    Option("PIPELINE_WRITE_TIMEOUT_S", "write_timeout_s", "longest stall while sending (default 30)"),
    Option("PIPELINE_POOL_TIMEOUT_S", "pool_timeout_s", "longest wait for a pooled connection (default 30)"),
    Option("PIPELINE_JOB_DEADLINE_S", "job_deadline_s", "overall time per job, retries included (default 600)"),
    Option("PIPELINE_MAX_ATTEMPTS", "max_attempts", "attempts per job, the first included (default 5)"),
    Option("PIPELINE_RETRY_AFTER_CAP_S", "retry_after_cap_s", "give up when retry-after exceeds it (default 60)"),
    Option("PIPELINE_RPM", "requests_per_minute", "requests/min budget (default: learnt from the provider)"),
    Option("PIPELINE_TPM", "tokens_per_minute", "tokens/min budget (default: learnt from the provider)"),
    Option("PIPELINE_MAX_RESPONSE_BYTES", "max_response_bytes", "response size cap (default 10485760)"),
    Option("PIPELINE_HTTP_CLIENT", "http_client", "aiohttp (default) or httpx"),
)
#: Shared with the worker's settings (jobs in flight), hence not in :data:`CLIENT_OPTIONS`.
CONCURRENCY_OPTION: Final = Option("PIPELINE_CONCURRENCY", "concurrency", "calls in flight (default 256)")


def build_request(job: Job, config: ClientConfig) -> ChatCompletionRequest:
    """The request for a job: its model, params and moderation model override the configured defaults."""
    params = msgspec.structs.asdict(job.params) if job.params is not None else {}
    moderation = None
    if config.moderation_mode != "separate":
        moderation = ModerationParams(model=job.moderation_model or config.moderation_model, policy=config.policy)
    return ChatCompletionRequest(
        model=job.model or config.model,
        messages=job.messages,
        moderation=moderation,
        stream=True if config.stream else None,
        stream_options=StreamOptions(include_usage=True) if config.stream else None,
        **params,
    )


def client_request_id(job_id: str) -> str:
    """The job id as an ``X-Client-Request-Id`` value: as is when it is short printable ASCII, else
    percent-encoded, else (still too long) a SHA-256 of it. Distinct job ids stay distinct."""
    if len(job_id) <= MAX_CLIENT_REQUEST_ID and job_id.isascii() and job_id.isprintable():
        return job_id
    quoted = urllib.parse.quote(job_id, safe="")
    if len(quoted) <= MAX_CLIENT_REQUEST_ID:
        return quoted
    return "sha256-" + hashlib.sha256(job_id.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Observer
# --------------------------------------------------------------------------------------------------


class ClientObserver(Protocol):
    """Hooks for metrics; the client calls them inline, so they must be quick and must not raise."""

    def on_attempt(self, status: int | None, latency_s: float) -> None:
        """One chat attempt ended: its HTTP status (``None`` when no response came) and duration."""

    def on_retry(self, reason: str) -> None:
        """An attempt is retried; ``reason`` is e.g. ``http_429``, ``http_503``, ``timeout``, ``stream``."""

    def on_rate_limited(self) -> None:
        """The provider answered 429."""

    def on_usage(self, model: str, usage: Usage) -> None:
        """A completion arrived with token usage."""

    def on_concurrency_limit(self, limit: int) -> None:
        """The adaptive concurrency limit changed."""


class NullObserver:
    def on_attempt(self, status: int | None, latency_s: float) -> None:
        pass

    def on_retry(self, reason: str) -> None:
        pass

    def on_rate_limited(self) -> None:
        pass

    def on_usage(self, model: str, usage: Usage) -> None:
        pass

    def on_concurrency_limit(self, limit: int) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------


class _RedactedHeaders(dict[str, str]):
    """Request headers whose ``repr`` (in a traceback, a debugger, a log of locals) hides credentials."""

    def __repr__(self) -> str:
        return repr({name: "***" if name == "Authorization" else value for name, value in self.items()})


@dataclass
class _JobCall:
    """The books of one ``complete`` call."""

    job_id: str
    request_id: str
    started: float
    deadline: float
    attempts: int = 0
    last_failure: AttemptFailure | None = None


def default_transport(config: ClientConfig) -> HttpTransport:
    """The transport ``config`` asks for, its pool sized to the concurrency (doubled when ``/moderations``
    calls share it)."""
    pool_size = config.concurrency * (1 if config.moderation_mode == "inline" else 2)
    if config.http_client == "httpx":
        return HttpxTransport(
            pool_size=pool_size, max_response_bytes=config.max_response_bytes, verify=config.verify_tls
        )
    context = ssl.create_default_context()
    if not config.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return AiohttpTransport(pool_size=pool_size, max_response_bytes=config.max_response_bytes, ssl_context=context)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _overload(result: AttemptFailure) -> bool:
    if result.failure == "timeout":
        return True
    return result.status in OVERLOAD_STATUSES and QUOTA_ERROR not in (result.code, result.error_type)


class ChatClient:
    """Sends jobs to the provider; see the module docstring. Use ``async with`` or call :meth:`aclose`."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        transport: HttpTransport | None = None,
        observer: ClientObserver | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._transport = transport or default_transport(config)
        self._observer: ClientObserver = observer or NullObserver()
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._timeouts = config.timeouts
        self._retry = config.retry_policy
        self._secret = config.api_key.reveal()
        self.rate_limiter = RateLimiter(
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
            clock=clock,
            sleep=sleep,
        )
        self.concurrency = AdaptiveConcurrency(AimdParams(max_limit=config.concurrency))
        self.completion_lengths = CompletionLengths()
        base = config.base_url.rstrip("/")
        self._chat_url = base + "/chat/completions"
        self._moderations_url = base + "/moderations"
        headers = {
            "Authorization": f"Bearer {self._secret}",
            "Content-Type": "application/json",
            "User-Agent": f"moderated-pipeline/{__version__}",
        }
        if config.organization:
            headers["OpenAI-Organization"] = config.organization
        if config.project:
            headers["OpenAI-Project"] = config.project
        self._json_headers = _RedactedHeaders({**headers, "Accept": "application/json"})
        self._stream_headers = _RedactedHeaders({**headers, "Accept": "text/event-stream"})
        url = urllib.parse.urlsplit(base)
        if url.scheme == "http" and not _is_loopback(url.hostname or ""):
            log.warning("OPENAI_BASE_URL is plain http to a remote host: the API key travels unencrypted")

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    def __repr__(self) -> str:
        return f"ChatClient(base_url={self.config.base_url!r}, concurrency={self.config.concurrency})"

    # -- the one public call ------------------------------------------------------------------------

    async def complete(self, job: Job) -> Outcome:
        """Complete one job; never raises for provider, network or decode problems."""
        started = self._clock()
        call = _JobCall(
            job_id=job.id,
            request_id=client_request_id(job.id),
            started=started,
            deadline=started + self.config.job_deadline_s,
        )
        request = build_request(job, self.config)
        moderation_model = job.moderation_model or self.config.moderation_model
        input_side: asyncio.Task[ModerationOutcome] | None = None
        if self.config.moderation_mode == "separate":
            input_side = asyncio.create_task(
                moderate_input(self._moderation_caller(call), job.messages, moderation_model)
            )
        try:
            try:
                async with asyncio.timeout(self.config.job_deadline_s):
                    result = await self._chat(call, request)
            except TimeoutError:
                return self._deadline_failed(call)
            if isinstance(result, AttemptFailure):
                return self._failed(call, result)
            completion = result
            if self.config.moderation_mode == "separate" or (
                self.config.moderation_mode == "auto" and completion.moderation is None
            ):
                completion = await self._moderated_separately(call, job, completion, moderation_model, input_side)
            return Completed(completion=completion, attempts=call.attempts, latency_ms=self._elapsed_ms(call))
        finally:
            if input_side is not None and not input_side.done():
                input_side.cancel()

    # -- chat attempts --------------------------------------------------------------------------------

    async def _chat(self, call: _JobCall, request: ChatCompletionRequest) -> ChatCompletion | AttemptFailure:
        body = _encoder.encode(request)
        headers = _RedactedHeaders(self._stream_headers if request.stream else self._json_headers)
        headers["X-Client-Request-Id"] = call.request_id
        return await self._retrying(call, lambda: self._chat_attempt(request, body, headers), counted=True)

    async def _chat_attempt(
        self, request: ChatCompletionRequest, body: bytes, headers: Mapping[str, str]
    ) -> ChatCompletion | AttemptFailure:
        slot = await self.concurrency.acquire()
        limit_before = self.concurrency.limit
        signal: Signal = "neutral"
        latency: float | None = None
        try:
            # Estimated once a slot is ours, so the expected completion length is the latest learnt.
            estimate = estimate_tokens(request, self.completion_lengths.expected(request.model))
            permit = await self.rate_limiter.acquire(estimate.total)
            sent = self._clock()
            if self.config.stream:
                status, response_headers, result = await self._exchange_stream(body, headers)
            else:
                status, response_headers, result = await self._exchange(self._chat_url, body, headers)
            latency = self._clock() - sent
            self._observer.on_attempt(status, latency)
            self._account(permit, estimate, request.n or 1, status, response_headers, result)
            if isinstance(result, AttemptFailure):
                signal = "overload" if _overload(result) else "neutral"
            else:
                signal = "success"
            return result
        finally:
            self.concurrency.release(slot, signal, latency)
            if self.concurrency.limit != limit_before:
                self._observer.on_concurrency_limit(self.concurrency.limit)

    def _account(
        self,
        permit: Permit,
        estimate: TokenEstimate,
        choices: int,
        status: int | None,
        headers: Mapping[str, str],
        result: ChatCompletion | AttemptFailure,
    ) -> None:
        """Keep the rate limiter in step with what the provider said and charged."""
        if status == 429:
            self._observer.on_rate_limited()
        if isinstance(result, AttemptFailure):
            if status == 429 and QUOTA_ERROR not in (result.code, result.error_type):
                self.rate_limiter.on_rate_limited(permit, headers, result.retry_after_s)
            elif status is not None:
                self.rate_limiter.on_response(headers)
            return
        self.rate_limiter.on_response(headers)
        if result.usage is not None:
            self.rate_limiter.on_charged(permit, estimate.charged(result.usage))
            if not estimate.completion_is_budget:
                self.completion_lengths.observe(result.model, result.usage.completion_tokens, choices)
            self._observer.on_usage(result.model, result.usage)

    async def _exchange(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int | None, Mapping[str, str], ChatCompletion | AttemptFailure]:
        try:
            response = await self._transport.post(url, headers, body, self._timeouts)
        except TransportError as exc:
            return None, {}, self._transport_failure(exc)
        if 200 <= response.status < 300:
            return response.status, response.headers, self._decode_completion(response.body)
        return response.status, response.headers, self._status_failure(response.status, response.headers, response.body)

    async def _exchange_stream(
        self, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int | None, Mapping[str, str], ChatCompletion | AttemptFailure]:
        status: int | None = None
        response_headers: Mapping[str, str] = {}
        try:
            async with self._transport.stream(self._chat_url, headers, body, self._timeouts) as response:
                status, response_headers = response.status, response.headers
                if not 200 <= status < 300:
                    error_body = await response.read()
                    return status, response_headers, self._status_failure(status, response_headers, error_body)
                if response_headers.get("content-type", "").startswith("application/json"):
                    # A provider that ignores ``stream`` answers with a plain completion.
                    return status, response_headers, self._decode_completion(await response.read())
                result = await read_stream(response.chunks())
                if isinstance(result, AttemptFailure):
                    result = AttemptFailure(
                        failure=result.failure,
                        message=scrub(result.message, self._secret),
                        retriable=result.retriable,
                        error_type=None if result.error_type is None else scrub(result.error_type, self._secret),
                        code=None if result.code is None else scrub(result.code, self._secret),
                    )
                return status, response_headers, result
        except TransportError as exc:
            if status is None:
                return None, {}, self._transport_failure(exc)
            message = scrub(f"stream cut off: {exc}", self._secret)
            return status, response_headers, AttemptFailure(failure="stream", message=message, retriable=exc.retriable)

    def _decode_completion(self, body: bytes) -> ChatCompletion | AttemptFailure:
        try:
            return _completion_decoder.decode(body)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            message = scrub(f"response is not a chat completion: {exc}", self._secret)
            return AttemptFailure(failure="decode", message=message, retriable=False)

    def _status_failure(self, status: int, headers: Mapping[str, str], body: bytes) -> AttemptFailure:
        return failure_from_status(status, headers, body, now_epoch_s=self._wall_clock(), secret=self._secret)

    def _transport_failure(self, exc: TransportError) -> AttemptFailure:
        return AttemptFailure(failure=exc.failure, message=scrub(str(exc), self._secret), retriable=exc.retriable)

    # -- retries ----------------------------------------------------------------------------------------

    async def _retrying(
        self, call: _JobCall, attempt: Callable[[], Awaitable[T | AttemptFailure]], *, counted: bool
    ) -> T | AttemptFailure:
        """Run ``attempt`` until it succeeds or :func:`next_delay` gives up; ``counted`` attempts are the
        job's (chat) attempts, reported in the outcome."""
        made = 0
        while True:
            made += 1
            if counted:
                call.attempts += 1
            result = await attempt()
            if not isinstance(result, AttemptFailure):
                return result
            if counted:
                call.last_failure = result
            decision = next_delay(
                result,
                attempts_made=made,
                policy=self._retry,
                remaining_s=call.deadline - self._clock(),
                rng=self._rng,
            )
            if isinstance(decision, GiveUp):
                log.debug(
                    "provider call failed",
                    extra={"job_id": call.job_id, "attempts": made, "reason": result.reason, "detail": decision.why},
                )
                return result
            self._observer.on_retry(result.reason)
            log.debug("provider call retried", extra={"job_id": call.job_id, "attempts": made, "reason": result.reason})
            await self._sleep(decision.delay_s)

    # -- separate moderation ------------------------------------------------------------------------------

    def _moderation_caller(
        self, call: _JobCall
    ) -> Callable[[ModerationCreateRequest, str], Awaitable[ModerationCreateResponse | AttemptFailure]]:
        async def moderations(
            request: ModerationCreateRequest, which: str
        ) -> ModerationCreateResponse | AttemptFailure:
            body = _encoder.encode(request)
            headers = _RedactedHeaders(self._json_headers)
            headers["X-Client-Request-Id"] = client_request_id(f"{call.job_id}/moderation-{which}")

            async def attempt() -> ModerationCreateResponse | AttemptFailure:
                try:
                    response = await self._transport.post(self._moderations_url, headers, body, self._timeouts)
                except TransportError as exc:
                    return self._transport_failure(exc)
                if not 200 <= response.status < 300:
                    return self._status_failure(response.status, response.headers, response.body)
                try:
                    return _moderations_decoder.decode(response.body)
                except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
                    message = scrub(f"not a moderation response: {exc}", self._secret)
                    return AttemptFailure(failure="decode", message=message, retriable=False)

            return await self._retrying(call, attempt, counted=False)

        return moderations

    async def _moderated_separately(
        self,
        call: _JobCall,
        job: Job,
        completion: ChatCompletion,
        model: str,
        input_side: asyncio.Task[ModerationOutcome] | None,
    ) -> ChatCompletion:
        """``completion`` with both sides moderated through ``/moderations``. What the job's deadline
        cuts short becomes a ``ModerationError``: the completion is kept, and it goes to review."""
        caller = self._moderation_caller(call)
        output_side = asyncio.create_task(moderate_output(caller, completion, model))
        if input_side is None:
            input_side = asyncio.create_task(moderate_input(caller, job.messages, model))
        done, pending = await asyncio.wait({input_side, output_side}, timeout=max(0.0, call.deadline - self._clock()))
        for task in pending:
            task.cancel()
        late = ModerationError(code="moderation_deadline", message="the job's deadline passed during moderation")
        moderation = Moderation(
            input=input_side.result() if input_side in done else late,
            output=output_side.result() if output_side in done else late,
        )
        return msgspec.structs.replace(completion, moderation=moderation)

    # -- outcomes -------------------------------------------------------------------------------------------

    def _elapsed_ms(self, call: _JobCall) -> float:
        return (self._clock() - call.started) * 1000

    def _failed(self, call: _JobCall, failure: AttemptFailure) -> Failed:
        return Failed(
            failure=failure.failure,
            message=failure.message,
            attempts=call.attempts,
            latency_ms=self._elapsed_ms(call),
            status=failure.status,
            error_type=failure.error_type,
            code=failure.code,
        )

    def _deadline_failed(self, call: _JobCall) -> Failed:
        last = call.last_failure
        message = f"job deadline of {self.config.job_deadline_s:g}s passed after {call.attempts} attempt(s)"
        if last is not None:
            message += f" (last: {last.reason})"
        return Failed(
            failure="deadline",
            message=message,
            attempts=call.attempts,
            latency_ms=self._elapsed_ms(call),
            status=None if last is None else last.status,
            error_type=None if last is None else last.error_type,
            code=None if last is None else last.code,
        )
