"""The simulator as a child process (``python -m pipeline.simulator``) and through ``pipeline simulate``."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import msgspec
import pytest

from pipeline.simulator import SimulatorConfig, SimulatorProcess
from pipeline.simulator.process import SimulatorError
from schemas.chat import ChatCompletion
from tests.fixtures.env import child_env

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_a_process_from_cli_arguments_serves_and_counts(make_simulator_process: Any) -> None:
    sim = make_simulator_process(["--rpm", "100", "--faults", "503*1", "--loop", "asyncio"])
    with httpx.Client(base_url=sim.base_url, headers={"Authorization": "Bearer k"}) as client:
        first = client.post("/chat/completions", json=BODY, headers={"X-Client-Request-Id": "j"})
        second = client.post("/chat/completions", json=BODY, headers={"X-Client-Request-Id": "j"})
    assert (first.status_code, second.status_code) == (503, 200)
    assert second.headers["x-ratelimit-limit-requests"] == "100"
    msgspec.json.decode(second.content, type=ChatCompletion)
    stats = sim.stats()
    assert stats.attempts_by_job == {"j": 2} and stats.by_status == {503: 1, 200: 1}
    sim.reset_stats()
    assert sim.stats().requests == 0


def test_a_process_from_a_config_keeps_the_key_out_of_argv() -> None:
    with SimulatorProcess(SimulatorConfig(api_key="sk-secret-key"), env=child_env()) as sim:
        assert sim.pid is not None
        with open(f"/proc/{sim.pid}/cmdline", "rb") as cmdline:
            assert b"sk-secret-key" not in cmdline.read()
        with httpx.Client(base_url=sim.base_url) as client:
            assert client.get("/models", headers={"Authorization": "Bearer other"}).status_code == 401
            assert client.get("/models", headers={"Authorization": "Bearer sk-secret-key"}).status_code == 200
    assert sim.pid is None


def test_a_bad_option_fails_to_start_with_its_message() -> None:
    with pytest.raises(SimulatorError, match="--latency"):
        SimulatorProcess(["--latency", "sometimes"], env=child_env(), startup_timeout_s=20).start()


def test_module_help_has_an_example() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.simulator", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=child_env(),
    )
    assert "pipeline simulate --port 8089" in result.stdout
