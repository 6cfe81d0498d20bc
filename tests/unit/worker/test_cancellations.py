"""Cancellations: a job of a cancelled batch, published before the cancel, goes to review without a call."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from pipeline.outcomes import Outcome
from pipeline.routing import NO_THRESHOLDS, ToReview
from pipeline.worker import cancellations as cancellations_module
from pipeline.worker.cancellations import BatchRecord, Cancellations
from pipeline.worker.processor import Processor
from schemas.batches import BatchFile, BatchManifest, TopicOffsets
from schemas.chat import UserMessage
from schemas.topics import Cancelled, Job, Source

CANCELLED_AT = 1_764_000_000_000
OFFSETS = TopicOffsets(topic="t", offsets=[0])


def manifest(batch_id: str, cancelled_ms: int | None) -> bytes:
    return msgspec.json.encode(
        BatchManifest(
            id=batch_id,
            status="submitted",
            created_ms=1,
            input_file=BatchFile(name="f.jsonl", size=1, sha256="0" * 64, lines=1),
            requests=1,
            input=OFFSETS,
            output=OFFSETS,
            review=OFFSETS,
            cancelled_ms=cancelled_ms,
        )
    )


def job(batch_id: str | None) -> Job:
    metadata = {"batch_id": batch_id, "custom_id": "r", "batch_line": "1"} if batch_id else None
    return Job(id=f"{batch_id}:r", messages=[UserMessage(content="Hi")], metadata=metadata)


async def test_only_jobs_of_a_cancelled_batch_published_before_the_cancel_are_cancelled() -> None:
    known = Cancellations()
    known.ready.set()
    known.apply(b"b1", manifest("b1", CANCELLED_AT))
    known.apply(b"b2", manifest("b2", None))
    reason = await known.check(job("b1"), CANCELLED_AT - 5)
    assert reason == Cancelled(batch_id="b1", cancelled_at=CANCELLED_AT)
    assert await known.check(job("b1"), None) is not None, "a record without a timestamp counts as published before"
    assert await known.check(job("b1"), CANCELLED_AT + 1) is None, "a replay published after the cancel runs"
    assert await known.check(job("b2"), 0) is None
    assert await known.check(job(None), 0) is None
    known.apply(b"b1", None)
    assert "b1" not in known, "a tombstone forgets the batch"
    known.apply(b"b3", b"not json")
    assert "b3" not in known


class Feed:
    """A batches topic in memory: each read hands over what was queued, then reports the end."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[BatchRecord]] = asyncio.Queue()
        self.closed = False

    async def read(self, timeout_ms: int) -> tuple[list[BatchRecord], bool]:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout_ms / 1000), True
        except TimeoutError:
            return [], True

    async def close(self) -> None:
        self.closed = True


async def test_a_batch_job_waits_for_the_first_read_to_the_end_before_its_check() -> None:
    known = Cancellations()
    feed = Feed()
    checking = asyncio.create_task(known.check(job("b1"), 0))
    await asyncio.sleep(0.01)
    assert not checking.done(), "a restarted worker does not call what was cancelled while it was down"
    feed.queue.put_nowait([(b"b1", manifest("b1", CANCELLED_AT))])
    known.start(feed)
    assert await asyncio.wait_for(checking, 2) is not None
    await known.stop()
    assert feed.closed


async def test_a_follower_that_cannot_read_lets_batch_jobs_run_after_one_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cancellations_module, "FIRST_READ_WAIT_S", 0.01)
    known = Cancellations()
    assert await known.check(job("b1"), 0) is None
    assert await asyncio.wait_for(known.check(job("b1"), 0), 0.005) is None, "later jobs do not wait again"


class NeverCalled:
    calls = 0

    async def complete(self, job: Job) -> Outcome:
        self.calls += 1
        raise AssertionError("a cancelled job is never called")

    provider_available = True
    takes_new_jobs = True

    async def aclose(self) -> None:
        pass


async def test_the_processor_routes_a_cancelled_batch_job_to_review_without_a_call() -> None:
    known = Cancellations()
    known.start(None)
    known.apply(b"b1", manifest("b1", CANCELLED_AT))
    client = NeverCalled()
    processor = Processor(client, NO_THRESHOLDS, max_job_bytes=1 << 20, cancellations=known)
    source = Source(topic="prompts", partition=0, offset=3)
    routed = await processor.process(msgspec.json.encode(job("b1")), source, CANCELLED_AT - 1)
    assert isinstance(routed, ToReview) and isinstance(routed.review.reason, Cancelled)
    assert routed.review.job == job("b1") and routed.review.metadata == job("b1").metadata, "replay can send it"
    assert routed.review.attempts == 0 and client.calls == 0
