"""The offsets part without a broker: epochs, the commit schedule, the done map on assignment."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.ledger import encode_done_map
from pipeline.metrics import Metrics
from pipeline.worker.offsets import Admission, Offsets, admit

TP = TopicPartition("prompts", 0)


class Commits:
    def __init__(self) -> None:
        self.made: list[dict[TopicPartition, OffsetAndMetadata]] = []
        self.failing = False

    async def __call__(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.failing:
            raise KafkaConnectionError("coordinator away")
        self.made.append(offsets)


def value(metric: object) -> float:
    return float(metric._value.get())  # type: ignore[attr-defined]


def test_a_completion_of_an_earlier_epoch_counts_for_nothing_even_after_the_partition_came_back() -> None:
    metrics = Metrics()
    offsets = Offsets(metrics)
    first = offsets.assign(TP, None)
    assert admit(first, 0) is Admission.TRACKED
    offsets.release([TP])
    again = offsets.assign(TP, None)
    assert again.epoch != first.epoch
    assert admit(again, 0) is Admission.TRACKED
    assert offsets.complete(TP, first.epoch, 0) is False, "the job was fetched under the old assignment"
    assert again.commit_offset() == 0 and value(metrics.stale_completions) == 1
    assert offsets.complete(TP, again.epoch, 0) is True
    assert again.commit_offset() == 1


def test_records_below_the_next_offset_are_seen_and_remembered_ones_are_done_before() -> None:
    offsets = Offsets(Metrics())
    offsets.keeps_metadata = True
    ledger = offsets.assign(TP, OffsetAndMetadata(10, encode_done_map(10, [(12, 14)])))
    assert admit(ledger, 9) is Admission.SEEN
    assert [admit(ledger, o) for o in (10, 11, 12, 13, 14)] == [
        Admission.TRACKED,
        Admission.TRACKED,
        Admission.DONE_BEFORE,
        Admission.DONE_BEFORE,
        Admission.TRACKED,
    ]
    assert admit(ledger, 11) is Admission.SEEN, "fetched twice"


async def test_maps_are_written_until_a_read_back_shows_the_broker_drops_them() -> None:
    metrics = Metrics()
    stored: dict[TopicPartition, OffsetAndMetadata] = {}

    async def read_back(partitions: list[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        return {tp: OffsetAndMetadata(stored[tp].offset, "") for tp in partitions}  # like the embedded broker

    async def commit(offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        stored.update(offsets)

    offsets = Offsets(metrics, read_back=read_back)
    ledger = offsets.assign(TP, None)
    for offset in range(3):
        admit(ledger, offset)
    offsets.complete(TP, ledger.epoch, 1)
    await offsets.commit(commit)
    assert stored[TP].metadata.startswith("pc1:"), "written while it is not known whether the broker keeps it"
    assert offsets.keeps_metadata is False and value(metrics.commit_metadata_supported) == 0
    offsets.complete(TP, ledger.epoch, 2)
    assert offsets.due() == {TP: OffsetAndMetadata(0, "")}, "no more maps for a broker that drops them"


async def test_a_broker_that_keeps_maps_is_recognised_and_maps_are_read_whatever_was_learnt() -> None:
    metrics = Metrics()
    stored: dict[TopicPartition, OffsetAndMetadata] = {}

    async def read_back(partitions: list[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        return {tp: stored[tp] for tp in partitions}

    async def commit(offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        stored.update(offsets)

    offsets = Offsets(metrics, read_back=read_back)
    ledger = offsets.assign(TP, None)
    admit(ledger, 0)
    admit(ledger, 1)
    offsets.complete(TP, ledger.epoch, 1)
    await offsets.commit(commit)
    assert offsets.keeps_metadata is True and value(metrics.commit_metadata_supported) == 1
    offsets.release([TP])
    fresh = Offsets(Metrics())
    again = fresh.assign(TP, stored[TP])
    assert [admit(again, o) for o in (0, 1)] == [Admission.TRACKED, Admission.DONE_BEFORE]


async def test_a_commit_goes_out_only_when_the_point_moved_and_a_failed_one_is_tried_again() -> None:
    metrics = Metrics()
    offsets = Offsets(metrics)
    commits = Commits()
    ledger = offsets.assign(TP, OffsetAndMetadata(5, ""))
    await offsets.commit(commits)
    assert commits.made == [], "the committed offset did not move"
    admit(ledger, 5)
    admit(ledger, 6)
    offsets.complete(TP, ledger.epoch, 5)
    commits.failing = True
    await offsets.commit(commits)
    assert value(metrics.commit_failures) == 1 and commits.made == []
    commits.failing = False
    await offsets.commit(commits)
    assert commits.made == [{TP: OffsetAndMetadata(6, "")}]
    await offsets.commit(commits)
    assert len(commits.made) == 1, "nothing moved since"


@pytest.mark.parametrize("keeps", [True, False])
async def test_a_released_partition_gets_its_final_commit_with_the_done_map_when_kept(keeps: bool) -> None:
    offsets = Offsets(Metrics())
    offsets.keeps_metadata = keeps
    commits = Commits()
    ledger = offsets.assign(TP, None)
    for offset in range(4):
        admit(ledger, offset)
    offsets.complete(TP, ledger.epoch, 2)
    released = offsets.release([TP])
    assert TP not in offsets and offsets.partitions == []
    await offsets.commit(commits, released)
    expected = encode_done_map(0, [(2, 3)]) if keeps else ""
    assert commits.made == [{TP: OffsetAndMetadata(0, expected)}]
    assert (expected != "") is keeps
