"""A developer's own pipeline settings reach neither the code the tests run nor the processes they start.

See ``tests/fixtures/env.py``: the session removes every ``PIPELINE_*``, ``OPENAI_*`` and ``KAFKA_*`` variable
from ``os.environ``, and every child gets :func:`~tests.fixtures.env.child_env`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.kafka import KafkaSettings
from tests.fixtures.broker import Broker
from tests.fixtures.env import child_env
from tests.integration.harness import Topics, create_topics
from tests.integration.test_cli import pipeline as run_pipeline
from tests.integration.test_cli import topic_env

ROOT = Path(__file__).resolve().parents[2]
PREFIXES = ("PIPELINE_", "OPENAI_", "KAFKA_")
#: What a developer's shell might hold: each one breaks a test that lets it through.
DEVELOPER_SETTINGS = {
    "PIPELINE_CONCURRENCY": "not-a-number",
    "OPENAI_API_KEY": "sk-leaked-from-dev",
    "KAFKA_BOOTSTRAP_SERVERS": "nowhere:1",
}


def test_the_session_holds_none_of_the_developers_settings() -> None:
    assert [name for name in os.environ if name.startswith(PREFIXES)] == []


def test_a_session_started_among_the_developers_settings_runs_without_them() -> None:
    this_test = f"{__file__}::test_the_session_holds_none_of_the_developers_settings"
    session = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", this_test],
        env=child_env(DEVELOPER_SETTINGS),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert session.returncode == 0, session.stdout + session.stderr
    assert "1 passed" in session.stdout


def test_a_child_sees_only_the_settings_its_test_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DEVELOPER_SETTINGS.items():
        monkeypatch.setenv(name, value)
    printed = subprocess.run(
        [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        env=child_env({"PIPELINE_GROUP_ID": "from-the-test"}),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    seen = json.loads(printed.stdout)
    assert {name: value for name, value in seen.items() if name.startswith(PREFIXES)} == {
        "PIPELINE_GROUP_ID": "from-the-test"
    }
    assert seen["PATH"] == os.environ["PATH"], "everything else is inherited"


async def test_a_command_run_the_usual_way_ignores_the_developers_settings(
    kafka_broker: Broker, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in DEVELOPER_SETTINGS.items():
        monkeypatch.setenv(name, value)
    topics = Topics.named(topic_prefix)
    await create_topics(KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers), topics)
    described = await asyncio.to_thread(run_pipeline, ["topics", "describe"], topic_env(kafka_broker, topics))
    assert described.returncode == 0, described.stderr
    assert topics.input in described.stdout
