"""ops/k8s agrees with the code and with itself: the ConfigMap holds settings `pipeline run` reads (and they
parse), the probes use the worker's port and paths, the grace period covers the drain, the PDB and the KEDA
ScaledObject select the Deployment, KEDA watches the group and topic the worker uses on the same Kafka, and
never scales past the partitions. kubectl renders the kustomization and kubernetes-validate checks the
result against the Kubernetes schemas when they are installed."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from pipeline.cli import build_parser
from pipeline.commands.run import RUN_OPTIONS, load_run_settings
from pipeline.config import WorkerSettings, load_worker_settings
from tests.fixtures.env import child_env
from tests.ops.support import K8S, OPS, find_tool, load_yaml, load_yaml_all

WORKER_ENV = {option.env for option in RUN_OPTIONS}


def resources() -> list[dict[str, Any]]:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    return [doc for name in kustomization["resources"] for doc in load_yaml_all(K8S / name)]


def the(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    (found,) = [doc for doc in (docs or resources()) if doc["kind"] == kind]
    return found


def worker_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    return container


def config() -> dict[str, str]:
    data: dict[str, str] = the("ConfigMap")["data"]
    return data


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    present = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    for doc in resources():
        assert {"apiVersion", "kind", "metadata"} <= set(doc) and doc["metadata"]["name"]
        assert "namespace" not in doc["metadata"], "the kustomization sets the namespace"


def test_the_config_map_holds_settings_pipeline_run_reads_and_they_parse() -> None:
    data = config()
    assert set(data) <= WORKER_ENV, f"pipeline run reads none of {set(data) - WORKER_ENV}"
    assert "OPENAI_API_KEY" not in data, "the key belongs in the Secret"
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values are strings"
    settings = load_run_settings({**data, "OPENAI_API_KEY": "from-the-secret"})
    assert settings.worker.metrics_port == WorkerSettings().metrics_port


def test_the_secret_carries_no_key() -> None:
    secret = the("Secret")
    assert "data" not in secret and "stringData" not in secret, "the key is patched in from the environment"


def test_the_worker_reads_its_config_and_its_key() -> None:
    deployment, secret, configmap = the("Deployment"), the("Secret"), the("ConfigMap")
    container = worker_container(deployment)
    assert container["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]
    (key,) = container["env"]
    assert key["name"] == "OPENAI_API_KEY" and key["name"] in WORKER_ENV
    ref = key["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "OPENAI_API_KEY")
    assert build_parser().parse_args(container["args"]).command == "run"
    images = {image["name"] for image in load_yaml(K8S / "kustomization.yaml")["images"]}
    assert container["image"] in images


def test_probes_use_the_metrics_port_and_the_worker_paths() -> None:
    container = worker_container(the("Deployment"))
    (port,) = container["ports"]
    assert port["containerPort"] == int(config()["PIPELINE_METRICS_PORT"]) == WorkerSettings().metrics_port
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in (port["name"], port["containerPort"]), probe
    annotations = the("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_resources_and_security_are_set() -> None:
    deployment = the("Deployment")
    container = worker_container(deployment)
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][section]), section
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count; a fixed one would fight it"


def test_the_grace_period_covers_the_drain_deadline() -> None:
    drain = load_worker_settings(config()).drain_timeout_s
    grace = the("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= drain + 10, "drain, then flush, commit and leave the group before SIGKILL"


def test_a_rolling_update_never_adds_a_worker_without_partitions() -> None:
    rolling = the("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0 and rolling["maxUnavailable"] >= 1


def test_the_disruption_budget_selects_the_workers() -> None:
    deployment, pdb = the("Deployment"), the("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert pdb["spec"].get("maxUnavailable") == 1 or "minAvailable" in pdb["spec"]


def partitions() -> int:
    args = build_parser().parse_args(worker_container_of_job()["args"])
    assert (args.command, args.action) == ("topics", "create")
    return int(args.partitions)


def worker_container_of_job() -> dict[str, Any]:
    job = the("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": the("ConfigMap")["metadata"]["name"]}}]
    return container


def test_keda_scales_the_deployment_on_the_workers_group_lag_within_the_partitions() -> None:
    scaled = the("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == the("Deployment")["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    settings = load_worker_settings(config())
    assert meta["bootstrapServers"] == config()["KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == settings.group_id
    assert meta["topic"] == settings.input_topic
    assert int(meta["lagThreshold"]) > 0
    assert meta["allowIdleConsumers"] == "false"
    low, high = scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]
    assert 1 <= low <= high <= partitions(), "workers beyond the partitions would own nothing"


def test_the_kustomize_replacements_copy_the_config_into_the_trigger() -> None:
    replacements = load_yaml(K8S / "kustomization.yaml")["replacements"]
    copied = {}
    for replacement in replacements:
        source = replacement["source"]
        assert (source["kind"], source["name"]) == ("ConfigMap", the("ConfigMap")["metadata"]["name"])
        key = source["fieldPath"].removeprefix("data.")
        assert key in config()
        for target in replacement["targets"]:
            assert target["select"] == {"kind": "ScaledObject", "name": the("ScaledObject")["metadata"]["name"]}
            for path in target["fieldPaths"]:
                copied[path.rpartition(".")[2]] = key
    assert copied == {
        "bootstrapServers": "KAFKA_BOOTSTRAP_SERVERS",
        "consumerGroup": "PIPELINE_GROUP_ID",
        "topic": "PIPELINE_INPUT_TOPIC",
    }


def test_the_kubernetes_scrape_job_finds_these_pods() -> None:
    (job,) = load_yaml(OPS / "prometheus" / "kubernetes.yml")["scrape_configs"]
    assert job["job_name"] == "pipeline-worker", "the alert rules select this job"
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [
        load_yaml(K8S / "kustomization.yaml")["namespace"]
    ]
    keep = {
        tuple(rule["source_labels"]): rule["regex"] for rule in job["relabel_configs"] if rule.get("action") == "keep"
    }
    labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == labels["app.kubernetes.io/name"]
    assert (
        keep[("__meta_kubernetes_pod_container_port_name",)] == worker_container(the("Deployment"))["ports"][0]["name"]
    )


# ---------------------------------------------------------------------------------------------- the real tools


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = find_tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the manifests were checked file by file")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert result.returncode == 0, result.stderr
    import yaml

    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_kubectl_kustomize_renders_the_namespace_images_and_trigger(rendered: list[dict[str, Any]]) -> None:
    namespace = load_yaml(K8S / "kustomization.yaml")["namespace"]
    assert {doc["metadata"].get("namespace") for doc in rendered if doc["kind"] != "Namespace"} == {namespace}
    (image,) = load_yaml(K8S / "kustomization.yaml")["images"]
    assert worker_container(the("Deployment", rendered))["image"] == f"{image['newName']}:{image['newTag']}"
    data = the("ConfigMap", rendered)["data"]
    meta = the("ScaledObject", rendered)["spec"]["triggers"][0]["metadata"]
    assert (meta["bootstrapServers"], meta["consumerGroup"], meta["topic"]) == (
        data["KAFKA_BOOTSTRAP_SERVERS"],
        data["PIPELINE_GROUP_ID"],
        data["PIPELINE_INPUT_TOPIC"],
    )


def test_the_rendered_manifests_match_the_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed; structural checks ran"
    )
    version = kubernetes_validate.latest_version()
    for doc in rendered:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: no schema ships with Kubernetes; checked structurally above
        kubernetes_validate.validate(doc, version, strict=True)
