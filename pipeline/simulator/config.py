"""Server-level settings of the simulator, and where they come from.

Precedence, lowest first: the defaults below, ``PIPELINE_SIM_CONFIG`` (a whole config as JSON, which is how
:class:`~pipeline.simulator.SimulatorProcess` hands one to its child without putting the API key in argv),
one environment variable per option (``PIPELINE_SIM_<FIELD>``, e.g. ``PIPELINE_SIM_RPM=600``), then the
``pipeline simulate`` flags (``--<field>``, e.g. ``--rpm 600``). :data:`OPTIONS` is the one table both the
environment reader and the command line are built from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from pipeline.simulator.classifier import thresholds_with
from pipeline.simulator.directives import FaultRule, parse_rules
from pipeline.simulator.latency import Latency, check_latency, parse_latency

StreamModerationOrder = Literal["after_content", "before_content"]
ENV_PREFIX: Final = "PIPELINE_SIM_"
ENV_CONFIG: Final = "PIPELINE_SIM_CONFIG"
DEFAULT_MODELS: Final = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-4.1",
    "gpt-5-mini",
    "omni-moderation-latest",
)


class SimulatorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a server-level option can set; per-request directives come on top of it."""

    #: The one key accepted; ``None`` accepts any non-empty bearer token.
    api_key: str | None = None
    #: Delay before the answer (non-streaming) or before the first chunk (streaming).
    latency: Latency | None = None
    #: Streaming only: extra delay before the first content chunk, then between content chunks.
    ttft_ms: float = 0.0
    per_token_ms: float = 0.0
    #: Server-wide faults, e.g. ``500@0.01`` (1% of attempts) or ``429*1`` (every job's first attempt).
    faults: tuple[FaultRule, ...] = ()
    #: Seed of the generator behind latency samples and fault rates (same seed, same sequence).
    random_seed: int = 0
    #: Requests and tokens per minute; ``None`` means unlimited (and no ``x-ratelimit-*`` headers).
    rpm: int | None = None
    tpm: int | None = None
    #: Seconds over which ``rpm`` and ``tpm`` are enforced: each bucket holds this window's share of the
    #: minute's limit (60, the default: a whole minute; 1: a 3,000/min limit admits 50 at once, then 50 a
    #: second). ``x-ratelimit-remaining-*`` and ``-reset-*`` report that bucket. See :mod:`.ratelimit`.
    rate_window: float = 60.0
    #: The ``retry-after-ms`` of an injected ``429`` fault (``retry-after`` is it rounded up to seconds).
    fault_retry_after_ms: int = 100
    #: How long a ``hang`` fault holds the request before closing the connection without an answer.
    hang_s: float = 600.0
    #: Where the moderation chunk goes in a stream (the ``moderation_before_content`` fault flips it).
    stream_moderation: StreamModerationOrder = "after_content"
    #: Flag thresholds by category (unnamed categories keep the classifier's defaults).
    thresholds: dict[str, float] = msgspec.field(default_factory=dict)
    #: Prompt plus ``max_completion_tokens`` beyond this answers 400 ``context_length_exceeded``.
    context_window: int = 128_000
    #: The ids ``GET /v1/models`` lists (any model name is accepted by the other endpoints).
    models: tuple[str, ...] = DEFAULT_MODELS
    #: Log one line per request (method, path, status, time; never the key or the prompt).
    access_log: bool = False

    def __post_init__(self) -> None:
        if self.latency is not None:
            check_latency(self.latency)
        thresholds_with(self.thresholds)
        for name in ("ttft_ms", "per_token_ms", "hang_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 < self.rate_window <= 60:
            raise ValueError("rate_window must be more than 0 and at most 60 seconds")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (omit it for no limit)")


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("", "none", "0") else int(text)


def _thresholds(text: str) -> dict[str, float]:
    pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
    return {name.strip(): float(value) for name, value in pairs}


def _boolean(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _models(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclass(frozen=True)
class ConfigOption:
    """One server option: its config field, how to read it from text, and its help line."""

    field: str
    parse: Callable[[str], Any]
    help: str
    metavar: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


OPTIONS: Final[tuple[ConfigOption, ...]] = (
    ConfigOption("api_key", str, "accept only this bearer token (default: any non-empty one)", "KEY"),
    ConfigOption("latency", parse_latency, "fixed:MS | uniform:LOW-HIGH | lognormal:P50,P99 | none", "SPEC"),
    ConfigOption("ttft_ms", float, "streaming: extra delay before the first content chunk", "MS"),
    ConfigOption("per_token_ms", float, "streaming: delay between content chunks", "MS"),
    ConfigOption("faults", parse_rules, "server-wide faults, e.g. '500@0.01,429@0.02' or '503*1'", "RULES"),
    ConfigOption("random_seed", int, "seed for latency samples and fault rates", "N"),
    ConfigOption("rpm", _optional_int, "requests-per-minute limit (default: none)", "N"),
    ConfigOption("tpm", _optional_int, "tokens-per-minute limit (default: none)", "N"),
    ConfigOption("rate_window", float, "enforce rpm/tpm over windows of this many seconds (default 60)", "SECONDS"),
    ConfigOption("fault_retry_after_ms", int, "retry-after-ms of injected 429 faults (default 100)", "MS"),
    ConfigOption("hang_s", float, "how long a 'hang' fault holds a request (default 600)", "S"),
    ConfigOption(
        "stream_moderation",
        str,
        "moderation chunk position in streams: after_content (default) | before_content",
        "ORDER",
    ),
    ConfigOption("thresholds", _thresholds, "flag thresholds, e.g. 'violence=0.3,hate=0.6'", "CAT=X,..."),
    ConfigOption("context_window", int, "tokens allowed per request (default 128000)", "N"),
    ConfigOption("models", _models, "model ids GET /v1/models lists (comma-separated)", "IDS"),
    ConfigOption("access_log", _boolean, "log one line per request (true/false)", "BOOL"),
)


def with_values(config: SimulatorConfig, values: Mapping[str, Any]) -> SimulatorConfig:
    """``config`` with some fields replaced, validated as a whole (a bad value raises ``ValueError``)."""
    if not values:
        return config
    merged = {**msgspec.to_builtins(config), **msgspec.to_builtins(dict(values))}
    try:
        return msgspec.convert(merged, SimulatorConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None


def config_from_env(environ: Mapping[str, str] | None = None, base: SimulatorConfig | None = None) -> SimulatorConfig:
    """``base`` (default: the defaults), then ``PIPELINE_SIM_CONFIG``, then the per-option variables."""
    env = os.environ if environ is None else environ
    config = base or SimulatorConfig()
    if ENV_CONFIG in env:
        config = with_values(config, json.loads(env[ENV_CONFIG]))
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.env in env:
            try:
                values[option.field] = option.parse(env[option.env])
            except ValueError as exc:
                raise ValueError(f"{option.env}: {exc}") from None
    return with_values(config, values)


def config_to_json(config: SimulatorConfig) -> str:
    return msgspec.json.encode(config).decode()
