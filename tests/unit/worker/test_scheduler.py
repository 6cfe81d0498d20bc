"""The scheduler's state machine without any I/O: slots, read-ahead, key order, the held cap, backpressure,
revocation and drain. Every test checks the invariants (``Scheduler.violations``) after each step."""

from __future__ import annotations

from collections import Counter

from aiokafka.structs import TopicPartition
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pipeline.worker.scheduler import RESUME_AT, JobState, Limits, Scheduler, Ticket

TP0 = TopicPartition("prompts", 0)
TP1 = TopicPartition("prompts", 1)
INTERACTIVE = TopicPartition("prompts.interactive", 0)
BULK = TopicPartition("prompts.bulk", 0)


class Books:
    """A scheduler driven as the worker drives it, checking the invariants after every transition."""

    def __init__(self, concurrency: int = 4, max_bytes: int = 1_000_000, weights: dict[str, int] | None = None) -> None:
        self.scheduler: Scheduler[str] = Scheduler(Limits.for_concurrency(concurrency, max_bytes), weights)
        self.started: list[Ticket[str]] = []
        self.next_offset = {TP0: 0, TP1: 0, INTERACTIVE: 0, BULK: 0}

    def check(self) -> None:
        assert self.scheduler.violations() == []

    def admit(self, tp: TopicPartition = TP0, key: bytes | None = None, size: int = 10) -> Ticket[str]:
        offset = self.next_offset[tp]
        self.next_offset[tp] += 1
        ticket, started = self.scheduler.admit(tp, 1, offset, key, size, f"{tp.partition}:{offset}")
        self.started += started
        self.check()
        return ticket

    def call_returned(self, ticket: Ticket[str]) -> list[Ticket[str]]:
        started = self.scheduler.call_returned(ticket)
        self.started += started
        self.check()
        return started

    def delivered(self, ticket: Ticket[str]) -> list[Ticket[str]]:
        started = self.scheduler.delivered(ticket)
        self.started += started
        self.check()
        return started

    def finish(self, ticket: Ticket[str]) -> list[Ticket[str]]:
        return self.call_returned(ticket) + self.delivered(ticket)

    def calling(self) -> list[Ticket[str]]:
        return sorted(self.scheduler.tickets(lambda t: t.state is JobState.CALLING), key=lambda t: t.offset)


def test_jobs_start_up_to_the_concurrency_and_the_rest_wait_for_a_slot_in_fetch_order() -> None:
    books = Books(concurrency=4)
    tickets = [books.admit() for _ in range(6)]
    assert [t.state for t in tickets] == [JobState.CALLING] * 4 + [JobState.READY] * 2
    assert books.scheduler.calling == 4 and books.scheduler.ready == 2
    started = books.call_returned(tickets[2])
    assert started == [tickets[4]], "a returning call hands its slot to the first job fetched ahead"
    assert tickets[2].state is JobState.DELIVERING
    assert books.delivered(tickets[2]) == []
    assert tickets[2].state is JobState.DONE and books.scheduler.held == 5


def test_a_job_fetched_while_others_wait_queues_behind_them_even_when_a_slot_is_free() -> None:
    books = Books(concurrency=2)
    first, second, third = books.admit(), books.admit(), books.admit()
    assert third.state is JobState.READY
    books.call_returned(first)  # the slot goes to the waiting job at once
    assert third.state is JobState.CALLING
    fourth = books.admit()
    assert fourth.state is JobState.READY and second.state is JobState.CALLING


def test_per_key_order_one_job_of_a_key_at_a_time_in_offset_order() -> None:
    books = Books(concurrency=4)
    a0, b0, a1, a2 = books.admit(key=b"a"), books.admit(key=b"b"), books.admit(key=b"a"), books.admit(key=b"a")
    assert (a0.state, b0.state) == (JobState.CALLING, JobState.CALLING), "different keys run side by side"
    assert (a1.state, a2.state) == (JobState.WAITING_KEY, JobState.WAITING_KEY)
    books.call_returned(a0)
    assert a1.state is JobState.WAITING_KEY, "the next of a key waits until the result is acknowledged"
    assert books.delivered(a0) == [a1]
    assert a2.state is JobState.WAITING_KEY
    books.finish(a1)
    assert a2.state is JobState.CALLING
    unkeyed = books.admit(key=None)
    assert unkeyed.state is JobState.CALLING


def test_the_same_key_on_two_partitions_is_two_queues() -> None:
    books = Books(concurrency=4)
    first, other = books.admit(TP0, key=b"k"), books.admit(TP1, key=b"k")
    assert first.state is other.state is JobState.CALLING


