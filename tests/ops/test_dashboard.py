"""The Grafana dashboard: well-formed, on the provisioned datasource, and showing what the issue asks for
(throughput by route and reason, in flight, latency percentiles, retries and 429s, tokens by model, lag per
partition). That its metric names and labels exist is checked against a live worker in test_metrics_contract."""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import combinations

from tests.ops.support import (
    OPS,
    Query,
    analyse,
    dashboard,
    dashboard_panels,
    dashboard_targets,
    grafana_to_promql,
    load_yaml,
)


def queries() -> list[Query]:
    return [analyse(grafana_to_promql(target["expr"])) for _, target in dashboard_targets()]


def shows(metric: str, grouped_by: Iterable[str] = ()) -> bool:
    return any(metric in query.selectors and set(grouped_by) <= query.grouping for query in queries())


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    panels = list(dashboard_panels())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        boxes.append((panel["title"], grid))
        if panel["type"] == "row":
            continue
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), f"{panel['title']}: refIds"
    for (a, p), (b, q) in combinations(boxes, 2):
        overlap_x = p["x"] < q["x"] + q["w"] and q["x"] < p["x"] + p["w"]
        overlap_y = p["y"] < q["y"] + q["h"] and q["y"] < p["y"] + p["h"]
        assert not (overlap_x and overlap_y), f"panels {a!r} and {b!r} overlap"


def test_every_panel_uses_the_provisioned_datasource() -> None:
    (datasource,) = load_yaml(OPS / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    expected = {"type": datasource["type"], "uid": datasource["uid"]}
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]


def test_rates_follow_the_dashboard_interval() -> None:
    for panel, target in dashboard_targets():
        for window in re.findall(r"\[([^\]]+)\]", target["expr"]):
            assert window == "$__rate_interval", f"{panel['title']}: fixed window [{window}]"


def test_it_shows_what_the_issue_asks_for() -> None:
    assert shows("pipeline_jobs_routed_total", {"destination", "reason"}), "throughput by route and reason"
    assert shows("pipeline_jobs_in_flight"), "in flight"
    for histogram in ("pipeline_job_seconds_bucket", "pipeline_provider_call_seconds_bucket"):
        quantiles = {
            float(q)
            for query in queries()
            if histogram in query.selectors
            for q in re.findall(r"histogram_quantile\(([\d.]+)", query.expr)
        }
        assert {0.5, 0.95, 0.99} <= quantiles, f"{histogram}: p50, p95 and p99"
    assert shows("pipeline_provider_retries_total", {"cause"}), "retries by cause"
    assert shows("pipeline_provider_rate_limited_total"), "429s"
    assert shows("pipeline_tokens_total", {"model"}), "tokens by model"
    assert shows("pipeline_consumer_lag", {"topic", "partition"}), "lag per partition"
