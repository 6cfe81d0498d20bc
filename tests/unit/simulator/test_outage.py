"""A provider-wide outage lasts so many answers or so many seconds, then the provider is up again."""

from __future__ import annotations

import pytest

from pipeline.simulator.outage import Outage, OutageError, OutageState, ProviderOutage, refusal


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_outage_refuses_nothing() -> None:
    outage = ProviderOutage(FakeClock())
    assert outage.error() is None
    assert outage.state() == OutageState(error=None, remaining_requests=None, remaining_s=None, refused=0)


def test_an_outage_of_n_requests_refuses_n_then_recovers() -> None:
    outage = ProviderOutage(FakeClock())
    outage.start(Outage(error="invalid_api_key", requests=3))
    assert [outage.error() for _ in range(5)] == ["invalid_api_key"] * 3 + [None, None]
    assert outage.state().refused == 3


def test_an_outage_of_s_seconds_ends_on_the_servers_clock() -> None:
    clock = FakeClock()
    outage = ProviderOutage(clock)
    outage.start(Outage(error="insufficient_quota", seconds=2.0))
    clock.now += 1.5
    assert outage.error() == "insufficient_quota"
    assert outage.state().remaining_s == pytest.approx(0.5)
    clock.now += 0.5
    assert outage.error() is None
    assert outage.state().error is None


def test_the_first_limit_reached_ends_it_and_an_open_one_lasts_until_ended() -> None:
    clock = FakeClock()
    outage = ProviderOutage(clock)
    outage.start(Outage(error="model_not_found", requests=1, seconds=60))
    assert (outage.error(), outage.error()) == ("model_not_found", None)
    outage.start(Outage(error="model_access_denied"))
    clock.now += 3600
    assert [outage.error() for _ in range(100)] == ["model_access_denied"] * 100
    outage.end()
    assert outage.error() is None


@pytest.mark.parametrize(
    ("error", "status", "error_type", "code"),
    [
        ("invalid_api_key", 401, "invalid_request_error", "invalid_api_key"),
        ("model_access_denied", 403, "invalid_request_error", "model_not_found"),
        ("model_not_found", 404, "invalid_request_error", "model_not_found"),
        ("insufficient_quota", 429, "insufficient_quota", "insufficient_quota"),
    ],
)
def test_each_outage_answers_with_the_apis_error(error: OutageError, status: int, error_type: str, code: str) -> None:
    answer = refusal(error, "gpt-4o-mini")
    assert (answer.status, answer.body.error.type, answer.body.error.code) == (status, error_type, code)
    assert "retry-after" not in answer.headers
