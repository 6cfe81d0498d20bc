"""Reading the operations files the way their tools do, without the tools: YAML, Compose interpolation and
merging, PromQL names and labels, the Dockerfile's instructions, the Prometheus text format, and finding the
optional validators (promtool, docker compose, hadolint, kubectl) when they are installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures.env import child_env

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_OPENAI = OPS / "compose.openai.yml"
DOCKERFILE = OPS / "Dockerfile"
RULES = OPS / "prometheus" / "rules" / "pipeline.yml"
DASHBOARD = OPS / "grafana" / "dashboards" / "pipeline.json"
K8S = OPS / "k8s"
RUNBOOK = OPS / "RUNBOOK.md"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# --------------------------------------------------------------------------------------------------
# Compose: interpolation (${VAR}, ${VAR:-default}, ${VAR:?error}, $$) and merging an override file
# --------------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    pass


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        value = environ.get(name)
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op is None or not unset:
            return value or ""
        if op.endswith("-"):
            return arg
        raise MissingVariable(f"{name}: {arg}")

    return _INTERPOLATION.sub(substitute, text)


def resolve(node: Any, environ: Mapping[str, str]) -> Any:
    """Every string in a parsed Compose file, interpolated as Compose does."""
    if isinstance(node, str):
        return interpolate(node, environ)
    if isinstance(node, list):
        return [resolve(item, environ) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, environ) for key, value in node.items()}
    return node


def merge(base: Any, override: Any) -> Any:
    """Mappings merge key by key (as Compose merges ``environment`` and nested sections); the rest is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def compose_model(*files: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Compose model of ``files`` (later ones override), interpolated with ``environ`` (empty by default)."""
    model: dict[str, Any] = {}
    for path in files:
        model = merge(model, load_yaml(path))
    return {key: value for key, value in resolve(model, environ or {}).items() if not key.startswith("x-")}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping; a name without a value (pass-through) is left out."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {name: value for name, sep, value in pairs if sep}
    return {name: str(value) for name, value in env.items() if value is not None}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|d|h|m|s)")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


def duration_seconds(text: str) -> float:
    """A Compose or Prometheus duration such as ``45s``, ``1m30s`` or ``1d``, in seconds."""
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(number + unit for number, unit in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def find_compose_command() -> list[str] | None:
    """``docker compose`` when the plugin is installed, else a ``docker-compose`` (v2) binary."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, env=child_env()).returncode == 0:
        return [docker, "compose"]
    standalone = find_tool("docker-compose")
    if standalone:
        version = subprocess.run([standalone, "version"], capture_output=True, text=True, env=child_env()).stdout
        if version.startswith("Docker Compose version"):  # v1 says "docker-compose version 1.x"
            return [standalone]
    return None


def find_tool(name: str) -> str | None:
    """A tool on PATH or next to this interpreter (pip installs console tools into the virtualenv's bin)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.exists() else None)


# --------------------------------------------------------------------------------------------------
# PromQL: metric names, matcher labels and grouping labels, without a parser
# --------------------------------------------------------------------------------------------------

_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"inf", "nan", "atan2"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_SELECTOR = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)\s*(\{[^{}]*\})?(\s*\()?")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


@dataclass
class Query:
    expr: str
    #: metric name → label names its matchers use
    selectors: dict[str, set[str]] = field(default_factory=dict)
    #: label names of by/without/on/ignoring/group_left/group_right clauses
    grouping: set[str] = field(default_factory=set)


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def analyse(expr: str) -> Query:
    query = Query(expr)
    text = _STRING.sub('""', expr)
    for clause in _GROUPING.finditer(text):
        query.grouping |= {label.strip() for label in clause[1].split(",") if label.strip()}
    text = _RANGE.sub(" ", _GROUPING.sub(" ", text))
    for name, matchers, call in _SELECTOR.findall(text):
        if call or name in _KEYWORDS:
            continue
        query.selectors.setdefault(name, set()).update(_MATCHER.findall(matchers or ""))
    return query


def parser_selectors(expr: str) -> set[str] | None:
    """The metric names promql-parser finds (``None`` when it is not installed); raises on a syntax error."""
    try:
        import promql_parser
    except ImportError:
        return None
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


# --------------------------------------------------------------------------------------------------
# The rules and the dashboard
# --------------------------------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            yield panel, target


def ops_queries() -> list[tuple[str, Query]]:
    """Every PromQL expression in the rules and the dashboard, with where it comes from."""
    found = [(f"rule {rule.get('alert') or rule.get('record')}", analyse(rule["expr"])) for rule in rules()]
    for panel, target in dashboard_targets():
        found.append((f"panel {panel['title']!r} {target['refId']}", analyse(grafana_to_promql(target["expr"]))))
    return found


# --------------------------------------------------------------------------------------------------
# The Dockerfile
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    argument: str
    stage: int

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (after HEALTHCHECK's options, if any)."""
        text = self.argument
        if self.keyword == "HEALTHCHECK":
            text = text.partition("CMD")[2]
        try:
            value = json.loads(text.strip())
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stage = -1
    instructions = []
    for line in logical:
        keyword, _, argument = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, argument.strip(), stage))
    return instructions


# --------------------------------------------------------------------------------------------------
# The Prometheus text format
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exposition:
    #: sample name (``pipeline_jobs_routed_total``, ``…_bucket``) → label names seen on it
    samples: dict[str, frozenset[str]]
    #: family name → type (``counter``, ``gauge``, ``histogram``)
    types: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Exposition:
        from prometheus_client.parser import text_string_to_metric_families

        samples: dict[str, set[str]] = {}
        types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created"):  # prometheus_client's creation timestamps, not metrics
                continue
            types[family.name] = family.type
            for sample in family.samples:
                samples.setdefault(sample.name, set()).update(sample.labels)
        return cls({name: frozenset(labels) for name, labels in samples.items()}, types)
