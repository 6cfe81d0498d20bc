"""The Chat Completions client the worker calls once per job: ``await client.complete(job) -> Outcome``.

One :class:`ChatClient` per worker, shared by every job in flight. It composes the parts and passes values
between them; each part keeps its own state. For each job it builds the request
(:func:`~pipeline.client.request.build_request`), then runs attempts through the one
:class:`~pipeline.client.retries.RetryRunner`; each attempt

1. takes its turn from the :class:`~pipeline.client.pacing.Pacer` (an adaptive-concurrency slot and a
   rate-limit permit);
2. sends the request through the :class:`~pipeline.client.exchange.Exchange` (the
   :class:`~pipeline.client.transport.HttpTransport` seam, aiohttp by default), with
   ``X-Client-Request-Id: <job id>`` so the provider (and the simulator) can correlate retries, and gets
   back a decoded ``ChatCompletion`` (a stream is assembled into the same shape) or an ``AttemptFailure``;
3. settles the turn with the pacer (what the provider said and charged);

and on failure the runner asks :func:`~pipeline.client.retries.next_delay` whether and when to try again.

Whatever happens ends in a value: ``Completed`` or ``Failed`` (:mod:`pipeline.outcomes`); the per-job
deadline is failure ``deadline``. Moderation modes ``separate`` and ``auto`` are in
:mod:`pipeline.client.moderation_modes`, their ``/moderations`` calls go through the same exchange and runner.

The API key is a :class:`~pipeline.secret.Secret`: it is revealed only by the transport, into the
``Authorization`` header as each request is sent, and cut out of every message the client produces. Logs
carry the job id, status, attempts and latency, never a prompt, a header or a body.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

from pipeline.backoff import Backoff
from pipeline.client.breaker import PROBE_BACKOFF, Pass, ProviderBreaker, provider_wide_cause
from pipeline.client.concurrency import AdaptiveConcurrency
from pipeline.client.config import ClientConfig
from pipeline.client.exchange import Exchange
from pipeline.client.failures import AttemptFailure
from pipeline.client.moderation import ModerationCall
from pipeline.client.moderation_modes import SeparateModeration
from pipeline.client.pacing import Pacer, PacingObserver
from pipeline.client.ratelimit import RateLimiter
from pipeline.client.request import RequestHeaders, build_request, client_request_id, request_body
from pipeline.client.retries import RetryObserver, RetryRunner, Tally
from pipeline.client.timing import Clock, Sleep
from pipeline.client.transport import AiohttpTransport, HttpTransport, HttpxTransport
from pipeline.outcomes import Completed, Failed, Outcome, Spend
from pipeline.tenancy.tenants import tenant_of
from schemas.chat import ChatCompletion, ChatCompletionRequest, Usage
from schemas.moderations import ModerationCreateRequest, ModerationCreateResponse
from schemas.topics import Job

# --------------------------------------------------------------------------------------------------
# Observer
# --------------------------------------------------------------------------------------------------


class ClientObserver(RetryObserver, PacingObserver, Protocol):
    """Hooks for metrics; the client calls them inline, so they must be quick and must not raise.

    ``on_retry`` comes from the retry runner; ``on_rate_limited``, ``on_usage`` and ``on_concurrency_limit``
    from the pacer.
    """

    def on_attempt(self, status: int | None, latency_s: float) -> None:
        """One chat attempt ended: its HTTP status (``None`` when no response came) and duration."""

    def on_provider_blocked(self, cause: str | None) -> None:
        """The provider breaker opened for ``cause`` (every call held), or closed (``None``)."""


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

    def on_provider_blocked(self, cause: str | None) -> None:
        pass


T = TypeVar("T")


class Held:
    """An attempt the provider breaker held back before it was sent (it goes again once admitted)."""


HELD: Final = Held()

# --------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------


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


@dataclass
class _JobCall:
    """The books of one ``complete`` call."""

    job_id: str
    request_id: str
    started: float
    deadline: float
    #: The job's tenant (``""``: none named), for its rate share (:mod:`pipeline.client.tenant_shares`).
    tenant: str = ""
    #: The job's chat attempts (``/moderations`` calls are not counted), kept current as they go.
    tally: Tally = field(default_factory=Tally)
    #: The job's deadline as a running timeout, pushed back by the time the provider breaker held the job.
    timeout: asyncio.Timeout | None = None
    #: Tokens billed so far, over every attempt that reported usage (paid and then failed ones too).
    spent: Spend | None = None

    def paid(self, result: ChatCompletion | AttemptFailure, requested_model: str) -> None:
        """Count what an attempt was billed for, if it says (a completion's model is the served snapshot)."""
        if isinstance(result, ChatCompletion):
            usage, model = result.usage, result.model
        else:
            usage, model = result.usage, requested_model
        if usage is not None:
            self.spent = (self.spent or Spend(model=model)).plus(model, usage)

    def held(self, seconds: float) -> None:
        """The provider breaker held this job's call for ``seconds``: they do not count against its deadline."""
        if seconds <= 0:
            return
        self.tally.held_s += seconds
        self.deadline += seconds
        if self.timeout is not None and (when := self.timeout.when()) is not None:
            self.timeout.reschedule(when + seconds)


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
        probe_backoff: Backoff = PROBE_BACKOFF,
    ) -> None:
        self.config = config
        self._transport = transport or default_transport(config)
        self._observer: ClientObserver = observer or NullObserver()
        self._clock = clock
        self._headers = RequestHeaders(config)
        self._exchange = Exchange(
            self._transport,
            base_url=config.base_url,
            timeouts=config.timeouts,
            secret=config.api_key,
            wall_clock=wall_clock,
        )
        self._retries = RetryRunner(
            config.retry_policy, observer=self._observer, clock=clock, sleep=sleep, rng=rng or random.Random()
        )
        self.breaker = ProviderBreaker(clock=clock, backoff=probe_backoff, on_change=self._observer.on_provider_blocked)
        self.pacer = Pacer(
            max_concurrency=config.concurrency,
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
            observer=self._observer,
            clock=clock,
            sleep=sleep,
            tenant_shares=config.tenant_rate_shares,
        )

    @property
    def provider_available(self) -> bool:
        """False while a provider-wide failure (a bad key, no quota…) holds every call: see ``breaker``."""
        return self.breaker.available

    @property
    def takes_new_jobs(self) -> bool:
        """Whether the worker should fetch jobs: while the breaker is open only when it wants a fresh call
        to probe with (see :attr:`ProviderBreaker.wants_fresh_call`)."""
        return self.breaker.available or self.breaker.wants_fresh_call

    @property
    def rate_limiter(self) -> RateLimiter:
        return self.pacer.rate_limiter

    @property
    def concurrency(self) -> AdaptiveConcurrency:
        return self.pacer.concurrency

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
            tenant=tenant_of(job.metadata, self.config.tenant_field),
        )
        request = build_request(job, self.config)
        moderation = self._separate_moderation(call, job)
        try:
            try:
                async with asyncio.timeout(self.config.job_deadline_s) as call.timeout:
                    result = await self._chat(call, request)
            except TimeoutError:
                return self._deadline_failed(call)
            finally:
                call.timeout = None  # its block has ended: moderation after it keeps to call.deadline
            if isinstance(result, AttemptFailure):
                return self._failed(call, result)
            completion = result if moderation is None else await moderation.apply(result)
            return Completed(
                completion=completion, attempts=call.tally.attempts, latency_ms=self._elapsed_ms(call), spent=call.spent
            )
        finally:
            if moderation is not None:
                await moderation.aclose()

    # -- chat attempts --------------------------------------------------------------------------------

    async def _chat(self, call: _JobCall, request: ChatCompletionRequest) -> ChatCompletion | AttemptFailure:
        body = request_body(request)
        headers = self._headers.for_call(call.request_id, stream=bool(request.stream))
        return await self._retries.run(
            lambda: self._through_breaker(
                call,
                lambda admitted: self._chat_attempt(call, request, body, headers, admitted),
                request.model,
                self.config.model,
            ),
            job_id=call.job_id,
            deadline=call.deadline,
            tally=call.tally,
        )

    async def _through_breaker(
        self,
        call: _JobCall,
        attempt: Callable[[Pass], Awaitable[T | AttemptFailure | Held]],
        model: str,
        default_model: str,
    ) -> T | AttemptFailure:
        """``attempt``, sent only while the provider breaker lets calls through; a provider-wide failure opens
        it and the attempt waits to go again (held time is not the job's: its deadline moves with it)."""
        breaker = self.breaker
        closures_when_failed: int | None = None
        while True:
            admitted = await breaker.admit(failed_before=closures_when_failed is not None)
            call.held(admitted.waited_s)
            try:
                result = await attempt(admitted)
            except BaseException:
                breaker.abandon(admitted)
                raise
            if isinstance(result, Held):
                continue
            if isinstance(result, AttemptFailure):
                cause = provider_wide_cause(result, model=model, default_model=default_model)
                if cause is not None:
                    if closures_when_failed is not None and breaker.closures > closures_when_failed:
                        breaker.abandon(admitted)
                        return result  # others got through since this call last failed: it is the job's own
                    closures_when_failed = breaker.closures
                    breaker.failed(cause)
                    continue
                if result.status is None:  # no answer at all: the provider has not spoken
                    breaker.abandon(admitted)
                    return result
            breaker.answered(admitted)
            return result

    async def _chat_attempt(
        self, call: _JobCall, request: ChatCompletionRequest, body: bytes, headers: Mapping[str, str], admitted: Pass
    ) -> ChatCompletion | AttemptFailure | Held:
        async with self.pacer.turn(request, call.tenant) as turn:
            if not self.breaker.still_admits(admitted):
                return HELD  # the breaker opened while this call waited for its turn: not sent
            sent = self._clock()
            answer = await self._exchange.chat(body, headers, stream=self.config.stream)
            latency = self._clock() - sent
            self._observer.on_attempt(answer.status, latency)
            self.pacer.settle(turn, answer.status, answer.headers, answer.result, latency)
            call.paid(answer.result, request.model)
            return answer.result

    # -- separate moderation ------------------------------------------------------------------------------

    def _separate_moderation(self, call: _JobCall, job: Job) -> SeparateModeration | None:
        if self.config.moderation_mode == "inline":
            return None
        return SeparateModeration.start(
            self.config.moderation_mode,
            self._moderations(call),
            job.messages,
            job.moderation_model or self.config.moderation_model,
            deadline=call.deadline,
            clock=self._clock,
        )

    def _moderations(self, call: _JobCall) -> ModerationCall:
        """``/moderations`` calls for one job, through the same exchange and retries as its chat attempts."""

        async def moderations(
            request: ModerationCreateRequest, which: str
        ) -> ModerationCreateResponse | AttemptFailure:
            body = request_body(request)
            headers = self._headers.for_call(client_request_id(f"{call.job_id}/moderation-{which}"))
            return await self._retries.run(
                lambda: self._through_breaker(
                    call,
                    lambda _: self._exchange.moderations(body, headers),
                    request.model or self.config.moderation_model,
                    self.config.moderation_model,
                ),
                job_id=call.job_id,
                deadline=call.deadline,
            )

        return moderations

    # -- outcomes -------------------------------------------------------------------------------------------

    def _elapsed_ms(self, call: _JobCall) -> float:
        return (self._clock() - call.started) * 1000

    def _failed(self, call: _JobCall, failure: AttemptFailure) -> Failed:
        return Failed(
            failure=failure.failure,
            message=failure.message,
            attempts=call.tally.attempts,
            latency_ms=self._elapsed_ms(call),
            status=failure.status,
            error_type=failure.error_type,
            code=failure.code,
            spent=call.spent,
        )

    def _deadline_failed(self, call: _JobCall) -> Failed:
        last = call.tally.last_failure
        attempts = call.tally.attempts
        message = f"job deadline of {self.config.job_deadline_s:g}s passed after {attempts} attempt(s)"
        if last is not None:
            message += f" (last: {last.reason})"
        return Failed(
            failure="deadline",
            message=message,
            attempts=attempts,
            latency_ms=self._elapsed_ms(call),
            status=None if last is None else last.status,
            error_type=None if last is None else last.error_type,
            code=None if last is None else last.code,
            spent=call.spent,
        )
