"""One configuration layer for every command: flags > environment variables > an optional TOML file.

The canonical name of every setting is its environment variable (``PIPELINE_CONCURRENCY``,
``KAFKA_BOOTSTRAP_SERVERS``, ``OPENAI_BASE_URL`` …). A TOML file spells the same names as tables:
``[pipeline] concurrency = 64`` is ``PIPELINE_CONCURRENCY``, ``[kafka] bootstrap_servers`` is
``KAFKA_BOOTSTRAP_SERVERS``. Flags are derived from the names (``--concurrency``,
``--kafka-bootstrap-servers``). Values are validated by the settings Structs' types; every problem is
reported as one line naming the variable and what was expected, and secrets are never echoed.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import msgspec

from pipeline.secret import Secret
from pipeline.tenancy.pricing import PricesError, load_prices

S = TypeVar("S", bound=msgspec.Struct)


class ConfigError(Exception):
    """Invalid configuration: one line per problem, each naming the setting."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Option:
    """One setting: its environment variable (the canonical name), the Struct field it fills, its help."""

    env: str
    field: str
    help: str
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.env.removeprefix("PIPELINE_").lower().replace("_", "-")

    @property
    def dest(self) -> str:
        return self.env.lower()


def _strip_annotated(kind: Any) -> Any:
    return get_args(kind)[0] if get_origin(kind) is Annotated else kind


def _is_secret(kind: Any) -> bool:
    return kind is Secret or Secret in get_args(kind)


def _convert(raw: str, kind: Any) -> Any:
    if _is_secret(kind):
        return Secret(raw)
    base = _strip_annotated(kind)
    if get_origin(base) is dict:
        pairs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in raw.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"expected NAME=VALUE pairs separated by commas, got {item!r}")
            pairs[key.strip()] = value.strip()
        return msgspec.convert(pairs, kind, strict=False)
    if get_origin(base) is list:
        return msgspec.convert([p.strip() for p in raw.split(",") if p.strip()], kind, strict=False)
    return msgspec.convert(raw.strip(), kind, strict=False)


_PLAIN_WORDS = {"`int`": "an integer", "`float`": "a number", "`bool`": "true or false", "`str`": "a string"}


def _literal_choices(kind: Any) -> tuple[str, ...]:
    for candidate in (kind, *get_args(kind)):
        if get_origin(candidate) is Literal:
            return tuple(str(choice) for choice in get_args(candidate))
    return ()


def _explain(exc: Exception, kind: Any) -> str:
    """msgspec's message, reworded for someone setting an environment variable."""
    text = str(exc).split(" - at `", 1)[0]
    choices = _literal_choices(_strip_annotated(kind))
    if choices and text.startswith("Invalid enum value"):
        return "expected one of " + ", ".join(choices)
    for code, words in _PLAIN_WORDS.items():
        text = text.replace(f"Expected {code}, got `str`", f"expected {words}").replace(code, words)
    return text[0].lower() + text[1:] if text else type(exc).__name__


