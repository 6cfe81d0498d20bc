"""Fair share through the whole worker on fakes: one partition's flood does not keep another's jobs waiting,
neither in the fetch (the flood is paused on its own when its read-ahead is full) nor for the slots."""

from __future__ import annotations

import msgspec
from aiokafka.structs import TopicPartition

from schemas import UserMessage
from schemas.topics import Job
from tests.unit.worker.fakes import INPUT, Rig, rig, start, until

FLOOD = TopicPartition(INPUT, 0)
OTHER = TopicPartition(INPUT, 1)


def publish(r: Rig, tp: TopicPartition, ids: list[str]) -> None:
    for job_id in ids:
        r.consumer.append(tp, msgspec.json.encode(Job(id=job_id, messages=[UserMessage(content="hello")])))


def calls(r: Rig, prefix: str) -> list[str]:
    return sorted(job_id for job_id in r.client.calls if job_id.startswith(prefix))


async def test_a_partition_that_gets_work_behind_a_flood_gets_its_share_of_the_slots_at_once() -> None:
    async with rig(partitions=2, concurrency=4) as r:
        publish(r, FLOOD, [f"a-{n}" for n in range(200)])
        await start(r)
        await until(lambda: len(r.client.calls) == 4, "the flood takes every slot")
        await until(lambda: FLOOD in r.consumer.paused(), "the flood's read-ahead is full: it is paused alone")
        assert OTHER not in r.consumer.paused()
        publish(r, OTHER, [f"b-{n}" for n in range(6)])
        await until(lambda: r.worker.scheduler.waiting(OTHER) == 1, "the other partition is fetched meanwhile")

        r.client.release("a-0")
        await until(lambda: calls(r, "b-") == ["b-0"], "the first freed slot goes to the other partition")
        r.client.release("a-1")
        await until(lambda: calls(r, "b-") == ["b-0", "b-1"], "and the next, until the calls are even")
        r.client.release("a-2")
        await until(lambda: len(r.client.calls) == 4, "a slot freed once they are even")
        assert calls(r, "b-") == ["b-0", "b-1"] and len(calls(r, "a-")) == 2, "goes back to the flood"

        r.client.release("b-0")
        await until(lambda: calls(r, "b-") == ["b-1", "b-2"], "the other partition keeps its half")
        r.client.release("b-1")
        await until(lambda: calls(r, "b-") == ["b-2", "b-3"], "while it has work")
        assert len(calls(r, "a-")) == 2
        assert r.worker.scheduler.violations() == []
