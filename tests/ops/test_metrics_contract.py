"""The alert rules and the dashboard name only metrics and labels a running worker or a running review console
exports, and the probe paths and healthchecks the deployment files use answer on a running worker.

One worker runs in this process against the broker fixture and the simulator, with jobs that take every
kind of route (clean, flagged, retried after 503 and 429, failed, invalid) so that every labelled series
exists; its /metrics is scraped over HTTP from the same HealthServer ``pipeline run`` uses.

One review console runs as ``pipeline review serve`` runs it (a ReviewService under the web app) over review
records of several reasons, with decisions made through its JSON API (an approve the applier publishes, a
reject); its /metrics is scraped over HTTP too.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from pipeline.kafka import KafkaSettings
from pipeline.metrics import HealthServer
from pipeline.review.accounts import Accounts, add_reviewer
from pipeline.review.service import ReviewService
from pipeline.review.web import make_app, running
from pipeline.simulator import Simulator
from tests.fixtures.broker import Broker
from tests.fixtures.env import child_env
from tests.integration.harness import (
    Topics,
    client_config,
    collect,
    create_topics,
    job,
    publish,
    running_worker,
    worker_settings,
)
from tests.integration.review.support import ReviewTopics, publish_reviews
from tests.integration.review.support import create_topics as create_review_topics
from tests.ops.support import (
    COMPOSE_FILE,
    DOCKERFILE,
    K8S,
    Exposition,
    analyse,
    dashboard_targets,
    dockerfile_instructions,
    grafana_to_promql,
    load_yaml,
    ops_queries,
    recorded_names,
    rules,
)
from tests.unit.review.decision_builders import api_error, flagged, invalid

JOBS = [
    job("ops-clean", "Write a haiku about tea."),
    job("ops-flagged", "Write a poem. [[sim: flag_output=violence]]"),
    job("ops-retried", "Hello [[sim: 503*1]]"),
    job("ops-rate-limited", "Hello [[sim: 429*1]]"),
    job("ops-failed", "Hello [[sim: 500]]"),
    b'{"id": "ops-invalid", "messages": []}',
]
#: Review records of three reasons for the console's queue; two get decided through its API.
REVIEWS = [flagged("ops-approved"), flagged("ops-rejected"), flagged("ops-open"), api_error("ops-failed"), invalid(3)]
DECISIONS = {"ops-approved": "approve", "ops-rejected": "reject"}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
#: Exported but deliberately on neither the dashboard nor an alert.
NOT_CHARTED = {
    "pipeline_committed_offset": "the lag gauge is what matters; the offset itself is for debugging",
    "pipeline_commit_metadata_supported": "a property of the broker, logged at start",
    "pipeline_committed_read_failures": "PipelinePartitionsNotStarted watches what they cause; the log names them",
    "pipeline_worker_failures": "counted as the worker stops; its exit is what is seen (PipelineWorkerDown)",
    "pipeline_job_failures": "each is a review record (api_error internal) and an error log line with its trace",
}


@dataclass(frozen=True)
class LiveWorker:
    exposition: Exposition
    #: probe path → HTTP status, for every path the deployment files probe
    statuses: dict[str, int]
    #: exit codes of the image's HEALTHCHECK command against the live worker and against a closed port
    healthcheck_live: int
    healthcheck_closed: int
    #: exit code of docker-compose.yml's simulator healthcheck against a live simulator
    simulator_healthcheck: int


def probe_paths() -> set[str]:
    """Every HTTP path a probe or healthcheck in the deployment files asks the worker for."""
    paths: set[str] = set()
    for container in load_yaml(K8S / "deployment.yaml")["spec"]["template"]["spec"]["containers"]:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            paths.add(container[probe]["httpGet"]["path"])
    paths |= set(re.findall(r"127\.0\.0\.1:[^/'\"]+(/\w+)", " ".join(image_healthcheck())))
    paths |= set(re.findall(r"127\.0\.0\.1:\d+(/\w+)", " ".join(compose_healthcheck("worker"))))
    return paths


def image_healthcheck() -> list[str]:
    (healthcheck,) = [i for i in dockerfile_instructions(DOCKERFILE) if i.keyword == "HEALTHCHECK"]
    command = healthcheck.exec_form
    assert command is not None, "HEALTHCHECK should use the exec form"
    return command


def compose_healthcheck(service: str) -> list[str]:
    test = load_yaml(COMPOSE_FILE)["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD", f"{service}: healthcheck should be exec form (CMD …)"
    return list(test[1:])


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def run_command(command: list[str], env: dict[str, str]) -> int:
    argv = [sys.executable if part == "python" else part for part in command]
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), timeout=15)


async def scrape_running_worker(bootstrap_servers: str) -> LiveWorker:
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    topics = Topics.named(f"ops{uuid.uuid4().hex[:8]}")
    await create_topics(kafka, topics, partitions=2)
    await publish(kafka, topics.input, JOBS)
    async with Simulator() as sim:
        await sim.start()
        config = client_config(sim.base_url, max_attempts=2)
        async with running_worker(kafka, worker_settings(topics), config) as running:
            worker = running.worker
            health = HealthServer(worker.metrics, alive=lambda: worker.alive, ready=lambda: worker.ready)
            await health.start("127.0.0.1", 0)
            try:
                await collect(kafka, topics, len(JOBS))
                base = f"http://127.0.0.1:{health.port}"
                async with aiohttp.ClientSession() as http:
                    text = ""
                    for _ in range(100):  # the lag gauge appears after the first commit cycle
                        async with http.get(f"{base}/metrics") as response:
                            assert response.status == 200
                            text = await response.text()
                        if "pipeline_consumer_lag{" in text:
                            break
                        await asyncio.sleep(0.1)
                    statuses = {}
                    for path in sorted(probe_paths()):
                        async with http.get(base + path) as response:
                            statuses[path] = response.status
                env = child_env({"PIPELINE_METRICS_PORT": str(health.port)})
                healthcheck_live = await run_command(image_healthcheck(), env)
                closed = {**env, "PIPELINE_METRICS_PORT": str(unused_port())}
                healthcheck_closed = await run_command(image_healthcheck(), closed)
                simulator_check = [part.replace(":8089/", f":{sim.port}/") for part in compose_healthcheck("simulator")]
                simulator_healthcheck = await run_command(simulator_check, child_env())
            finally:
                await health.stop()
    return LiveWorker(Exposition.parse(text), statuses, healthcheck_live, healthcheck_closed, simulator_healthcheck)


async def scrape_running_console(bootstrap_servers: str, directory: Path) -> Exposition:
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    topics = ReviewTopics.named(f"ops{uuid.uuid4().hex[:8]}")
    await create_review_topics(kafka, topics, partitions=2)
    await publish_reviews(kafka, topics.review, REVIEWS)
    accounts_file = directory / "reviewers.json"
    token = add_reviewer(accounts_file, "ops", admin=True)
    async with ReviewService(kafka, topics.worker(), ready_timeout_s=30) as service:
        app = make_app(service.desk, Accounts(accounts_file), metrics=service.metrics.exposition)
        async with running(app, "127.0.0.1", 0) as url, aiohttp.ClientSession() as http:
            bearer = {"Authorization": f"Bearer {token}"}
            for key, decision in DECISIONS.items():
                async with http.post(
                    f"{url}/api/v1/items/{key}/decision", json={"decision": decision}, headers=bearer
                ) as r:
                    assert r.status == 200, await r.text()
            desk = service.desk
            await desk.follower.wait_until(
                lambda: (item := desk.item("ops-approved")) is not None and item.applied is not None, 30
            )
            async with http.get(f"{url}/metrics") as response:
                assert response.status == 200
                text = await response.text()
    return Exposition.parse(text)


@pytest.fixture(scope="module")
def live(kafka_broker: Broker) -> LiveWorker:
    return asyncio.run(scrape_running_worker(kafka_broker.bootstrap_servers))


@pytest.fixture(scope="module")
def live_console(kafka_broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Exposition:
    return asyncio.run(scrape_running_console(kafka_broker.bootstrap_servers, tmp_path_factory.mktemp("console")))


@pytest.fixture(scope="module")
def exported(live: LiveWorker, live_console: Exposition) -> Exposition:
    """What Prometheus scrapes from both: the worker's metrics and the review console's."""
    worker = live.exposition
    return Exposition({**worker.samples, **live_console.samples}, {**worker.types, **live_console.types})


def recorded_labels() -> dict[str, set[str]]:
    """The labels each recording rule's series carry (its outermost grouping)."""
    labels = {}
    for rule in rules():
        if "record" in rule:
            outer = re.match(r"\s*\w+\s+by\s*\(([^)]*)\)", rule["expr"])
            labels[rule["record"]] = {name.strip() for name in outer[1].split(",")} if outer else set()
    return labels


