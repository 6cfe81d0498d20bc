"""The results spill: lines come back in input order, the standing record of each line, whatever came first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from aiokafka.structs import ConsumerRecord

from pipeline.batch.progress import BatchRecord, Counts, Tracker
from pipeline.batch.results import ResultsRequest, ResultsSpill, write_files
from pipeline.metrics import Metrics
from pipeline.routing import ToOutput, ToReview
from pipeline.worker.sink import Destinations, Sink
from schemas.batches import BatchFile, BatchManifest, TopicOffsets
from schemas.chat import ChatCompletion, ChatCompletionMessage, Choice
from schemas.topics import Cancelled, Result, Review, Source

SOURCE = Source(topic="prompts", partition=0, offset=0)
OFFSETS = TopicOffsets(topic="t", offsets=[0])
MANIFEST = BatchManifest(
    id="b",
    status="submitted",
    created_ms=0,
    input_file=BatchFile(name="f", size=1, sha256="0" * 64, lines=4),
    requests=3,
    input=OFFSETS,
    output=OFFSETS,
    review=OFFSETS,
)


def completion(text: str) -> ChatCompletion:
    message = ChatCompletionMessage(role="assistant", content=text)
    choice = Choice(index=0, finish_reason="stop", message=message)
    return ChatCompletion(id=f"c-{text}", object="chat.completion", created=1, model="m", choices=[choice])


def tags(line: int) -> dict[str, str]:
    return {"batch_id": "b", "custom_id": f"r{line}", "batch_line": str(line)}


def result(line: int) -> bytes:
    record = Result(
        id=f"b:r{line}",
        model="m",
        content=f"answer {line}",
        finish_reason="stop",
        usage=None,
        moderation=None,
        metadata=tags(line),
        attempts=1,
        latency_ms=1.0,
        completion_id=f"c{line}",
        source=SOURCE,
        completion=completion(f"answer {line}"),
    )
    return msgspec.json.encode(record)


def cancelled(line: int) -> bytes:
    review = Review(id=f"b:r{line}", reason=Cancelled(batch_id="b", cancelled_at=1), source=SOURCE, metadata=tags(line))
    return msgspec.json.encode(review)


def found(line: int, kind: str | None, value: bytes) -> BatchRecord:
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord("t", 0, 0, 5_000, 0, b"k", value, None, 1, len(value), [])
    return BatchRecord(line, f"r{line}", kind, record)


def test_lines_are_written_in_input_order_with_the_record_that_stands_for_each(tmp_path: Path) -> None:
    spill = ResultsSpill(tmp_path, MANIFEST.input_file.lines, keep_reviews=True)
    tracker = Tracker(MANIFEST)
    arrivals = [
        (4, "cancelled", cancelled(4)),
        (2, None, result(2)),
        (1, "cancelled", cancelled(1)),
        (1, None, result(1)),
    ]
    for line, kind, value in arrivals:
        if tracker.offer(line, kind, 0):
            spill.add(found(line, kind, value))
    spill.add(found(3, None, b"{not json"))  # a record that cannot be read is counted, not written
    request = ResultsRequest(output=tmp_path / "out", errors=tmp_path / "err", reviews=tmp_path / "rev")
    written = write_files(spill, request, tracker.counts())
    spill.close()
    assert (written.output, written.errors, written.reviews, written.unreadable) == (2, 1, 1, 1)
    outputs = [json.loads(line) for line in (tmp_path / "out").read_text().splitlines()]
    assert [line["custom_id"] for line in outputs] == ["r1", "r2"], "line 1's clean result replaced its review"
    assert outputs[0]["response"]["body"]["choices"][0]["message"]["content"] == "answer 1"
    errors = [json.loads(line) for line in (tmp_path / "err").read_text().splitlines()]
    assert [(line["custom_id"], line["error"]["code"]) for line in errors] == [("r4", "cancelled")]
    reviews = (tmp_path / "rev").read_bytes().splitlines()
    assert [msgspec.json.decode(r, type=Review).id for r in reviews] == ["b:r4"]
    assert not list(tmp_path.glob(".*.partial")), "written under a temporary name, then renamed"


def test_only_the_files_asked_for_are_written(tmp_path: Path) -> None:
    spill = ResultsSpill(tmp_path, 4, keep_reviews=False)
    spill.add(found(1, "cancelled", cancelled(1)))
    written = write_files(spill, ResultsRequest(output=tmp_path / "out"), Counts(1, 0, 0, {"cancelled": 1}, 0))
    spill.close()
    assert (written.output, written.errors, written.reviews) == (0, 0, 0)
    assert (tmp_path / "out").read_text() == ""


def test_a_batch_result_too_large_with_its_completion_goes_out_without_it() -> None:
    big = msgspec.json.decode(result(1), type=Result)
    big = msgspec.structs.replace(big, completion=completion("x" * 3000))
    sink = Sink(producer=None, destinations=Destinations("out", "review", "g", 2048), metrics=Metrics())  # type: ignore[arg-type]
    record: Any = ConsumerRecord("prompts", 0, 0, 0, 0, b"k", b"{}", None, 1, 2, [])
    routed, encoded = sink.fit(ToOutput(big), record)
    assert isinstance(routed, ToOutput) and routed.result.completion is None, "results rebuild the body"
    assert encoded.size <= 2048
    too_big = msgspec.structs.replace(big, content="y" * 3000, completion=None)
    assert isinstance(sink.fit(ToOutput(too_big), record)[0], ToReview), "as before: an oversize review"