def fetch(books: Books, paused: bool) -> bool:
    """One turn of the fetch loop as the intake runs it, for one partition: decide, then fetch ``room()``
    records unless everything is paused or the partition's read-ahead is full; True when it is not fetched."""
    decision = books.scheduler.fetch_decision(paused)
    paused = decision == "pause" or (paused and decision == "keep")
    if not paused and TP0 not in books.scheduler.ahead_full():
        for _ in range(max(books.scheduler.room([TP0]), 1)):
            books.admit()
    return paused or TP0 in books.scheduler.ahead_full()


def test_read_ahead_is_a_quarter_of_the_concurrency_and_fetching_stops_there() -> None:
    books = Books(concurrency=16)
    paused = False
    for _ in range(10):
        paused = fetch(books, paused)
    assert paused
    assert books.scheduler.calling == 16
    assert books.scheduler.ready == 4 == books.scheduler.limits.read_ahead, "read-ahead is a quarter of 16"
    assert books.scheduler.room([TP0]) <= 0


def test_results_awaiting_the_broker_give_their_slots_away_but_never_beyond_twice_the_concurrency() -> None:
    books = Books(concurrency=8)
    paused, peak = False, 0
    for _ in range(50):
        paused = fetch(books, paused)
        for ticket in books.calling():  # every call returns; no result is acknowledged (a slow broker)
            books.call_returned(ticket)
        peak = max(peak, books.scheduler.held)
    assert peak == 16 == books.scheduler.limits.max_held
    assert paused and books.scheduler.full()
    delivering = books.scheduler.tickets(lambda t: t.state is JobState.DELIVERING)
    assert len(delivering) == 16 - books.scheduler.calling - books.scheduler.ready


def test_a_partition_pauses_when_its_read_ahead_is_full_and_resumes_only_below_the_resume_level() -> None:
    books = Books(concurrency=100)  # read-ahead 25
    tickets = [books.admit() for _ in range(125)]
    scheduler = books.scheduler
    assert scheduler.ready == 25 and scheduler.ahead_full() == {TP0}
    assert scheduler.fetch_decision(paused=False) == "keep", "the other partitions are still fetched"
    books.finish(tickets[0])  # one ready job starts: 24 waiting, above 25 * RESUME_AT
    assert scheduler.ready == 24 > scheduler.limits.read_ahead * RESUME_AT
    assert scheduler.ahead_full({TP0}) == {TP0}, "between the levels a paused partition stays paused"
    assert scheduler.ahead_full() == set(), "and a fetched one keeps being fetched"
    books.finish(tickets[1])
    assert scheduler.ahead_full({TP0}) == set()


def test_everything_pauses_at_the_cap_on_jobs_held_and_resumes_below_the_resume_level() -> None:
    books = Books(concurrency=20)  # at most 40 held
    tickets = [books.admit(TP0 if n % 2 else TP1) for n in range(40)]
    scheduler = books.scheduler
    assert scheduler.fetch_decision(paused=False) == "pause" and scheduler.room([TP0, TP1]) <= 0
    books.finish(tickets[0])  # 39 held, above 40 * RESUME_AT
    assert scheduler.fetch_decision(paused=True) == "keep"
    books.finish(tickets[1])
    assert scheduler.fetch_decision(paused=True) == "resume"


def test_bytes_held_pause_fetching_too() -> None:
    books = Books(concurrency=100, max_bytes=65_536)
    books.admit(size=40_000)
    assert books.scheduler.fetch_decision(paused=False) == "keep"
    books.admit(size=30_000)
    assert books.scheduler.held_bytes == 70_000 and books.scheduler.fetch_decision(paused=False) == "pause"


def test_revoking_a_partition_drops_its_waiting_jobs_and_starts_nothing_more_of_it() -> None:
    books = Books(concurrency=2)
    running = books.admit(TP0, key=b"k")
    follower = books.admit(TP0, key=b"k")
    other = books.admit(TP1)
    ahead = [books.admit(TP0), books.admit(TP1)]
    assert [t.state for t in ahead] == [JobState.READY, JobState.READY]
    dropped = books.scheduler.close_partitions([TP0])
    books.check()
    assert set(dropped) == {follower, ahead[0]}
    assert follower.state is ahead[0].state is JobState.DROPPED
    assert running.state is JobState.CALLING and other.state is JobState.CALLING
    assert books.finish(running) == [ahead[1]], "the freed slot goes to the other partition's job"
    late = books.admit(TP0)
    assert late.state is JobState.DROPPED, "a record of a closing partition is not started"
    books.scheduler.forget_partitions([TP0])
    books.check()
    books.finish(other)
    assert books.admit(TP0).state is JobState.CALLING, "assigned again, the partition runs again"


def test_a_stale_ticket_of_a_forgotten_partition_is_dropped_with_it() -> None:
    books = Books(concurrency=2)
    stuck = books.admit(TP0)
    books.scheduler.close_partitions([TP0])
    books.scheduler.forget_partitions([TP0])  # the worker cancelled its task
    books.check()
    assert stuck.state is JobState.DROPPED and books.scheduler.held == 0 and books.scheduler.calling == 0


