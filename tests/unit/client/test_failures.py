"""Reading a failed attempt: which statuses are retriable, and the waits the server's headers name."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.client.failures import failure_from_status, parse_go_duration, parse_retry_after, rate_limit_reset_s


def error_body(message: str, kind: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


NOW = 1_795_000_000.0  # 2026-11-18T11:06:40Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("12ms", 0.012),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("100ns", 1e-7),
        (".5s", 0.5),
        ("2", 2.0),
        (" 7s ", 7.0),
    ],
)
def test_go_durations_are_read_as_seconds(text: str, seconds: float) -> None:
    parsed = parse_go_duration(text)
    assert parsed is not None
    assert math.isclose(parsed, seconds, rel_tol=1e-9)


@pytest.mark.parametrize("text", ["", "s", "abc", "1x", "1s2", "-1s", "1s-2ms", "nan", "inf"])
def test_malformed_go_durations_are_none(text: str) -> None:
    assert parse_go_duration(text) is None


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "30"}, NOW) == 1.5


def test_retry_after_in_seconds_may_be_fractional() -> None:
    assert parse_retry_after({"retry-after": "2.25"}, NOW) == 2.25


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    headers = {"retry-after": "Wed, 18 Nov 2026 11:06:47 GMT"}
    assert parse_retry_after(headers, NOW) == pytest.approx(7.0)


def test_retry_after_date_in_the_past_means_now() -> None:
    assert parse_retry_after({"retry-after": "Wed, 18 Nov 2026 11:00:00 GMT"}, NOW) == 0.0


def test_malformed_retry_after_ms_falls_back_to_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "3"}, NOW) == 3.0


def test_unreadable_retry_after_is_none() -> None:
    assert parse_retry_after({"retry-after": "whenever"}, NOW) is None
    assert parse_retry_after({}, NOW) is None


def test_an_enormous_retry_after_stays_enormous() -> None:
    """So the cap refuses it, instead of it turning into a short backoff."""
    assert parse_retry_after({"retry-after": "1e400"}, NOW) == math.inf


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 520])
def test_transient_statuses_are_retriable(status: int) -> None:
    assert failure_from_status(status, {}, b"", now_epoch_s=NOW, secret=None).retriable


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 418])
def test_client_errors_are_not_retriable(status: int) -> None:
    assert not failure_from_status(status, {}, b"", now_epoch_s=NOW, secret=None).retriable


def test_insufficient_quota_is_never_retried() -> None:
    body = error_body("You exceeded your current quota", "insufficient_quota", "insufficient_quota")
    failure = failure_from_status(429, {"x-should-retry": "true"}, body, now_epoch_s=NOW, secret=None)
    assert not failure.retriable
    assert (failure.error_type, failure.code) == ("insufficient_quota", "insufficient_quota")


def test_x_should_retry_true_makes_an_unlisted_status_retriable() -> None:
    assert failure_from_status(418, {"x-should-retry": "true"}, b"", now_epoch_s=NOW, secret=None).retriable


def test_x_should_retry_true_cannot_make_a_bad_request_retriable() -> None:
    assert not failure_from_status(400, {"x-should-retry": "true"}, b"", now_epoch_s=NOW, secret=None).retriable


def test_x_should_retry_false_vetoes_a_server_error_retry() -> None:
    assert not failure_from_status(503, {"x-should-retry": "false"}, b"", now_epoch_s=NOW, secret=None).retriable


def test_error_body_fields_are_carried_and_the_secret_cut_out() -> None:
    body = error_body("Incorrect API key provided: sk-live-123.", "invalid_request_error", "invalid_api_key")
    failure = failure_from_status(401, {}, body, now_epoch_s=NOW, secret="sk-live-123")
    assert failure.failure == "http_status"
    assert failure.status == 401
    assert failure.code == "invalid_api_key"
    assert "sk-live-123" not in failure.message
    assert failure.message == "HTTP 401: Incorrect API key provided: [redacted]."


def test_a_numeric_error_code_becomes_text() -> None:
    body = b'{"error": {"message": "Bad gateway.", "type": "cf_bad_gateway", "code": 502}}'
    assert failure_from_status(502, {}, body, now_epoch_s=NOW, secret=None).code == "502"


def test_a_non_json_error_body_gives_the_status_alone() -> None:
    failure = failure_from_status(502, {}, b"<html>Bad gateway</html>", now_epoch_s=NOW, secret=None)
    assert failure.message == "HTTP 502"
    assert failure.error_type is None


def test_rate_limit_reset_of_the_exhausted_limit() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-remaining-tokens": "5000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert rate_limit_reset_s(headers) == pytest.approx(0.012)
    assert rate_limit_reset_s({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1s"}) is None
