"""Client configuration from the environment, request building, and what a key may never appear in."""

from __future__ import annotations

import pytest

from pipeline.client import ChatClient, ClientConfig, build_request, client_request_id
from pipeline.config import ConfigError
from pipeline.secret import Secret
from schemas import Job, JobParams, UserMessage
from schemas.chat import ModerationParams, ModerationPolicy, ModerationPolicySide, StreamOptions

KEY = "sk-proj-abcdef0123456789"
JOB = Job(id="j", messages=[UserMessage(content="hi")])


def test_defaults_need_only_the_key() -> None:
    config = ClientConfig.from_env({"OPENAI_API_KEY": KEY})
    assert config.api_key.reveal() == KEY
    assert config.base_url == "https://api.openai.com/v1"
    assert (config.model, config.moderation_model, config.moderation_mode) == (
        "gpt-4o-mini",
        "omni-moderation-latest",
        "inline",
    )
    assert (config.concurrency, config.max_attempts, config.stream, config.verify_tls) == (256, 5, False, True)
    assert config.requests_per_minute is None and config.policy is None


def test_every_variable_is_read() -> None:
    config = ClientConfig.from_env(
        {
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": "http://localhost:8080/v1",
            "OPENAI_ORG_ID": "org-1",
            "OPENAI_PROJECT_ID": "proj-1",
            "PIPELINE_MODEL": "gpt-4.1",
            "PIPELINE_MODERATION_MODEL": "omni-moderation-2024-09-26",
            "PIPELINE_MODERATION_MODE": "auto",
            "PIPELINE_MODERATION_POLICY": "input=block, output=score",
            "PIPELINE_STREAM": "true",
            "PIPELINE_CONCURRENCY": "64",
            "PIPELINE_CONNECT_TIMEOUT_S": "2",
            "PIPELINE_READ_TIMEOUT_S": "30",
            "PIPELINE_WRITE_TIMEOUT_S": "10",
            "PIPELINE_POOL_TIMEOUT_S": "5",
            "PIPELINE_JOB_DEADLINE_S": "90",
            "PIPELINE_MAX_ATTEMPTS": "3",
            "PIPELINE_RETRY_AFTER_CAP_S": "20",
            "PIPELINE_RPM": "500",
            "PIPELINE_TPM": "200000",
            "PIPELINE_MAX_RESPONSE_BYTES": "65536",
            "PIPELINE_HTTP_CLIENT": "httpx",
        }
    )
    assert (config.organization, config.project, config.model) == ("org-1", "proj-1", "gpt-4.1")
    assert config.policy == ModerationPolicy(
        input=ModerationPolicySide(mode="block"), output=ModerationPolicySide(mode="score")
    )
    assert (config.stream, config.concurrency, config.moderation_mode, config.http_client) == (
        True,
        64,
        "auto",
        "httpx",
    )
    assert (config.timeouts.connect, config.timeouts.read, config.timeouts.write, config.timeouts.pool) == (
        2,
        30,
        10,
        5,
    )
    assert (config.job_deadline_s, config.retry_policy.max_attempts, config.retry_policy.retry_after_cap_s) == (
        90,
        3,
        20,
    )
    assert (config.requests_per_minute, config.tokens_per_minute, config.max_response_bytes) == (500, 200000, 65536)


@pytest.mark.parametrize(
    ("variable", "value", "explanation"),
    [
        ("PIPELINE_MODERATION_MODE", "sometimes", "expected one of inline, separate, auto"),
        ("PIPELINE_MODERATION_POLICY", "input=strict", "MODE score or block"),
        ("PIPELINE_MODERATION_POLICY", "sideways=block", "SIDE input or output"),
        ("PIPELINE_MAX_ATTEMPTS", "0", ">= 1"),
        ("PIPELINE_RPM", "lots", "int"),
        ("PIPELINE_READ_TIMEOUT_S", "-1", "> 0"),
        ("PIPELINE_STREAM", "maybe", "true or false"),
        ("PIPELINE_HTTP_CLIENT", "curl", "aiohttp, httpx"),
        ("OPENAI_BASE_URL", "api.openai.com/v1", "http(s) URL"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(variable: str, value: str, explanation: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ClientConfig.from_env({"OPENAI_API_KEY": KEY, variable: value})
    (line,) = str(raised.value).splitlines()
    assert line.startswith(variable)
    assert explanation in line


def test_a_missing_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^OPENAI_API_KEY: not set"):
        ClientConfig.from_env({"OPENAI_API_KEY": "  "})


def test_the_key_appears_in_no_repr_or_error() -> None:
    config = ClientConfig.from_env({"OPENAI_API_KEY": KEY})
    client = ChatClient(config)
    assert KEY not in repr(config) and KEY not in str(config)
    assert KEY not in repr(client)


def test_the_job_overrides_model_params_and_moderation_model() -> None:
    config = ClientConfig(api_key=Secret(KEY), model="gpt-4o-mini", moderation_policy={"output": "block"})
    job = Job(
        id="j",
        messages=[UserMessage(content="hi")],
        model="gpt-4.1",
        moderation_model="omni-x",
        params=JobParams(temperature=0.5, n=2, seed=7),
    )
    request = build_request(job, config)
    assert request.model == "gpt-4.1"
    assert (request.temperature, request.n, request.seed) == (0.5, 2, 7)
    assert request.moderation == ModerationParams(
        model="omni-x", policy=ModerationPolicy(output=ModerationPolicySide(mode="block"))
    )
    assert request.stream is None


def test_defaults_fill_in_what_the_job_leaves_out() -> None:
    request = build_request(JOB, ClientConfig(api_key=Secret(KEY), model="gpt-5-mini"))
    assert request.model == "gpt-5-mini"
    assert request.moderation == ModerationParams(model="omni-moderation-latest")


def test_separate_mode_sends_no_moderation_parameter() -> None:
    assert build_request(JOB, ClientConfig(api_key=Secret(KEY), moderation_mode="separate")).moderation is None


def test_streaming_asks_for_usage() -> None:
    request = build_request(JOB, ClientConfig(api_key=Secret(KEY), stream=True))
    assert request.stream is True
    assert request.stream_options == StreamOptions(include_usage=True)


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("job-42", "job-42"),
        ("tënant/42", "t%C3%ABnant%2F42"),
        ("line\nbreak", "line%0Abreak"),
    ],
)
def test_client_request_ids_are_header_safe(job_id: str, expected: str) -> None:
    assert client_request_id(job_id) == expected


def test_overlong_client_request_ids_are_hashed_and_stay_distinct() -> None:
    first, second = client_request_id("é" * 200), client_request_id("é" * 199 + "e")
    assert first.startswith("sha256-") and len(first) <= 512
    assert first != second