def parse_settings(kind: type[S], options: Iterable[Option], values: Mapping[str, str]) -> S:
    """Build ``kind`` from the values of its options; every bad value is reported, not just the first."""
    fields = {f.name: f for f in msgspec.structs.fields(kind)}
    parsed: dict[str, Any] = {}
    problems: list[str] = []
    for option in options:
        raw = values.get(option.env)
        if raw is None or raw.strip() == "":
            continue
        try:
            parsed[option.field] = _convert(raw, fields[option.field].type)
        except (msgspec.ValidationError, ValueError) as exc:
            shown = "(hidden)" if option.secret else repr(raw)
            problems.append(f"{option.env}={shown}: {_explain(exc, fields[option.field].type)}")
    if problems:
        raise ConfigError(problems)
    return kind(**parsed)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_toml_value(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={_toml_value(v)}" for k, v in value.items())
    return str(value)


def read_toml(path: Path, known: Iterable[str]) -> dict[str, str]:
    """The settings a TOML file sets, by canonical name; unknown names and syntax errors are problems."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError([f"--config {path}: cannot read it ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"--config {path}: not valid TOML ({exc})"]) from None
    known = set(known)
    values: dict[str, str] = {}
    problems: list[str] = []
    for key, value in data.items():
        table = value if isinstance(value, dict) and f"{key.upper()}" not in known else {"": value}
        for sub, item in table.items():
            name = f"{key}_{sub}".upper() if sub else key.upper()
            if name in known:
                values[name] = _toml_value(item)
            else:
                problems.append(f"--config {path}: unknown setting {key}{'.' + sub if sub else ''} ({name})")
    if problems:
        raise ConfigError(problems)
    return values


def merge_sources(
    environ: Mapping[str, str], flags: Mapping[str, str | None], toml: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Flags win over environment variables, which win over the TOML file."""
    merged = dict(toml or {})
    merged.update(environ)
    merged.update({name: value for name, value in flags.items() if value is not None})
    return merged


Ordering = Literal["unordered", "key"]
OffsetReset = Literal["earliest", "latest", "none"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the worker consumes, schedules, commits and reports (Kafka connection and client apart)."""

    input_topic: str = "prompts"
    #: More input topics (priority lanes) with their weights in the call slots; see pipeline/tenancy/lanes.py.
    input_topics: dict[str, Annotated[int, msgspec.Meta(ge=1, le=1000)]] = msgspec.field(default_factory=dict)
    output_topic: str = "completions"
    review_topic: str = "review"
    #: The review console's decisions: its source of truth and audit log (see ``schemas.decisions``).
    decisions_topic: str = "review-decisions"
    #: Batch manifests (compacted, keyed by batch id): ``pipeline batch``, and workers learn cancellations there.
    batches_topic: str = "batches"
    group_id: str = "pipeline"
    #: Static membership (KIP-345): a member that restarts within the session timeout keeps its partitions.
    group_instance_id: str | None = None
    auto_offset_reset: OffsetReset = "earliest"
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    max_buffered_bytes: Annotated[int, msgspec.Meta(ge=65_536)] = 64 * 1024 * 1024
    ordering: Ordering = "unordered"
    commit_interval_ms: Annotated[int, msgspec.Meta(ge=10)] = 1000
    drain_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    revoke_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    max_job_bytes: Annotated[int, msgspec.Meta(ge=256)] = 1_048_576
    topic_wait_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    review_threshold: Probability | None = None
    review_thresholds: dict[str, Probability] = msgspec.field(default_factory=dict)
    session_timeout_ms: Annotated[int, msgspec.Meta(ge=1000)] = 10_000
    heartbeat_interval_ms: Annotated[int, msgspec.Meta(ge=100)] = 3_000
    max_poll_interval_ms: Annotated[int, msgspec.Meta(ge=1000)] = 300_000
    metrics_host: str = "0.0.0.0"
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464
    log_level: LogLevel = "INFO"
    log_prompts: bool = False
    #: /healthz fails when a job has been held this long (a delivery stuck, not a slow provider: keep it above
    #: the provider client's job deadline).
    stuck_job_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    #: Tenancy (pipeline/tenancy/): the job metadata field naming a job's tenant, how many tenants get their own
    #: metric label, the price table, and budgets in USD per tenant (``*``: every tenant without its own).
    tenant_field: Annotated[str, msgspec.Meta(min_length=1)] = "tenant"
    tenant_labels_max: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 100
    prices_file: str | None = None
    budgets: dict[str, Annotated[float, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=dict)
    budgets_monthly: dict[str, Annotated[float, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=dict)
    #: Every worker publishes its spend here and follows it, so budgets hold across the group.
    spend_topic: str = "tenant-spend"


WORKER_OPTIONS: tuple[Option, ...] = (
    Option("PIPELINE_INPUT_TOPIC", "input_topic", "topic the prompt jobs are read from"),
    Option(
        "PIPELINE_INPUT_TOPICS",
        "input_topics",
        "priority lanes: more input topics with their weights, prompts.interactive=8,prompts.bulk=1; under load "
        "the call slots follow the weights, an idle lane lends its share (PIPELINE_INPUT_TOPIC weighs 1 unless listed)",
    ),
    Option("PIPELINE_OUTPUT_TOPIC", "output_topic", "topic clean completions are written to"),
    Option("PIPELINE_REVIEW_TOPIC", "review_topic", "topic everything else is written to, with a reason"),
    Option(
        "PIPELINE_DECISIONS_TOPIC",
        "decisions_topic",
        "topic of the review console's decisions (its source of truth and audit log)",
    ),
    Option(
        "PIPELINE_BATCHES_TOPIC",
        "batches_topic",
        "compacted topic of batch manifests (pipeline batch); workers follow it for cancelled batches",
    ),
    Option("PIPELINE_GROUP_ID", "group_id", "consumer group shared by all workers"),
    Option(
        "PIPELINE_GROUP_INSTANCE_ID",
        "group_instance_id",
        "static group membership: a stable name per worker (a StatefulSet pod name); a restart within the "
        "session timeout keeps its partitions without a rebalance (default: none)",
    ),
    Option(
        "PIPELINE_AUTO_OFFSET_RESET",
        "auto_offset_reset",
        "where a partition the group never committed starts: earliest (default), latest, or none (not started)",
    ),
    Option("PIPELINE_CONCURRENCY", "concurrency", "jobs in flight per worker (across its partitions)"),
    Option("PIPELINE_MAX_BUFFERED_BYTES", "max_buffered_bytes", "bytes of jobs in flight before pausing fetches"),
    Option("PIPELINE_ORDERING", "ordering", "unordered, or key: one job at a time per Kafka key, in offset order"),
    Option("PIPELINE_COMMIT_INTERVAL_MS", "commit_interval_ms", "how often completed offsets are committed"),
    Option("PIPELINE_DRAIN_TIMEOUT_S", "drain_timeout_s", "on SIGTERM, how long in-flight jobs may finish"),
    Option("PIPELINE_REVOKE_TIMEOUT_S", "revoke_timeout_s", "on rebalance, how long revoked jobs may finish"),
    Option("PIPELINE_MAX_JOB_BYTES", "max_job_bytes", "larger job records go to review as invalid_job"),
    Option("PIPELINE_TOPIC_WAIT_S", "topic_wait_s", "at start, how long to wait for missing topics (default 0)"),
    Option("PIPELINE_REVIEW_THRESHOLD", "review_threshold", "review when any category score reaches this"),
    Option("PIPELINE_REVIEW_THRESHOLDS", "review_thresholds", "per-category thresholds: violence=0.3,hate=0.5"),
    Option("PIPELINE_SESSION_TIMEOUT_MS", "session_timeout_ms", "consumer group session timeout"),
    Option("PIPELINE_HEARTBEAT_INTERVAL_MS", "heartbeat_interval_ms", "consumer group heartbeat interval"),
    Option("PIPELINE_MAX_POLL_INTERVAL_MS", "max_poll_interval_ms", "consumer max.poll.interval.ms"),
    Option("PIPELINE_METRICS_HOST", "metrics_host", "address of /metrics, /healthz and /readyz"),
    Option("PIPELINE_METRICS_PORT", "metrics_port", "port of /metrics, /healthz and /readyz (0: any free port)"),
    Option("PIPELINE_LOG_LEVEL", "log_level", "DEBUG, INFO, WARNING or ERROR"),
    Option("PIPELINE_LOG_PROMPTS", "log_prompts", "include prompt text in DEBUG logs (off by default)"),
    Option("PIPELINE_STUCK_JOB_S", "stuck_job_s", "/healthz fails when a job is held this long (default 900)"),
    Option("PIPELINE_TENANT_FIELD", "tenant_field", "job metadata field naming the job's tenant (default tenant)"),
    Option(
        "PIPELINE_TENANT_LABELS_MAX",
        "tenant_labels_max",
        "tenants with their own metric label; later ones are counted as other (default 100)",
    ),
    Option(
        "PIPELINE_PRICES_FILE",
        "prices_file",
        "TOML price table per model (USD per million tokens) replacing the shipped pipeline/tenancy/prices.toml",
    ),
    Option(
        "PIPELINE_BUDGETS",
        "budgets",
        "USD per tenant per UTC day: acme=5,globex=20 (* for every other tenant); over it, jobs go to review",
    ),
    Option(
        "PIPELINE_BUDGETS_MONTHLY", "budgets_monthly", "USD per tenant per UTC month, in the form of PIPELINE_BUDGETS"
    ),
    Option(
        "PIPELINE_SPEND_TOPIC",
        "spend_topic",
        "topic every worker publishes its spend to and follows, so budgets hold across the group",
    ),
)


def load_worker_settings(values: Mapping[str, str]) -> WorkerSettings:
    settings = parse_settings(WorkerSettings, WORKER_OPTIONS, values)
    problems = []
    if settings.heartbeat_interval_ms * 3 > settings.session_timeout_ms:
        problems.append(
            f"PIPELINE_HEARTBEAT_INTERVAL_MS={settings.heartbeat_interval_ms}: must be at most a third of "
            f"PIPELINE_SESSION_TIMEOUT_MS={settings.session_timeout_ms}"
        )
    if settings.revoke_timeout_s * 1000 >= settings.max_poll_interval_ms:
        problems.append(
            f"PIPELINE_REVOKE_TIMEOUT_S={settings.revoke_timeout_s:g}: must be under PIPELINE_MAX_POLL_INTERVAL_MS="
            f"{settings.max_poll_interval_ms} (the group's rebalance timeout), or the worker leaves the group"
        )
    if len({settings.input_topic, settings.output_topic, settings.review_topic}) < 3:
        problems.append("PIPELINE_INPUT_TOPIC, PIPELINE_OUTPUT_TOPIC and PIPELINE_REVIEW_TOPIC must all differ")
    if {settings.output_topic, settings.review_topic} & set(settings.input_topics):
        problems.append("PIPELINE_INPUT_TOPICS must not name PIPELINE_OUTPUT_TOPIC or PIPELINE_REVIEW_TOPIC")
    if settings.prices_file:
        try:
            load_prices(settings.prices_file)
        except PricesError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems)
    return settings


def add_option_flags(parser: argparse.ArgumentParser, options: Iterable[Option], title: str) -> None:
    """One flag per option (``--concurrency`` for ``PIPELINE_CONCURRENCY``), grouped under ``title``.

    Secrets get no flag: a command line is visible to every user of the machine (``ps``), so keys and
    passwords come from the environment or the TOML file only.
    """
    group = parser.add_argument_group(title)
    for option in options:
        if option.secret:
            continue
        group.add_argument(option.flag, dest=option.dest, metavar="VALUE", help=f"{option.help} [{option.env}]")


def resolve_values(
    args: argparse.Namespace, options: Iterable[Option], environ: Mapping[str, str], known: Iterable[str]
) -> dict[str, str]:
    """The merged settings for a command: its flags, then the environment, then ``--config FILE``.

    ``known`` is every setting name of every command, so one TOML file can serve them all.
    """
    flags = {option.env: getattr(args, option.dest, None) for option in options}
    config_path = getattr(args, "config", None)
    toml = read_toml(Path(config_path), known) if config_path else None
    return merge_sources(environ, flags, toml)
