"""Which job runs when: the worker's call slots, read-ahead, key queues and backpressure, without any I/O.

Every job the worker holds is a :class:`Ticket` that moves through one state machine::

    WAITING_KEY ──► READY ──► CALLING ──► DELIVERING ──► DONE
         │            │          │             │
         └────────────┴──────────┴─────────────┴──────► DROPPED

- ``WAITING_KEY``: with ``ordering="key"``, an earlier job of the same partition and key is still held.
- ``READY``: fetched ahead of a free slot, in its partition's queue; a returning call's slot goes to the
  partition (and input topic) with the fewest calls in flight for its weight, oldest job of it first
  (:mod:`pipeline.tenancy.fair`): a flooded partition cannot hold every slot while others have work.
- ``CALLING``: holds one of the ``concurrency`` slots while its provider call runs.
- ``DELIVERING``: the call returned and gave its slot to the next job; the result awaits the broker's ack.
- ``DONE``: acknowledged. ``DROPPED``: forgotten without a result (its partition was revoked, the worker is
  draining, or its task ended without delivering): uncommitted, it is the partition's next owner's to do.

The scheduler only decides; the worker does what a decision says. Every transition returns the tickets that
move to ``CALLING`` because of it (the jobs to start now), and :meth:`Scheduler.fetch_decision` tells the
fetch loop when to pause and resume everything (jobs or bytes held), :meth:`Scheduler.ahead_full` which
partitions to pause on their own (their read-ahead is full: a flood is not fetched further while the other
partitions still are). :meth:`Scheduler.violations` states the invariants as code; the unit
tests check them after every step.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Generic, Literal, TypeVar

from aiokafka.structs import TopicPartition

from pipeline.tenancy.fair import FairQueues

P = TypeVar("P")

#: Resume fetching once what is held falls below this share of the limits. Close to 1, so the read-ahead
#: stays full (at 0.75 an eighth of the slots sat idle on average); pausing and resuming are cheap, as the
#: fetch loop waits for room without polling the consumer (which would drop what it had fetched).
RESUME_AT: Final = 0.95
#: Jobs held at once (calling, fetched ahead, waiting behind their key, or delivering their result) as a
#: multiple of the concurrency: a result awaiting the broker's ack gives its slot to the next call (the slots
#: are for the provider, and a slow produce must not idle them), as long as no more than this many are held.
HELD_PER_SLOT: Final = 2
#: Records fetched ahead of a free slot, per partition, as a share of the concurrency: a returning call hands
#: its slot to the next job at once, instead of after a fetch from the broker (with a fixed 1 s latency, calls
#: return in waves and the refetch left ~10% of the slots idle). Per partition, so a flooded partition fills
#: only its own; the jobs and bytes held stay capped across partitions.
READ_AHEAD_SHARE: Final = 0.25


class JobState(enum.Enum):
    WAITING_KEY = "waiting_key"
    READY = "ready"
    CALLING = "calling"
    DELIVERING = "delivering"
    DONE = "done"
    DROPPED = "dropped"


#: States of a job the worker still holds (counted against the limits).
HELD: Final = frozenset({JobState.WAITING_KEY, JobState.READY, JobState.CALLING, JobState.DELIVERING})

FetchDecision = Literal["pause", "resume", "keep"]


@dataclass(eq=False, slots=True)
class Ticket(Generic[P]):
    """One job held by the worker: where it came from, what it weighs, and its state."""

    tp: TopicPartition
    #: The assignment epoch of its partition when it was fetched (see :mod:`pipeline.worker.offsets`).
    epoch: int
    offset: int
    #: The ordering key: the record's key under ``ordering="key"``, else ``None`` (no queue).
    key: bytes | None
    size: int
    payload: P
    state: JobState = JobState.READY
    #: When it was fetched (the worker's monotonic clock): the age of the oldest held job feeds liveness.
    since: float = 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int
    max_bytes: int
    read_ahead: int
    max_held: int

    @classmethod
    def for_concurrency(cls, concurrency: int, max_bytes: int) -> Limits:
        return cls(
            concurrency=concurrency,
            max_bytes=max_bytes,
            read_ahead=max(1, int(concurrency * READ_AHEAD_SHARE)),
            max_held=concurrency * HELD_PER_SLOT,
        )


@dataclass(slots=True)
class _Queues(Generic[P]):
    """The scheduler's books; kept apart so the invariants can name them."""

    #: READY tickets, a queue per partition in the order they became ready; fair shares of the slots.
    ready: FairQueues[Ticket[P]] = field(default_factory=FairQueues)
    #: Per (partition, key): the tickets held for that key in offset order; the head is the one that runs.
    by_key: dict[tuple[TopicPartition, bytes], deque[Ticket[P]]] = field(default_factory=dict)
    #: Every held ticket (any state in :data:`HELD`).
    held: set[Ticket[P]] = field(default_factory=set)


