"""Fair shares of the call slots: per-partition ready queues, weighted by input topic (priority lanes).

The scheduler (:mod:`pipeline.worker.scheduler`) keeps its jobs fetched ahead of a free slot here instead of
in one fetch-ordered queue. One queue would hand the slots out in fetch order, so a partition flooded by one
tenant (jobs keyed by tenant) would hold every slot while the other partitions' jobs wait behind its
backlog. Here each partition has its own queue, and a freed slot goes to:

1. the *lane* (input topic) with ready work whose calls in flight are fewest for its weight
   (``calling / weight``), so under load the slots follow the weights, and a lane with nothing ready takes
   nothing: its share is lent to the others until it has work again (the weights bind only under contention);
2. within that lane, the partition with ready work and the fewest calls in flight.

Ties go to whoever was served least recently, so equal partitions start in round-robin order. Calls
already running are never interrupted: a partition that arrives while another holds every slot gets each
slot that frees until their calls are even (a partition's share converges within one call's latency).
Everything is pure, with no clock: the scheduler tells it when a call starts and ends.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from typing import Generic, Protocol, TypeVar

from aiokafka.structs import TopicPartition


class Queued(Protocol):
    @property
    def tp(self) -> TopicPartition: ...


T = TypeVar("T", bound=Queued)


class FairQueues(Generic[T]):
    """Jobs waiting for a slot, one queue per partition; :meth:`pop` takes the fair next one."""

    def __init__(self, weights: Mapping[str, int] | None = None) -> None:
        #: Weight per input topic; a topic not named weighs 1.
        self.weights: dict[str, int] = dict(weights or {})
        self._queues: dict[TopicPartition, deque[T]] = {}
        self._size = 0
        #: Calls in flight per partition and per topic (told by :meth:`started` and :meth:`ended`).
        self.calling: Counter[TopicPartition] = Counter()
        self.calling_by_topic: Counter[str] = Counter()
        #: When a topic / partition was last served (a turn number): the tie-break, oldest first.
        self._served: dict[str | TopicPartition, int] = {}
        self._turns = itertools.count(1)

    def weight(self, topic: str) -> int:
        return self.weights.get(topic, 1)

    # ------------------------------------------------------------------ the queues

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        for queue in self._queues.values():
            yield from queue

    def waiting(self, tp: TopicPartition) -> int:
        """Jobs of this partition waiting for a slot (its read-ahead)."""
        queue = self._queues.get(tp)
        return len(queue) if queue else 0

    def partitions(self) -> list[TopicPartition]:
        """The partitions with jobs waiting."""
        return list(self._queues)

    def push(self, item: T) -> None:
        self._queues.setdefault(item.tp, deque()).append(item)
        self._size += 1

    def remove(self, item: T) -> None:
        queue = self._queues[item.tp]
        queue.remove(item)
        self._size -= 1
        if not queue:
            del self._queues[item.tp]

    def pop(self) -> T:
        """The fair next job (see the module docstring); raises IndexError when none waits."""
        if not self._queues:
            raise IndexError("no job waits for a slot")
        by_topic: dict[str, list[TopicPartition]] = {}
        for tp in self._queues:
            by_topic.setdefault(tp.topic, []).append(tp)
        topic = min(by_topic, key=lambda t: (self.calling_by_topic[t] / self.weight(t), self._served.get(t, 0)))
        tp = min(by_topic[topic], key=lambda p: (self.calling[p], self._served.get(p, 0)))
        turn = next(self._turns)
        self._served[topic] = self._served[tp] = turn
        queue = self._queues[tp]
        item = queue.popleft()
        self._size -= 1
        if not queue:
            del self._queues[tp]
        return item

    # ------------------------------------------------------------------ calls in flight

    def started(self, tp: TopicPartition) -> None:
        self.calling[tp] += 1
        self.calling_by_topic[tp.topic] += 1

    def ended(self, tp: TopicPartition) -> None:
        self.calling[tp] -= 1
        self.calling_by_topic[tp.topic] -= 1
        if not self.calling[tp]:
            del self.calling[tp]
        if not self.calling_by_topic[tp.topic]:
            del self.calling_by_topic[tp.topic]

    def forget(self, tp: TopicPartition) -> None:
        """The partition was revoked: its turn is forgotten (it has no calls or queue left by then)."""
        self._served.pop(tp, None)

    # ------------------------------------------------------------------ invariants

    def violations(self, calling: Mapping[TopicPartition, int]) -> list[str]:
        """What does not hold, given the true calls in flight per partition."""
        found: list[str] = []
        if self._size != sum(len(queue) for queue in self._queues.values()):
            found.append("the ready count differs from the partition queues' lengths")
        for tp, queue in self._queues.items():
            if not queue:
                found.append(f"an empty ready queue is kept for {tp}")
            if any(item.tp != tp for item in queue):
                found.append(f"the ready queue of {tp} holds another partition's job")
        if +self.calling != +Counter(calling):
            found.append("the calls counted per partition differ from the calling tickets")
        by_topic: Counter[str] = Counter()
        for tp, count in calling.items():
            by_topic[tp.topic] += count
        if +self.calling_by_topic != +by_topic:
            found.append("the calls counted per topic differ from the calling tickets")
        return found
