"""docker-compose.yml (and the real-OpenAI override) agree with the code: every environment variable is one the
command reads and its value parses, the commands and flags exist, ports and topic names match, the worker is
scalable and waits for Kafka's healthcheck; the file stays a valid Compose file (`docker compose config` when
a Compose v2 binary is installed, structural checks always)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import build_parser
from pipeline.commands.run import RUN_OPTIONS, load_run_settings
from pipeline.config import WorkerSettings, load_worker_settings
from pipeline.kafka import KAFKA_OPTIONS, load_kafka_settings
from pipeline.simulator.config import OPTIONS as SIMULATOR_OPTIONS
from pipeline.simulator.config import config_from_env
from tests.fixtures.env import child_env
from tests.ops.support import (
    COMPOSE_FILE,
    COMPOSE_OPENAI,
    OPS,
    ROOT,
    MissingVariable,
    compose_model,
    duration_seconds,
    environment,
    find_compose_command,
    load_yaml,
)

WORKER_ENV = {option.env for option in RUN_OPTIONS}
SIMULATOR_ENV = {option.env for option in SIMULATOR_OPTIONS} | {"PIPELINE_SIM_HOST", "PIPELINE_SIM_PORT"}
#: The Compose specification's service attributes (those a file of ours may use).
SERVICE_KEYS = {
    "build", "command", "container_name", "cpus", "depends_on", "deploy", "entrypoint", "env_file", "environment",
    "expose", "extends", "healthcheck", "hostname", "image", "init", "labels", "logging", "mem_limit", "networks",
    "platform", "ports", "profiles", "pull_policy", "read_only", "restart", "secrets", "security_opt",
    "stop_grace_period", "stop_signal", "tmpfs", "ulimits", "user", "volumes", "working_dir",
}  # fmt: skip
TOP_LEVEL_KEYS = {"name", "services", "volumes", "networks", "configs", "secrets", "include"}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return compose_model(COMPOSE_FILE)


@pytest.fixture(scope="module")
def openai_model() -> dict[str, Any]:
    return compose_model(COMPOSE_FILE, COMPOSE_OPENAI, environ={"OPENAI_API_KEY": "test-key-from-the-shell"})


def service(model: dict[str, Any], name: str) -> dict[str, Any]:
    value: dict[str, Any] = model["services"][name]
    return value


def command_of(svc: dict[str, Any]) -> list[str]:
    command = svc["command"]
    assert isinstance(command, list), "commands are lists (no shell parsing surprises)"
    return [str(part) for part in command]


# ---------------------------------------------------------------------------------------------- structure


def test_the_file_uses_only_compose_spec_keys(model: dict[str, Any]) -> None:
    assert set(model) <= TOP_LEVEL_KEYS, set(model) - TOP_LEVEL_KEYS
    for name, svc in model["services"].items():
        assert set(svc) <= SERVICE_KEYS, f"{name}: unknown keys {set(svc) - SERVICE_KEYS}"
        assert "image" in svc or "build" in svc, name
        if "healthcheck" in svc:
            check = svc["healthcheck"]
            assert set(check) <= HEALTHCHECK_KEYS, f"{name}: {set(check) - HEALTHCHECK_KEYS}"
            for key in ("interval", "timeout", "start_period"):
                if key in check:
                    duration_seconds(check[key])
        depends = svc.get("depends_on") or {}
        for dependency in depends:
            assert dependency in model["services"], f"{name} depends on unknown {dependency}"
            if isinstance(depends, dict):
                assert depends[dependency]["condition"] in CONDITIONS, f"{name}: {depends[dependency]}"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in (model.get("volumes") or {}), f"{name}: volume {source} is not declared"


def test_third_party_images_are_pinned(model: dict[str, Any]) -> None:
    for name, svc in model["services"].items():
        if "build" in svc:
            continue
        image = svc["image"]
        tag = image.rpartition(":")[2]
        assert ":" in image and tag not in ("latest", ""), f"{name}: pin {image} to a version"


def test_our_services_build_the_image_from_ops_dockerfile(model: dict[str, Any]) -> None:
    for name in ("worker", "simulator", "topics"):
        build = service(model, name)["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == (OPS / "Dockerfile").resolve()
        assert service(model, name)["image"] == service(model, "worker")["image"], "one image for all three"


def test_the_worker_can_be_scaled(model: dict[str, Any]) -> None:
    worker = service(model, "worker")
    assert "container_name" not in worker, "a fixed container name forbids --scale"
    assert "ports" not in worker, "a published host port forbids --scale; Prometheus scrapes the network"
    assert "replicas" not in (worker.get("deploy") or {}), "the replica count is --scale's"


def test_kafka_is_single_node_kraft_from_the_official_image_with_a_healthcheck(model: dict[str, Any]) -> None:
    kafka = service(model, "kafka")
    assert kafka["image"].startswith("apache/kafka:")
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node}@"), "the one node is the quorum"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics come from the topics service only"
    assert kafka["healthcheck"]["test"], "the worker waits on this healthcheck"
    assert "disable" not in kafka["healthcheck"]


def test_kafka_advertises_the_address_the_containers_use(model: dict[str, Any]) -> None:
    advertised = environment(service(model, "kafka"))["KAFKA_ADVERTISED_LISTENERS"]
    addresses = {entry.partition("://")[2] for entry in advertised.split(",")}
    for name in ("worker", "topics"):
        bootstrap = environment(service(model, name))["KAFKA_BOOTSTRAP_SERVERS"]
        assert set(bootstrap.split(",")) <= addresses, f"{name} bootstraps from {bootstrap}, not advertised"


# ---------------------------------------------------------------------------------------------- ordering


def test_the_worker_waits_for_kafka_health_the_topics_and_the_simulator(model: dict[str, Any]) -> None:
    depends = service(model, "worker")["depends_on"]
    assert depends["kafka"]["condition"] == "service_healthy"
    assert depends["topics"]["condition"] == "service_completed_successfully"
    assert depends["simulator"]["condition"] == "service_healthy"
    assert "healthcheck" in service(model, "simulator")


def test_the_topics_service_is_one_shot_and_waits_for_kafka(model: dict[str, Any]) -> None:
    topics = service(model, "topics")
    assert topics["restart"] == "no"
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert topics["healthcheck"] == {"disable": True}, "the image's HEALTHCHECK probes a worker, not this"


def test_partitions_are_configurable() -> None:
    topics = service(compose_model(COMPOSE_FILE, environ={"PIPELINE_PARTITIONS": "12"}), "topics")
    args = build_parser().parse_args(command_of(topics))
    assert args.partitions == 12


# ---------------------------------------------------------------------------------------------- the code's names


def test_the_worker_environment_is_what_pipeline_run_reads(model: dict[str, Any]) -> None:
    env = environment(service(model, "worker"))
    assert set(env) <= WORKER_ENV, f"pipeline run reads none of {set(env) - WORKER_ENV}"
    settings = load_run_settings(env)  # every value parses
    assert settings.client.base_url.startswith("http://simulator:")
    assert build_parser().parse_args(command_of(service(model, "worker"))).command == "run"


def test_the_topics_service_creates_the_topics_the_worker_uses(model: dict[str, Any]) -> None:
    topics_env = environment(service(model, "topics"))
    worker_env = environment(service(model, "worker"))
    assert set(topics_env) <= {option.env for option in KAFKA_OPTIONS} | WORKER_ENV
    args = build_parser().parse_args(command_of(service(model, "topics")))
    assert (args.command, args.action) == ("topics", "create")
    created = load_worker_settings(topics_env)
    consumed = load_worker_settings(worker_env)
    for field in ("input_topic", "output_topic", "review_topic", "group_id"):
        assert getattr(created, field) == getattr(consumed, field), field
    assert load_kafka_settings(topics_env).bootstrap_servers == load_kafka_settings(worker_env).bootstrap_servers


def test_the_simulator_serves_where_the_worker_calls_it(model: dict[str, Any]) -> None:
    simulator = service(model, "simulator")
    env = environment(simulator)
    assert set(env) <= SIMULATOR_ENV, f"the simulator reads none of {set(env) - SIMULATOR_ENV}"
    config_from_env(env)  # every value parses
    args = build_parser().parse_args(command_of(simulator))
    assert (args.command, args.host) == ("simulate", "0.0.0.0")
    base_url = environment(service(model, "worker"))["OPENAI_BASE_URL"]
    assert base_url == f"http://simulator:{args.port}/v1"
    assert f":{args.port}/" in " ".join(simulator["healthcheck"]["test"])


def test_the_metrics_port_is_the_same_everywhere(model: dict[str, Any]) -> None:
    worker = service(model, "worker")
    port = int(environment(worker).get("PIPELINE_METRICS_PORT", WorkerSettings().metrics_port))
    assert port == WorkerSettings().metrics_port == 9464
    assert [int(p) for p in worker["expose"]] == [port]
    assert f"127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])
    scrape = load_yaml(OPS / "prometheus" / "prometheus.yml")["scrape_configs"]
    (job,) = [job for job in scrape if job["job_name"] == "pipeline-worker"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and int(sd["port"]) == port, "Prometheus finds every replica by DNS"


def test_the_stop_grace_period_covers_the_drain_deadline(model: dict[str, Any]) -> None:
    worker = service(model, "worker")
    drain = load_worker_settings(environment(worker)).drain_timeout_s
    assert worker["stop_signal"] == "SIGTERM"
    assert duration_seconds(worker["stop_grace_period"]) >= drain + 10, "drain, then flush, commit and leave"


def test_prometheus_and_grafana_mount_the_ops_files(model: dict[str, Any]) -> None:
    prometheus = service(model, "prometheus")
    assert "./ops/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    grafana = service(model, "grafana")
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    provider = load_yaml(OPS / "grafana/provisioning/dashboards/pipeline.yml")["providers"][0]
    dashboards_dir = provider["options"]["path"]
    assert mounts["./ops/grafana/dashboards"] == dashboards_dir
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent.as_posix() == dashboards_dir
    assert (OPS / "grafana/dashboards" / Path(home).name).exists()
    (datasource,) = load_yaml(OPS / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    assert any(port.endswith(":9090") for port in prometheus["ports"])


# ---------------------------------------------------------------------------------------------- the real API


def test_the_openai_override_reads_the_key_from_the_callers_environment(openai_model: dict[str, Any]) -> None:
    raw = load_yaml(COMPOSE_OPENAI)["services"]["worker"]["environment"]["OPENAI_API_KEY"]
    assert re.fullmatch(r"\$\{OPENAI_API_KEY:\?[^}]+\}", raw), "required, from the shell, no default"
    env = environment(service(openai_model, "worker"))
    assert set(env) <= WORKER_ENV
    settings = load_run_settings(env)
    assert settings.client.api_key.reveal() == "test-key-from-the-shell"
    assert settings.client.base_url == "https://api.openai.com/v1"


def test_the_openai_override_refuses_to_start_without_a_key() -> None:
    with pytest.raises(MissingVariable, match="OPENAI_API_KEY"):
        compose_model(COMPOSE_FILE, COMPOSE_OPENAI, environ={})


def test_no_file_holds_an_api_key() -> None:
    key = re.compile(r"sk-[A-Za-z0-9_-]{16,}")
    files = [COMPOSE_FILE, *OPS.rglob("*"), ROOT / ".dockerignore"]
    for path in files:
        if path.is_file():
            assert not key.search(path.read_text()), f"{path} contains something like an API key"
    worker_key = environment(service(compose_model(COMPOSE_FILE), "worker"))["OPENAI_API_KEY"]
    assert not worker_key.startswith("sk-"), "the simulator's token must not look like a real key"


# ---------------------------------------------------------------------------------------------- the real tool


def compose_config(*files: Path, env: dict[str, str], output: str = "--quiet") -> subprocess.CompletedProcess[str]:
    command = find_compose_command()
    if command is None:
        pytest.skip("no Compose v2 binary (docker compose plugin or docker-compose v2); structural checks ran")
    args = [arg for path in files for arg in ("-f", str(path))]
    return subprocess.run(
        [*command, "--project-directory", str(ROOT), *args, "config", *output.split()],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def clean_env() -> dict[str, str]:
    """No setting of ours, and none of Compose's own (``COMPOSE_FILE`` …) either."""
    return {name: value for name, value in child_env().items() if not name.startswith("COMPOSE_")}


def test_docker_compose_config_accepts_the_file() -> None:
    result = compose_config(COMPOSE_FILE, env=clean_env())
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_accepts_the_openai_override_and_needs_the_key() -> None:
    files = (COMPOSE_FILE, COMPOSE_OPENAI)
    with_key = compose_config(*files, env={**clean_env(), "OPENAI_API_KEY": "test-key-from-the-shell"})
    assert with_key.returncode == 0, with_key.stderr
    without_key = compose_config(*files, env=clean_env())
    assert without_key.returncode != 0 and "OPENAI_API_KEY" in without_key.stderr


def test_docker_compose_resolves_the_environments_these_tests_checked(model: dict[str, Any]) -> None:
    result = compose_config(COMPOSE_FILE, env=clean_env(), output="--format json")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    for name in ("worker", "topics", "simulator", "kafka"):
        assert resolved[name]["environment"] == environment(service(model, name)), name
        assert resolved[name].get("command") == service(model, name).get("command"), name
