"""Shared fixtures: one Kafka broker (also behind a fault-injecting proxy), one provider simulator (see
tests/fixtures/), and a hermetic session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fixtures.env import is_setting

pytest_plugins = ["tests.fixtures.broker", "tests.fixtures.kafka_proxy", "tests.fixtures.simulator"]


@pytest.fixture(scope="session", autouse=True)
def hermetic_environment() -> Iterator[None]:
    """The session runs without the developer's pipeline settings, put back when it ends (tests/fixtures/env.py)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if is_setting(name)]:
            patch.delenv(name)
        yield
