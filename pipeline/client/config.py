"""The client's settings: :class:`ClientConfig`, read from the ``OPENAI_*`` and ``PIPELINE_*`` variables in
:data:`CLIENT_OPTIONS` (and :data:`CONCURRENCY_OPTION`, shared with the worker), with the defaults.

A value is checked where it is read: a bad one raises :class:`~pipeline.config.ConfigError` naming the
variable, never echoing the key. The derived values the other parts take (:attr:`ClientConfig.timeouts`,
:attr:`ClientConfig.retry_policy`, :attr:`ClientConfig.policy`) are built here, once.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Final, Literal, get_args

import msgspec

from pipeline.client.retries import RetryPolicy
from pipeline.client.transport import DEFAULT_MAX_RESPONSE_BYTES, Timeouts
from pipeline.config import ConfigError, Option, parse_settings
from pipeline.secret import Secret
from schemas.chat import ModerationPolicy, ModerationPolicySide

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_MODEL: Final = "gpt-4o-mini"
DEFAULT_MODERATION_MODEL: Final = "omni-moderation-latest"

ModerationMode = Literal["inline", "separate", "auto"]
HttpClient = Literal["aiohttp", "httpx"]
PolicySide = Literal["input", "output"]
PolicyMode = Literal["score", "block"]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
PerMinute = Annotated[int, msgspec.Meta(ge=1)]
RateShare = Annotated[float, msgspec.Meta(gt=0, le=1)]


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
    #: A non-streamed chat call as a whole (see :class:`~pipeline.client.transport.Timeouts`): as the
    #: OpenAI SDK's default, room for a reasoning model at high effort.
    call_timeout_s: Seconds = 600.0
    write_timeout_s: Seconds = 30.0
    pool_timeout_s: Seconds = 30.0
    job_deadline_s: Seconds = 600.0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    retry_after_cap_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    requests_per_minute: PerMinute | None = None
    tokens_per_minute: PerMinute | None = None
    #: Tenants capped at a share of each model's limits (see :mod:`pipeline.client.tenant_shares`), and the
    #: job metadata field naming a job's tenant (the worker's ``PIPELINE_TENANT_FIELD``).
    tenant_rate_shares: dict[str, RateShare] = msgspec.field(default_factory=dict)
    tenant_field: Annotated[str, msgspec.Meta(min_length=1)] = "tenant"
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
            call=self.call_timeout_s,
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
        config = parse_settings(cls, (*CLIENT_OPTIONS, CONCURRENCY_OPTION, TENANT_FIELD_OPTION), environ)
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
    Option("PIPELINE_READ_TIMEOUT_S", "read_timeout_s", "longest stream silence; a /moderations call (default 120)"),
    Option("PIPELINE_CALL_TIMEOUT_S", "call_timeout_s", "a non-streamed chat call, whole answer (default 600)"),
    Option("PIPELINE_WRITE_TIMEOUT_S", "write_timeout_s", "longest stall while sending (default 30)"),
    Option("PIPELINE_POOL_TIMEOUT_S", "pool_timeout_s", "longest wait for a pooled connection (default 30)"),
    Option("PIPELINE_JOB_DEADLINE_S", "job_deadline_s", "overall time per job, retries included (default 600)"),
    Option("PIPELINE_MAX_ATTEMPTS", "max_attempts", "attempts per job, the first included (default 5)"),
    Option("PIPELINE_RETRY_AFTER_CAP_S", "retry_after_cap_s", "give up when retry-after exceeds it (default 60)"),
    Option("PIPELINE_RPM", "requests_per_minute", "requests/min budget (default: learnt from the provider)"),
    Option("PIPELINE_TPM", "tokens_per_minute", "tokens/min budget (default: learnt from the provider)"),
    Option(
        "PIPELINE_TENANT_RATE_SHARES",
        "tenant_rate_shares",
        "tenants capped at a share of each model's requests and tokens per minute: acme=0.5 (default: none)",
    ),
    Option("PIPELINE_MAX_RESPONSE_BYTES", "max_response_bytes", "response size cap, decompressed (default 10485760)"),
    Option("PIPELINE_HTTP_CLIENT", "http_client", "aiohttp (default) or httpx"),
)
#: Shared with the worker's settings (jobs in flight), hence not in :data:`CLIENT_OPTIONS`.
CONCURRENCY_OPTION: Final = Option("PIPELINE_CONCURRENCY", "concurrency", "calls in flight (default 256)")
#: Shared with the worker's settings (budgets, cost metrics), hence not in :data:`CLIENT_OPTIONS` either.
TENANT_FIELD_OPTION: Final = Option("PIPELINE_TENANT_FIELD", "tenant_field", "job metadata field naming the tenant")