def test_drain_drops_what_has_not_started_and_lets_the_rest_finish() -> None:
    books = Books(concurrency=2)
    a0, b0 = books.admit(key=b"a"), books.admit(key=b"b")
    a1, c0 = books.admit(key=b"a"), books.admit(key=b"c")
    dropped = books.scheduler.drain()
    books.check()
    assert set(dropped) == {a1, c0}
    assert books.finish(a0) == [], "no job starts while draining"
    books.finish(b0)
    assert books.scheduler.held == 0 and books.admit().state is JobState.DROPPED


def test_an_abandoned_call_frees_its_slot_and_takes_its_key_followers_along() -> None:
    books = Books(concurrency=1)
    head, follower = books.admit(key=b"k"), books.admit(key=b"k")
    waiting = books.admit(key=b"other")
    assert books.scheduler.abandon(head) == [waiting]
    books.check()
    assert follower.state is JobState.DROPPED, "running it before its predecessor would break the key's order"
    assert books.scheduler.abandon(head) == [], "abandoning twice changes nothing"


def test_a_transition_from_the_wrong_state_is_refused() -> None:
    books = Books(concurrency=1)
    first, second = books.admit(), books.admit()
    try:
        books.scheduler.delivered(first)
    except ValueError as exc:
        assert "calling, not delivering" in str(exc)
    else:
        raise AssertionError("a job still calling cannot be delivered")
    try:
        books.scheduler.call_returned(second)
    except ValueError:
        pass
    else:
        raise AssertionError("a job waiting for a slot has no call to return")


def test_a_flooded_partition_gets_no_more_than_its_share_once_another_has_work() -> None:
    books = Books(concurrency=8)
    flood = [books.admit(TP0) for _ in range(40)]
    assert books.scheduler.calling == 8 and books.scheduler.waiting(TP0) == 32
    other = [books.admit(TP1) for _ in range(10)]
    assert all(t.state is JobState.READY for t in other), "no slot is free: the other partition waits"
    for ticket in flood[:4]:
        assert books.finish(ticket)[0].tp == TP1, "each freed slot goes to the partition with fewer calls"
    calls = [t.tp for t in books.calling()]
    assert calls.count(TP0) == calls.count(TP1) == 4, "then the slots are even"
    books.finish(flood[4])
    books.finish(books.calling()[-1])  # a call of the other partition returns
    calls = [t.tp for t in books.calling()]
    assert abs(calls.count(TP0) - calls.count(TP1)) <= 1, "and stay even while both have work"


def test_read_ahead_is_per_partition_so_a_flood_leaves_room_for_the_others_fetches() -> None:
    books = Books(concurrency=16)  # read-ahead 4
    for _ in range(16 + 4):
        books.admit(TP0)
    assert books.scheduler.ahead_full() == {TP0}
    assert books.scheduler.room([TP1]) == 4, "the other partition may still read ahead"
    assert books.scheduler.room([TP0, TP1]) == 0, "a fetch that may bring the flood's records brings none"


def test_partitions_with_the_same_calls_start_in_round_robin_order() -> None:
    books = Books(concurrency=3)
    tps = [TopicPartition("prompts", n) for n in range(3)]
    books.next_offset.update({tp: 0 for tp in tps})
    for tp in tps:
        for _ in range(3):
            books.admit(tp)
    running = books.calling()
    assert [t.tp.partition for t in running] == [0, 0, 0], "the first three came before the others"
    order = [books.finish(ticket)[0].tp.partition for ticket in running]
    assert order == [1, 2, 1], "freed slots go round the waiting partitions, the least recently served first"


def lanes(concurrency: int, weights: dict[str, int]) -> Books:
    return Books(concurrency=concurrency, weights=weights)


def steady_calls(books: Books, backlog: dict[TopicPartition, int], returns: int) -> dict[str, int]:
    """Admit the backlogs, let ``returns`` calls return (the longest running first), count the calls per topic."""
    for tp, count in backlog.items():
        for _ in range(count):
            books.admit(tp)
    for _ in range(returns):
        books.finish(next(t for t in books.started if t.state is JobState.CALLING))
    calls = [t.tp.topic for t in books.calling()]
    return {topic: calls.count(topic) for topic in set(calls)}


def test_under_load_the_slots_follow_the_lane_weights() -> None:
    books = lanes(18, {"prompts.interactive": 8, "prompts.bulk": 1})
    calls = steady_calls(books, {BULK: 200, INTERACTIVE: 200}, returns=60)
    assert calls == {"prompts.interactive": 16, "prompts.bulk": 2}


