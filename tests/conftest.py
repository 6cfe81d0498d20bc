"""Shared fixtures: one Kafka broker, one provider simulator (see tests/fixtures/)."""

pytest_plugins = ["tests.fixtures.broker", "tests.fixtures.simulator"]
