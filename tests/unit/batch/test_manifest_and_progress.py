"""The manifest on the wire, and how a batch's results are counted: one standing result per line."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from aiokafka.structs import ConsumerRecord

from pipeline.batch.manifest import decode_manifest, encode_manifest
from pipeline.batch.progress import Tracker, batch_record
from pipeline.batch.status import batch_state, batch_status, status_json, status_text
from schemas.batches import BatchFile, BatchManifest, TopicOffsets

MANIFEST = BatchManifest(
    id="nightly",
    status="submitted",
    created_ms=1_764_000_000_000,
    input_file=BatchFile(name="requests.jsonl", size=2048, sha256="ab" * 32, lines=6),
    requests=5,
    input=TopicOffsets(topic="prompts", offsets=[0, 4]),
    output=TopicOffsets(topic="completions", offsets=[10, 12]),
    review=TopicOffsets(topic="review", offsets=[3, 0]),
    metadata={"team": "search"},
    submitted_ms=1_764_000_001_000,
)


def test_a_manifest_is_keyed_by_batch_id_and_reads_back_as_written() -> None:
    key, value = encode_manifest(MANIFEST)
    assert key == b"nightly"
    assert decode_manifest(value) == MANIFEST
    wire = json.loads(value)
    assert wire["output"] == {"topic": "completions", "offsets": [10, 12]}
    assert "cancelled_ms" not in wire, "unset fields are left out"


def test_a_manifest_written_before_a_field_was_added_still_reads() -> None:
    wire = json.loads(encode_manifest(MANIFEST)[1])
    del wire["metadata"], wire["submitted_ms"]
    assert "skipped_lines" not in wire
    assert decode_manifest(json.dumps(wire).encode()).skipped_lines == 0


def test_output_beats_review_and_a_later_review_replaces_an_earlier_one() -> None:
    tracker = Tracker(MANIFEST)
    assert tracker.offer(1, "api_error", 1) and tracker.offer(1, "flagged", 2), "a replay's review replaces the first"
    assert tracker.offer(1, None, 3), "then a clean result (a reviewer's approval, a replay) stands"
    assert not tracker.offer(1, "flagged", 4), "a review after a clean result does not displace it"
    assert tracker.offer(2, None, 5) and tracker.offer(2, None, 6), "a duplicate result counts once"
    assert tracker.offer(3, "cancelled", 7) and tracker.offer(4, "invalid_job", 8)
    assert not tracker.offer(0, None, 9) and not tracker.offer(7, None, 9), "lines outside the file are ignored"
    counts = tracker.counts()
    assert (counts.total, counts.completed, counts.failed, counts.remaining) == (5, 2, 1, 1)
    assert counts.in_review == {"cancelled": 1}
    assert tracker.last_done_ms == 8


def record(topic: str, key: bytes, value: dict[str, Any], timestamp: int = 0) -> ConsumerRecord[bytes, bytes]:
    raw = json.dumps(value).encode()
    return ConsumerRecord(topic, 0, 0, timestamp, 0, key, raw, None, len(key), len(raw), [])


def test_a_record_is_the_batchs_by_its_key_and_metadata() -> None:
    tags = {"batch_id": "nightly", "custom_id": "r-2", "batch_line": "2"}
    value = {"id": "x", "metadata": tags, "cost_usd": 0.0012}
    mine = batch_record("nightly", "output", record("completions", b"nightly:r-2", value))
    assert mine is not None and (mine.line, mine.custom_id, mine.kind, mine.cost_usd) == (2, "r-2", None, 0.0012)
    review = {"id": "nightly:r-2", "reason": {"kind": "flagged", "side": "input", "categories": []}, "metadata": tags}
    flagged = batch_record("nightly", "review", record("review", b"nightly:r-2", review))
    assert flagged is not None and flagged.kind == "flagged"
    assert batch_record("nightly", "output", record("completions", b"nightly-2:r-2", {"metadata": tags})) is None
    other = {**tags, "batch_id": "other"}
    assert batch_record("nightly", "output", record("completions", b"nightly:r-2", {"metadata": other})) is None


def test_an_invalid_job_review_finds_its_line_in_the_raw_record_it_kept() -> None:
    raw = json.dumps({"id": "nightly:r-3", "messages": [], "metadata": {"batch_id": "nightly", "batch_line": "3"}})
    reason = {"kind": "invalid_job", "error": "x", "raw": raw, "raw_encoding": "utf-8", "raw_size": len(raw)}
    found = batch_record("nightly", "review", record("review", b"nightly:r-3", {"id": "nightly:r-3", "reason": reason}))
    assert found is not None and (found.line, found.kind) == (3, "invalid_job")


def test_status_follows_the_batch_api_names_and_counts() -> None:
    tracker = Tracker(MANIFEST)
    for line, kind in [(1, None), (2, None), (3, "flagged"), (4, "api_error")]:
        tracker.offer(line, kind, MANIFEST.created_ms + 2_000)
    counts = tracker.counts()
    assert batch_state(MANIFEST, counts) == "in_progress"
    cancelled = msgspec.structs.replace(MANIFEST, cancelled_ms=MANIFEST.created_ms + 1)
    assert batch_state(cancelled, counts) == "cancelling"
    status = batch_status(MANIFEST, counts, tracker.last_done_ms, spent_usd=0.25)
    assert (status.rate_per_s, status.eta_s) == (2.0, 0.5)
    wire = json.loads(status_json(status))
    assert wire["request_counts"] == {"total": 5, "completed": 2, "failed": 1}
    assert wire["in_review"] == {"flagged": 1} and wire["remaining"] == 1 and wire["created_at"] == 1_764_000_000
    text = status_text(status)
    assert "in_progress" in text and "flagged 1" in text and "eta 0 s" in text and "$0.250000" in text
    assert wire["cost_usd"] == 0.25
    tracker.offer(5, "cancelled", MANIFEST.created_ms + 3_000)
    assert batch_state(cancelled, tracker.counts()) == "cancelled"
    assert batch_state(MANIFEST, tracker.counts()) == "completed"
    assert batch_state(msgspec.structs.replace(MANIFEST, status="submitting"), tracker.counts()) == "submitting"
