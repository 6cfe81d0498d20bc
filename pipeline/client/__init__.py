"""The provider client: ``await ChatClient(config).complete(job) -> Outcome``, one HTTP exchange at a time,
one retry runner, worker-wide pacing, and the moderation modes.

Module map: each module imports only from rows below its own (arrows point down, never up or sideways)::

    chat.py              ChatClient: builds each job's call and passes values between the parts below;
       │                 the observer protocol (ClientObserver, NullObserver), default_transport
       ▼
    request.py           build_request, client_request_id, RequestHeaders (all but Authorization)
    moderation_modes.py  separate/auto: a job's input and output through /moderations, deadline-bound
       │
       ▼
    config.py            ClientConfig from OPENAI_* / PIPELINE_*: CLIENT_OPTIONS, defaults, policy parsing
    exchange.py          one POST or stream → ChatCompletion | ModerationCreateResponse | AttemptFailure
    pacing.py            Pacer: a concurrency slot + a rate-limit permit per attempt, the books after it
       │
       ▼
    tenant_shares.py     TenantShares: a capped tenant's share of each model's lanes (PIPELINE_TENANT_RATE_SHARES)
       │
       ▼
    retries.py           RetryPolicy (one pipeline.backoff.Backoff), next_delay, the one RetryRunner
    breaker.py           ProviderBreaker: provider-wide failures (401, 403, quota, default model) hold every call
    streaming.py         server-sent events → one ChatCompletion
    moderation.py        /moderations requests from a job, answers → the inline moderation shape
    concurrency.py       AdaptiveConcurrency: slow start, then AIMD on calls in flight
    ratelimit.py         RateLimiter: a requests lane and a tokens lane per model, fed x-ratelimit-*
    tokens.py            estimate_tokens, TokenEstimate, CompletionLengths
       │
       ▼
    failures.py          AttemptFailure, failure_from_status, retry-after / x-ratelimit-reset parsing, scrub
    transport.py         the HTTP seam (aiohttp, httpx), Timeouts; AuthorizedTransport: the key, added at send
    timing.py            Clock, Sleep (injected time)
    lanes.py             Lane: one limit of one model, its window learnt, paced smoothly under it (TokenBucket)
       │
       ▼
    responses.py         RawResponse, the TransportError hierarchy, bodies capped and decoded (gzip, deflate)

Where a 429 is handled: :mod:`~pipeline.client.failures` reads it (retriable unless ``insufficient_quota``;
``retry-after``, ``x-ratelimit-reset-*``), :mod:`~pipeline.client.pacing` pauses every call to that model,
syncs its lanes and halves the refused one's pace (:mod:`~pipeline.client.ratelimit`, :mod:`~pipeline.client.lanes`) and
cuts the concurrency limit, and :mod:`~pipeline.client.retries` decides when the call is tried again.
"""

from __future__ import annotations

from pipeline.client.chat import ChatClient, ClientObserver, NullObserver, default_transport
from pipeline.client.config import (
    CLIENT_OPTIONS,
    CONCURRENCY_OPTION,
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    DEFAULT_MODERATION_MODEL,
    ClientConfig,
    ModerationMode,
)
from pipeline.client.failures import AttemptFailure
from pipeline.client.request import build_request, client_request_id
from pipeline.client.retries import RetryPolicy
from pipeline.client.transport import (
    AiohttpTransport,
    HttpTransport,
    HttpxTransport,
    RawResponse,
    StreamingResponse,
    Timeouts,
    TransportError,
)

__all__ = [
    "CLIENT_OPTIONS",
    "CONCURRENCY_OPTION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "DEFAULT_MODERATION_MODEL",
    "AiohttpTransport",
    "AttemptFailure",
    "ChatClient",
    "ClientConfig",
    "ClientObserver",
    "HttpTransport",
    "HttpxTransport",
    "ModerationMode",
    "NullObserver",
    "RawResponse",
    "RetryPolicy",
    "StreamingResponse",
    "Timeouts",
    "TransportError",
    "build_request",
    "client_request_id",
    "default_transport",
]