def test_an_idle_lane_lends_its_share_and_takes_it_back_when_it_has_work() -> None:
    books = lanes(18, {"prompts.interactive": 8, "prompts.bulk": 1})
    assert steady_calls(books, {BULK: 200}, returns=10) == {"prompts.bulk": 18}, "interactive idle: bulk takes all"
    calls = steady_calls(books, {INTERACTIVE: 100}, returns=40)
    assert calls == {"prompts.interactive": 16, "prompts.bulk": 2}


def test_a_topic_without_a_weight_weighs_one() -> None:
    books = lanes(4, {"prompts.interactive": 3})
    assert steady_calls(books, {BULK: 50, INTERACTIVE: 50}, returns=20) == {"prompts.interactive": 3, "prompts.bulk": 1}


def where(ticket: Ticket[str]) -> tuple[int, int]:
    return ticket.tp.partition, ticket.offset


class SchedulerMachine(RuleBasedStateMachine):
    """Any sequence of what the worker can do keeps every invariant, and every job ends done or dropped."""

    @initialize(concurrency=st.integers(1, 6), bulk_weight=st.integers(1, 3))
    def start(self, concurrency: int, bulk_weight: int) -> None:
        self.weights = {"prompts": 2, "prompts.bulk": bulk_weight}
        self.books = Books(concurrency=concurrency, max_bytes=10_000, weights=self.weights)
        self.all: list[Ticket[str]] = []
        self.closing: set[TopicPartition] = set()

    @rule(tp=st.sampled_from([TP0, TP1, BULK]), key=st.sampled_from([None, b"a", b"b"]), size=st.integers(0, 400))
    def admit(self, tp: TopicPartition, key: bytes | None, size: int) -> None:
        self.all.append(self.books.admit(tp, key, size))

    @rule(data=st.data())
    def a_call_returns(self, data: st.DataObject) -> None:
        scheduler = self.books.scheduler
        calling = scheduler.tickets(lambda t: t.state is JobState.CALLING)
        if not calling:
            return
        returning = data.draw(st.sampled_from(sorted(calling, key=where)))
        calls = Counter(t.tp for t in calling if t is not returning)
        waiting = {t.tp for t in scheduler.tickets(lambda t: t.state is JobState.READY)}
        started = self.books.call_returned(returning)
        if started:
            # The freed slot went to the lane with the fewest calls for its weight, and in it to the partition
            # with the fewest calls, among those with jobs waiting.
            def share(topic: str) -> float:
                return sum(n for tp, n in calls.items() if tp.topic == topic) / self.weights[topic]

            chosen = started[0].tp
            assert share(chosen.topic) == min(share(tp.topic) for tp in waiting)
            assert calls[chosen] == min(calls[tp] for tp in waiting if tp.topic == chosen.topic)

    @rule()
    def fetch_turn(self) -> None:
        """The intake's view: a partition paused for its read-ahead is one whose read-ahead is full."""
        scheduler = self.books.scheduler
        for tp in scheduler.ahead_full():
            assert scheduler.waiting(tp) > scheduler.limits.read_ahead * RESUME_AT
        fetching = [tp for tp in (TP0, TP1, BULK) if tp not in scheduler.ahead_full()]
        free = scheduler.limits.concurrency - scheduler.calling
        assert scheduler.room(fetching) <= free + scheduler.limits.read_ahead

    @rule(data=st.data())
    def a_result_is_acknowledged(self, data: st.DataObject) -> None:
        delivering = self.books.scheduler.tickets(lambda t: t.state is JobState.DELIVERING)
        if delivering:
            self.books.delivered(data.draw(st.sampled_from(sorted(delivering, key=where))))

    @rule(data=st.data())
    def a_job_is_cancelled(self, data: st.DataObject) -> None:
        started = self.books.scheduler.tickets(lambda t: t.state in (JobState.CALLING, JobState.DELIVERING))
        if started:
            self.books.scheduler.abandon(data.draw(st.sampled_from(sorted(started, key=where))))

    @rule(tp=st.sampled_from([TP0, TP1, BULK]))
    def revoke(self, tp: TopicPartition) -> None:
        self.books.scheduler.close_partitions([tp])
        self.closing.add(tp)

    @precondition(lambda self: bool(self.closing))
    @rule()
    def revocation_ends(self) -> None:
        self.books.started += self.books.scheduler.forget_partitions(sorted(self.closing))
        self.closing.clear()

    @rule()
    def drain(self) -> None:
        self.books.scheduler.drain()

    @invariant()
    def holds(self) -> None:
        if hasattr(self, "books"):
            assert self.books.scheduler.violations() == []
            scheduler = self.books.scheduler
            assert scheduler.calling <= scheduler.limits.concurrency
            held = [t for t in self.all if t.state not in (JobState.DONE, JobState.DROPPED)]
            assert len(held) == scheduler.held


SchedulerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None, derandomize=True)
test_scheduler_state_machine = SchedulerMachine.TestCase