class Scheduler(Generic[P]):
    """Slots, read-ahead, key queues and the pause/resume decision for one worker; see the module docstring."""

    def __init__(self, limits: Limits, weights: Mapping[str, int] | None = None) -> None:
        """``weights``: the share of the slots per input topic under contention (priority lanes; default 1)."""
        self.limits = limits
        self._books: _Queues[P] = _Queues(ready=FairQueues(weights))
        self._calling = 0
        self._bytes = 0
        self._draining = False
        #: Partitions being revoked: nothing of theirs starts any more, followers are dropped as they come up.
        self._closing: set[TopicPartition] = set()

    # ------------------------------------------------------------------ what is held

    @property
    def held(self) -> int:
        return len(self._books.held)

    @property
    def calling(self) -> int:
        return self._calling

    @property
    def held_bytes(self) -> int:
        return self._bytes

    @property
    def ready(self) -> int:
        return len(self._books.ready)

    def waiting(self, tp: TopicPartition) -> int:
        """Jobs of this partition fetched ahead of a free slot."""
        return self._books.ready.waiting(tp)

    @property
    def draining(self) -> bool:
        return self._draining

    def oldest_since(self) -> float | None:
        """When the longest-held job was fetched (``None`` when none is held); a scan, for scrapes only."""
        return min((ticket.since for ticket in self._books.held), default=None)

    def tickets(self, which: Callable[[Ticket[P]], bool] = lambda _: True) -> list[Ticket[P]]:
        return [ticket for ticket in self._books.held if which(ticket)]

    # ------------------------------------------------------------------ fetching

    def room(self, fetching: Collection[TopicPartition] = ()) -> int:
        """How many records the next fetch of ``fetching`` may bring: the free slots plus the read-ahead the
        fullest of them has not yet filled (a fetch may bring one partition's records only), within the cap
        on jobs held (may be 0 or less when full)."""
        limits = self.limits
        ahead = max((self._books.ready.waiting(tp) for tp in fetching), default=0)
        return min(limits.concurrency - self._calling + limits.read_ahead - ahead, limits.max_held - self.held)

    def full(self) -> bool:
        """Jobs or bytes held reached their cap: pause every partition."""
        limits = self.limits
        return self.held >= limits.max_held or self._bytes >= limits.max_bytes

    def calm(self) -> bool:
        """What is held fell to the resume level (below :data:`RESUME_AT` of the caps)."""
        limits = self.limits
        return self.held <= limits.max_held * RESUME_AT and self._bytes <= limits.max_bytes * RESUME_AT

    def ahead_full(self, paused: Collection[TopicPartition] = ()) -> set[TopicPartition]:
        """The partitions to keep paused for their own read-ahead: those whose read-ahead is full, and those
        of ``paused`` (paused for it before) still above the resume level. The others keep being fetched."""
        limits, ready = self.limits, self._books.ready
        full = {tp for tp in ready.partitions() if ready.waiting(tp) >= limits.read_ahead}
        return full | {tp for tp in paused if ready.waiting(tp) > limits.read_ahead * RESUME_AT}

    def fetch_decision(self, paused: bool) -> FetchDecision:
        if not paused and self.full():
            return "pause"
        if paused and self.calm():
            return "resume"
        return "keep"

    # ------------------------------------------------------------------ transitions

    def admit(
        self,
        tp: TopicPartition,
        epoch: int,
        offset: int,
        key: bytes | None,
        size: int,
        payload: P,
        *,
        since: float = 0.0,
    ) -> tuple[Ticket[P], list[Ticket[P]]]:
        """A fetched record becomes a held job; returns it and the jobs to start now."""
        ticket = Ticket(tp=tp, epoch=epoch, offset=offset, key=key, size=size, payload=payload, since=since)
        if self._draining or tp in self._closing:
            ticket.state = JobState.DROPPED
            return ticket, []
        self._books.held.add(ticket)
        self._bytes += size
        if key is not None:
            queue = self._books.by_key.setdefault((tp, key), deque())
            queue.append(ticket)
            if len(queue) > 1:
                ticket.state = JobState.WAITING_KEY
                return ticket, []
        return ticket, self._offer(ticket)

    def call_returned(self, ticket: Ticket[P]) -> list[Ticket[P]]:
        """The job's provider call returned: its slot goes to the jobs fetched ahead."""
        self._expect(ticket, JobState.CALLING)
        ticket.state = JobState.DELIVERING
        self._calling -= 1
        self._books.ready.ended(ticket.tp)
        return self._fill_slots()

    def delivered(self, ticket: Ticket[P]) -> list[Ticket[P]]:
        """The job's result was acknowledged: it is done, and the next job of its key may run."""
        self._expect(ticket, JobState.DELIVERING)
        self._release(ticket, JobState.DONE)
        return self._next_of_key(ticket)

    def abandon(self, ticket: Ticket[P]) -> list[Ticket[P]]:
        """The job ends without a result (cancelled, or its task failed): dropped, its slot freed, and the
        jobs queued behind its key dropped too (running them first would break the key's order)."""
        self._drop(ticket)
        return self._fill_slots()

    def close_partitions(self, partitions: Iterable[TopicPartition]) -> list[Ticket[P]]:
        """Revocation begins: drop what has not started (returned), and start nothing more of theirs; jobs
        already calling or delivering get the revoke timeout to finish."""
        self._closing.update(partitions)
        dropped = [t for t in self._books.held if t.tp in self._closing and t.state not in _STARTED]
        for ticket in dropped:
            self._drop(ticket)
        return dropped

    def forget_partitions(self, partitions: Iterable[TopicPartition]) -> list[Ticket[P]]:
        """Revocation ended (the worker cancelled whatever was left): whatever of theirs is still held is
        dropped, and the partitions may be assigned again. Returns the jobs to start in freed slots."""
        gone = set(partitions)
        for ticket in [t for t in self._books.held if t.tp in gone]:
            self._drop(ticket)
        self._closing -= gone
        for tp in gone:
            self._books.ready.forget(tp)
        return self._fill_slots()

    def drain(self) -> list[Ticket[P]]:
        """Stop starting jobs; drop (and return) those not started. Jobs calling or delivering finish."""
        self._draining = True
        dropped = [t for t in self._books.held if t.state not in _STARTED]
        for ticket in dropped:
            self._drop(ticket)
        return dropped

    # ------------------------------------------------------------------ internals

    def _offer(self, ticket: Ticket[P]) -> list[Ticket[P]]:
        """Start the job when a slot is free and no job fetched before it waits, else queue it for a slot."""
        if self._calling < self.limits.concurrency and not self._books.ready:
            self._start(ticket)
            return [ticket]
        ticket.state = JobState.READY
        self._books.ready.push(ticket)
        return []

    def _start(self, ticket: Ticket[P]) -> None:
        ticket.state = JobState.CALLING
        self._calling += 1
        self._books.ready.started(ticket.tp)

    def _fill_slots(self) -> list[Ticket[P]]:
        started: list[Ticket[P]] = []
        ready = self._books.ready
        while ready and self._calling < self.limits.concurrency and not self._draining:
            ticket = ready.pop()
            self._start(ticket)
            started.append(ticket)
        return started

    def _next_of_key(self, ticket: Ticket[P]) -> list[Ticket[P]]:
        if ticket.key is None:
            return []
        index = (ticket.tp, ticket.key)
        queue = self._books.by_key.get(index)
        if not queue or queue[0] is not ticket:
            return []
        queue.popleft()
        if not queue:
            del self._books.by_key[index]
            return []
        # Never draining or closing here: both drop every job that waits for its key.
        return self._offer(queue[0])

    def _release(self, ticket: Ticket[P], final: JobState) -> None:
        """Leave the held set for ``final`` (DONE or DROPPED), taking the ticket off every queue but its key's."""
        if ticket.state is JobState.READY:
            self._books.ready.remove(ticket)
        self._books.held.discard(ticket)
        self._bytes -= ticket.size
        ticket.state = final

    def _drop(self, ticket: Ticket[P]) -> None:
        """Forget a held job; a key queue's head takes the jobs waiting behind it along."""
        if ticket.state not in HELD:
            return
        if ticket.state is JobState.CALLING:
            self._calling -= 1
            self._books.ready.ended(ticket.tp)
        self._release(ticket, JobState.DROPPED)
        if ticket.key is None:
            return
        index = (ticket.tp, ticket.key)
        queue = self._books.by_key.get(index)
        if queue is None or ticket not in queue:
            return
        followers = list(queue)[1:] if queue[0] is ticket else []
        queue.remove(ticket)
        if not queue:
            del self._books.by_key[index]
        for follower in followers:
            self._drop(follower)

    @staticmethod
    def _expect(ticket: Ticket[P], state: JobState) -> None:
        if ticket.state is not state:
            raise ValueError(f"job at offset {ticket.offset} is {ticket.state.value}, not {state.value}")

    # ------------------------------------------------------------------ invariants

    def violations(self) -> list[str]:
        """Every invariant that does not hold now (empty when all do); checked by the unit tests."""
        books, limits = self._books, self.limits
        found: list[str] = []
        states = [t.state for t in books.held]
        if any(state not in HELD for state in states):
            found.append("a ticket in the held set is done or dropped")
        calling = states.count(JobState.CALLING)
        if calling != self._calling:
            found.append(f"calling count {self._calling} but {calling} tickets are calling")
        if self._calling > limits.concurrency:
            found.append(f"{self._calling} calls for {limits.concurrency} slots")
        if sum(t.size for t in books.held) != self._bytes:
            found.append("held bytes differ from the held tickets' sizes")
        ready = [t for t in books.held if t.state is JobState.READY]
        if len(ready) != len(books.ready) or set(ready) != set(books.ready):
            found.append("the ready queues are not the set of READY tickets")
        calling_per_tp: dict[TopicPartition, int] = {}
        for ticket in books.held:
            if ticket.state is JobState.CALLING:
                calling_per_tp[ticket.tp] = calling_per_tp.get(ticket.tp, 0) + 1
        found += books.ready.violations(calling_per_tp)
        if books.ready and self._calling < limits.concurrency and not self._draining:
            found.append("a slot is idle while a job fetched ahead waits")
        if self._draining and (books.ready or states.count(JobState.WAITING_KEY)):
            found.append("jobs wait to start while draining")
        if any(t.tp in self._closing and t.state not in _STARTED for t in books.held):
            found.append("a job of a closing partition waits to start")
        queued: set[Ticket[P]] = set()
        for (tp, key), queue in books.by_key.items():
            if not queue:
                found.append(f"an empty key queue is kept for {tp} {key!r}")
                continue
            queued.update(queue)
            offsets = [t.offset for t in queue]
            if offsets != sorted(offsets) or any(t.tp != tp or t.key != key for t in queue):
                found.append(f"the queue of {tp} {key!r} is out of order or mixed")
            if queue[0].state is JobState.WAITING_KEY:
                found.append(f"the head of the queue of {tp} {key!r} is waiting for itself")
            if any(t.state is not JobState.WAITING_KEY for t in list(queue)[1:]):
                found.append(f"a job of {tp} {key!r} runs before the one fetched ahead of it")
        keyed = {t for t in books.held if t.key is not None}
        if keyed != queued:
            found.append("the key queues are not the set of held keyed tickets")
        return found


#: States in which a job has taken a slot at some point (its task exists).
_STARTED: Final = frozenset({JobState.CALLING, JobState.DELIVERING})