def series_labels(name: str, exported: Exposition) -> set[str] | None:
    """The labels a series name has in Prometheus: exported ones plus the target's; ``None`` if unknown."""
    if name == "up":
        return set(TARGET_LABELS)
    if name in recorded_names():
        return recorded_labels()[name]
    labels = exported.samples.get(name)
    return None if labels is None else set(labels | TARGET_LABELS)


def test_the_scrape_saw_every_route_so_labelled_series_exist(live: LiveWorker) -> None:
    samples = live.exposition.samples
    for name in (
        "pipeline_jobs_routed_total",
        "pipeline_provider_requests_total",
        "pipeline_provider_retries_total",
        "pipeline_tokens_total",
        "pipeline_consumer_lag",
        "pipeline_committed_offset",
    ):
        assert name in samples, f"{name} has no series in the scrape: the jobs did not exercise it"


def test_the_console_scrape_has_every_review_series(live_console: Exposition) -> None:
    samples = live_console.samples
    for name in (
        "pipeline_review_decisions_total",
        "pipeline_review_applied_total",
        "pipeline_review_queue_items",
        "pipeline_review_oldest_undecided_age_seconds",
    ):
        assert name in samples, f"{name} has no series in the console's scrape"


def test_the_worker_and_the_console_export_different_metrics(live: LiveWorker, live_console: Exposition) -> None:
    assert not set(live.exposition.types) & set(live_console.types), (
        "a name both export would mix two meanings in Prometheus"
    )


