"""ops/RUNBOOK.md: a section per alert saying what it means, how to confirm it and what to do, the replay and
scaling procedures, and only commands, flags, metrics and settings that exist."""

from __future__ import annotations

import re
import shlex

import pytest

from pipeline.cli import build_parser
from pipeline.commands.run import RUN_OPTIONS
from pipeline.metrics import Metrics
from pipeline.review.metrics import ReviewMetrics
from pipeline.review.service import REVIEW_OPTIONS
from pipeline.review.state import ReviewBook
from pipeline.review.web import WEB_OPTIONS
from schemas.topics import REASON_KINDS
from tests.ops.support import RUNBOOK, alerts, recorded_names

TEXT = RUNBOOK.read_text()
#: Variables of docker-compose.yml itself (interpolated by Compose, not read by the worker).
COMPOSE_VARIABLES = {"PIPELINE_PARTITIONS"}


def sections() -> dict[str, str]:
    parts = re.split(r"^## (.+)$", TEXT, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def anchor(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def test_every_alert_has_a_section_with_meaning_confirmation_and_action() -> None:
    for alert in alerts():
        body = sections().get(alert["alert"])
        assert body is not None, f"no section for {alert['alert']}"
        for part in ("**Means.**", "**Confirm.**", "**Do.**"):
            assert part in body, f"{alert['alert']}: missing {part}"


def test_it_explains_replaying_reviews_and_adding_partitions() -> None:
    titles = set(sections())
    assert "Replaying review records after an outage" in titles
    assert "Adding partitions and scaling" in titles
    replay = sections()["Replaying review records after an outage"]
    assert "--dry-run" in replay and "--reason api_error" in replay
    scaling = sections()["Adding partitions and scaling"]
    assert "--partitions" in scaling and "maxReplicaCount" in scaling and "--scale worker=" in scaling


def test_internal_links_point_at_sections() -> None:
    anchors = {anchor(title) for title in re.findall(r"^#+ (.+)$", TEXT, flags=re.MULTILINE)}
    for link in re.findall(r"\]\(#([^)]+)\)", TEXT):
        assert link in anchors, f"#{link} is not a heading"


def pipeline_commands() -> list[list[str]]:
    """The ``pipeline`` arguments of every command in a code span: ``pipeline ARGS``, ``docker compose exec SVC
    pipeline ARGS``, ``docker compose run … worker ARGS`` and ``kubectl … -- pipeline ARGS``. Spans with
    placeholders (…, <pod>) are skipped."""
    commands = []
    for span in re.findall(r"`([^`]+)`", TEXT):
        if "…" in span or "<" in span:
            continue
        words = shlex.split(span)
        if words[:3] == ["docker", "compose", "run"]:
            commands.append(words[words.index("worker") + 1 :])
        elif words[:3] == ["docker", "compose", "exec"] and "pipeline" in words:
            commands.append(words[words.index("pipeline") + 1 :])
        elif "--" in words and words[words.index("--") + 1 :][:1] == ["pipeline"]:
            commands.append(words[words.index("--") + 2 :])
        elif words[0] == "pipeline" and len(words) > 1:
            commands.append(words[1:])
    return commands


def test_every_pipeline_command_it_shows_parses() -> None:
    commands = pipeline_commands()
    assert any(command[0] == "replay" for command in commands)
    assert any(command[:2] == ["topics", "describe"] for command in commands)
    parser = build_parser()
    for command in commands:
        try:
            args = parser.parse_args(command)
        except SystemExit:
            pytest.fail(f"`pipeline {shlex.join(command)}` does not parse")
        reasons = set(getattr(args, "reason", None).split(",")) if getattr(args, "reason", None) else set()
        assert reasons <= set(REASON_KINDS), f"`pipeline {shlex.join(command)}`: unknown reason"


def test_every_metric_it_names_is_exported() -> None:
    """By the worker or by the review console (whose queue gauges appear once it watches a book)."""
    console = ReviewMetrics()
    console.watch(ReviewBook("review"), lambda: 0)
    families = {family.name for registry in (Metrics().registry, console.registry) for family in registry.collect()}
    for name in set(re.findall(r"\bpipeline_[a-z_]+\b", TEXT)):
        family = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert family in families, f"{name} is not a metric of the worker or the review console"
    for name in set(re.findall(r"\bpipeline:[a-z_:0-9]+", TEXT)):
        assert name in recorded_names(), f"{name} is not a recording rule"


def test_every_setting_it_names_is_read_by_the_worker_or_the_review_console() -> None:
    settings = {option.env for option in (*RUN_OPTIONS, *WEB_OPTIONS, *REVIEW_OPTIONS)} | COMPOSE_VARIABLES
    for name in set(re.findall(r"\b(?:PIPELINE|KAFKA|OPENAI)_[A-Z_]+[A-Z]\b", TEXT)):
        assert name in settings, f"{name} is not a setting"
