"""The headers on every record the pipeline produces, pinned: their names and values are a contract with the
services that read our topics, and ``pipeline replay`` reads the replay count that older workers wrote."""

from __future__ import annotations

from pipeline.commands.replay import replay_count
from pipeline.kafka import record_headers


def test_a_review_record_carries_every_header_as_text() -> None:
    headers = record_headers(
        job_id="job-7",
        topic="prompts",
        partition=3,
        offset=42,
        timestamp_ms=1_764_633_600_000,
        group_id="pipeline",
        reason_kind="api_error",
        replay_count=b"2",
    )
    assert headers == [
        ("pipeline_job-id", b"job-7"),
        ("pipeline_original-topic", b"prompts"),
        ("pipeline_original-partition", b"3"),
        ("pipeline_original-offset", b"42"),
        ("pipeline_original-consumer-group", b"pipeline"),
        ("pipeline_original-timestamp", b"1764633600000"),
        ("pipeline_reason-kind", b"api_error"),
        ("pipeline_replay-count", b"2"),
    ]


def test_a_record_without_a_job_id_or_a_timestamp_carries_only_where_it_came_from() -> None:
    headers = record_headers(job_id=None, topic="prompts", partition=0, offset=7, timestamp_ms=-1, group_id="g")
    assert headers == [
        ("pipeline_original-topic", b"prompts"),
        ("pipeline_original-partition", b"0"),
        ("pipeline_original-offset", b"7"),
        ("pipeline_original-consumer-group", b"g"),
    ]


def test_replay_reads_the_count_a_record_carries_and_counts_anything_else_as_never_replayed() -> None:
    assert replay_count([("pipeline_job-id", b"job-7"), ("pipeline_replay-count", b"3")]) == 3
    assert replay_count([("pipeline_job-id", b"job-7")]) == 0
    assert replay_count([("pipeline_replay-count", b"three")]) == 0
    assert replay_count(None) == 0
