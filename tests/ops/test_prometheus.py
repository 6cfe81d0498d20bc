"""The Prometheus configuration and alert rules: every alert the issue asks for exists, watches the metrics that
show its condition, links to its runbook section and has a unit test; the scrape jobs are the ones the rules
select. Every PromQL expression parses (promql-parser when installed); promtool checks the config and runs the
rules' unit tests when installed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.env import child_env
from tests.ops.support import (
    OPS,
    ROOT,
    RULES,
    RUNBOOK,
    alerts,
    analyse,
    duration_seconds,
    find_tool,
    load_yaml,
    ops_queries,
    parser_selectors,
    recorded_names,
    rules,
)

PROMETHEUS = OPS / "prometheus"
RULE_TESTS = PROMETHEUS / "tests" / "pipeline.test.yml"

#: The alerts the issue names, and metrics each must look at (after expanding recording rules).
REQUIRED_ALERTS = {
    "PipelineConsumerLagGrowing": {"pipeline_consumer_lag"},
    "PipelineNoProgress": {"pipeline_consumer_lag", "pipeline_commits_total"},
    "PipelineReviewRateSpike": {"pipeline_jobs_routed_total"},
    "PipelineProviderErrors": {"pipeline_provider_requests_total"},
    "PipelineProviderRateLimited": {"pipeline_provider_rate_limited_total", "pipeline_provider_requests_total"},
    "PipelineWorkerDown": {"up"},
    "PipelinePartitionsPausedStuck": {"pipeline_partitions_paused", "pipeline_jobs_routed_total"},
}


def expanded_metrics(expr: str) -> set[str]:
    """The raw metrics an expression reads, through any recording rules it uses."""
    recorded = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    names: set[str] = set()
    for name in analyse(expr).selectors:
        names |= expanded_metrics(recorded[name]) if name in recorded else {name}
    return names


def runbook_anchors() -> set[str]:
    """GitHub's anchors for the runbook's headings."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.MULTILINE):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_every_alert_the_issue_names_exists_and_watches_the_right_metrics() -> None:
    by_name = {alert["alert"]: alert for alert in alerts()}
    assert len(by_name) == len(alerts()), "alert names are unique"
    for name, metrics in REQUIRED_ALERTS.items():
        assert name in by_name, f"missing alert {name}"
        assert metrics <= expanded_metrics(by_name[name]["expr"]), f"{name} should look at {metrics}"


def test_every_alert_has_a_duration_a_severity_and_a_runbook_section() -> None:
    anchors = runbook_anchors()
    for alert in alerts():
        name = alert["alert"]
        assert duration_seconds(alert["for"]) >= 60, f"{name}: wait at least a minute before paging"
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], name
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert (ROOT / page).resolve() == RUNBOOK.resolve(), f"{name}: runbook_url is relative to the repository"
        assert anchor == name.lower() and anchor in anchors, f"{name}: no runbook section #{anchor}"


def test_recording_rules_follow_the_naming_convention_and_are_all_used() -> None:
    used = {name for _, query in ops_queries() for name in query.selectors}
    for name in recorded_names():
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), f"{name}: level:metric:operations"
        assert name in used, f"{name} is recorded but nothing uses it"


def test_the_worker_job_the_rules_select_is_the_one_prometheus_scrapes() -> None:
    jobs = {selector_job for _, query in ops_queries() for selector_job in re.findall(r'job="([^"]+)"', query.expr)}
    assert jobs == {"pipeline-worker"}
    for config in ("prometheus.yml", "kubernetes.yml"):
        names = [job["job_name"] for job in load_yaml(PROMETHEUS / config)["scrape_configs"]]
        assert "pipeline-worker" in names, config


def test_both_prometheus_configs_load_the_rules() -> None:
    for config in ("prometheus.yml", "kubernetes.yml"):
        patterns = load_yaml(PROMETHEUS / config)["rule_files"]
        found = {path.resolve() for pattern in patterns for path in PROMETHEUS.glob(pattern)}
        assert RULES.resolve() in found, config


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    spec = load_yaml(RULE_TESTS)
    assert [(RULE_TESTS.parent / path).resolve() for path in spec["rule_files"]] == [RULES.resolve()]
    fired = {
        case["alertname"]
        for test in spec["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == {alert["alert"] for alert in alerts()}


def test_every_expression_parses_and_the_name_extraction_agrees_with_a_parser() -> None:
    pytest.importorskip("promql_parser", reason="promql-parser is not installed; names were still extracted")
    for where, query in ops_queries():
        found = parser_selectors(query.expr)
        assert found == set(query.selectors), f"{where}: parser {found} vs extracted {set(query.selectors)}"


# ---------------------------------------------------------------------------------------------- promtool


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    tool = find_tool("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Debian package prometheus); structural checks ran")
    return subprocess.run([tool, *map(str, args)], capture_output=True, text=True, timeout=120, env=child_env())


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_compose_config() -> None:
    # kubernetes.yml is left out: Debian's promtool is built without Kubernetes service discovery.
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
