"""The configuration layer: flags > environment > TOML, every problem one line, secrets never echoed."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pipeline.config import (
    WORKER_OPTIONS,
    ConfigError,
    add_option_flags,
    load_worker_settings,
    merge_sources,
    read_toml,
    resolve_values,
)
from pipeline.kafka import KAFKA_OPTIONS, load_kafka_settings

KNOWN = [o.env for o in (*WORKER_OPTIONS, *KAFKA_OPTIONS)]


def test_defaults_are_the_documented_topic_names_and_concurrency() -> None:
    settings = load_worker_settings({})
    assert (settings.input_topic, settings.output_topic, settings.review_topic) == ("prompts", "completions", "review")
    assert (settings.group_id, settings.concurrency) == ("pipeline", 256)


def test_flags_beat_environment_which_beats_toml(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.toml"
    config.write_text('[pipeline]\nconcurrency = 8\ngroup_id = "from-toml"\ninput_topic = "toml-in"\n')
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_option_flags(parser, WORKER_OPTIONS, "worker")
    args = parser.parse_args(["--config", str(config), "--concurrency", "64"])
    values = resolve_values(args, WORKER_OPTIONS, {"PIPELINE_GROUP_ID": "from-env"}, KNOWN)
    settings = load_worker_settings(values)
    assert (settings.concurrency, settings.group_id, settings.input_topic) == (64, "from-env", "toml-in")


def test_toml_tables_map_to_variable_names_and_unknown_keys_are_problems(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.toml"
    config.write_text(
        '[kafka]\nbootstrap_servers = "k1:9092"\n'
        "[pipeline]\nlog_prompts = true\nreview_thresholds = { violence = 0.3 }\nconcurency = 3\n"
    )
    with pytest.raises(ConfigError) as caught:
        read_toml(config, KNOWN)
    assert caught.value.problems == [f"--config {config}: unknown setting pipeline.concurency (PIPELINE_CONCURENCY)"]
    config.write_text(config.read_text().replace("concurency = 3\n", ""))
    values = read_toml(config, KNOWN)
    assert values == {
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092",
        "PIPELINE_LOG_PROMPTS": "true",
        "PIPELINE_REVIEW_THRESHOLDS": "violence=0.3",
    }
    settings = load_worker_settings(merge_sources({}, {}, values))
    assert settings.log_prompts is True and settings.review_thresholds == {"violence": 0.3}


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[pipeline\n")
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        read_toml(config, KNOWN)
    with pytest.raises(ConfigError, match=r"cannot read it"):
        read_toml(tmp_path / "missing.toml", KNOWN)


def test_every_bad_value_is_reported_in_words_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_worker_settings(
            {
                "PIPELINE_CONCURRENCY": "lots",
                "PIPELINE_ORDERING": "fifo",
                "PIPELINE_LOG_PROMPTS": "maybe",
                "PIPELINE_REVIEW_THRESHOLDS": "violence",
                "PIPELINE_METRICS_PORT": "70000",
            }
        )
    assert caught.value.problems == [
        "PIPELINE_CONCURRENCY='lots': expected an integer",
        "PIPELINE_ORDERING='fifo': expected one of unordered, key",
        "PIPELINE_REVIEW_THRESHOLDS='violence': expected NAME=VALUE pairs separated by commas, got 'violence'",
        "PIPELINE_METRICS_PORT='70000': expected an integer <= 65535",
        "PIPELINE_LOG_PROMPTS='maybe': expected true or false",
    ]


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="at most a third"):
        load_worker_settings({"PIPELINE_SESSION_TIMEOUT_MS": "6000", "PIPELINE_HEARTBEAT_INTERVAL_MS": "3000"})
    with pytest.raises(ConfigError, match="must all differ"):
        load_worker_settings({"PIPELINE_OUTPUT_TOPIC": "prompts"})


def test_secrets_are_hidden_in_errors_and_have_no_flag() -> None:
    kafka = load_kafka_settings({"KAFKA_SASL_PASSWORD": "hunter2-secret"})
    assert "hunter2" not in repr(kafka)
    assert kafka.sasl_password is not None and kafka.sasl_password.reveal() == "hunter2-secret"
    parser = argparse.ArgumentParser()
    add_option_flags(parser, KAFKA_OPTIONS, "Kafka")
    assert "--kafka-sasl-password" not in parser.format_help()
    with pytest.raises(ConfigError) as caught:
        load_kafka_settings({"KAFKA_SECURITY_PROTOCOL": "carrier-pigeon", "KAFKA_SASL_PASSWORD": "hunter2-secret"})
    assert "hunter2" not in str(caught.value)


def test_a_revoke_timeout_at_or_above_the_rebalance_timeout_is_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        load_worker_settings({"PIPELINE_REVOKE_TIMEOUT_S": "300", "PIPELINE_MAX_POLL_INTERVAL_MS": "300000"})
    assert "PIPELINE_REVOKE_TIMEOUT_S=300" in str(raised.value)
    assert load_worker_settings({"PIPELINE_REVOKE_TIMEOUT_S": "299"}).revoke_timeout_s == 299


def test_the_kafka_hardening_settings_parse_and_refuse_unknown_values() -> None:
    settings = load_worker_settings(
        {"PIPELINE_GROUP_INSTANCE_ID": "worker-0", "PIPELINE_AUTO_OFFSET_RESET": "none", "PIPELINE_STUCK_JOB_S": "60"}
    )
    assert (settings.group_instance_id, settings.auto_offset_reset, settings.stuck_job_s) == ("worker-0", "none", 60)
    assert load_kafka_settings({"KAFKA_IDEMPOTENCE": "off"}).idempotence == "off"
    with pytest.raises(ConfigError, match="PIPELINE_AUTO_OFFSET_RESET"):
        load_worker_settings({"PIPELINE_AUTO_OFFSET_RESET": "smallest"})
    with pytest.raises(ConfigError, match="KAFKA_IDEMPOTENCE"):
        load_kafka_settings({"KAFKA_IDEMPOTENCE": "maybe"})