def test_every_metric_in_the_rules_and_the_dashboard_is_exported(exported: Exposition) -> None:
    missing = [
        f"{where}: {name}"
        for where, query in ops_queries()
        for name in query.selectors
        if series_labels(name, exported) is None
    ]
    assert not missing, "not exported by the worker or the review console:\n" + "\n".join(missing)


def test_every_label_matched_or_grouped_on_exists_on_its_metrics(exported: Exposition) -> None:
    problems = []
    for where, query in ops_queries():
        available: set[str] = set()
        for name, matched in query.selectors.items():
            labels = series_labels(name, exported) or set()
            available |= labels
            if matched - labels:
                problems.append(f"{where}: {name} has no label {sorted(matched - labels)}")
        available |= {"le"} if any(name.endswith("_bucket") for name in query.selectors) else set()
        if query.grouping - available:
            problems.append(f"{where}: grouping on {sorted(query.grouping - available)}, which no metric has")
    assert not problems, "\n".join(problems)


def test_the_dashboard_legends_use_labels_the_query_keeps(exported: Exposition) -> None:
    problems = []
    for panel, target in dashboard_targets():
        used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        query = analyse(grafana_to_promql(target["expr"]))
        kept = query.grouping or set().union(*(series_labels(n, exported) or set() for n in query.selectors))
        if used - kept:
            problems.append(f"{panel['title']!r}: legend uses {sorted(used - kept)}, the query keeps {sorted(kept)}")
    assert not problems, "\n".join(problems)


def test_counters_are_queried_with_total_and_histograms_through_buckets(exported: Exposition) -> None:
    types = exported.types
    for where, query in ops_queries():
        for name in query.selectors:
            if name in types:
                assert types[name] not in ("counter", "histogram"), f"{where}: {name} needs a suffix"
            if name.endswith("_total"):
                assert types.get(name.removesuffix("_total")) == "counter", f"{where}: {name} is not a counter"
            if name.endswith("_bucket"):
                family = name.removesuffix("_bucket")
                assert types.get(family) == "histogram", f"{where}: {name} is not a histogram's bucket"
                assert "histogram_quantile" in query.expr, f"{where}: buckets only make sense in a quantile"


def test_every_exported_metric_is_charted_or_alerted_on(exported: Exposition) -> None:
    used = {name for _, query in ops_queries() for name in query.selectors}
    used_families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    families = {name for name in exported.types if name.startswith("pipeline_")}
    unused = families - used_families - set(NOT_CHARTED)
    assert not unused, f"exported but on no panel and in no rule (chart them or list them in NOT_CHARTED): {unused}"


def test_every_probe_path_answers_200_on_a_running_worker(live: LiveWorker) -> None:
    assert {"/healthz", "/readyz"} <= set(live.statuses)
    assert live.statuses == dict.fromkeys(live.statuses, 200)


def test_the_image_healthcheck_passes_on_a_running_worker_and_fails_without_one(live: LiveWorker) -> None:
    assert live.healthcheck_live == 0
    assert live.healthcheck_closed != 0


def test_the_simulator_healthcheck_passes_on_a_running_simulator(live: LiveWorker) -> None:
    assert live.simulator_healthcheck == 0
