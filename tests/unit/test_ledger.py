"""The offset ledger: commit only the completed prefix; remember done-beyond compactly and safely."""

from __future__ import annotations

import itertools
import random
import tracemalloc
from collections.abc import Iterator
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ledger import (
    DEFAULT_METADATA_BUDGET,
    MAX_DECODED_SPAN,
    MAX_SPAN_BEHIND_HEAD,
    METADATA_PREFIX,
    DoneRanges,
    PartitionLedger,
    decode_done_map,
    encode_done_map,
)


def test_a_slow_record_holds_the_commit_back_until_it_is_done() -> None:
    ledger = PartitionLedger(epoch=1)
    for offset in range(10, 15):
        ledger.track(offset)
    for offset in (11, 12, 13, 14):
        ledger.complete(offset)
    assert ledger.commit_offset() == 10
    assert ledger.in_flight == 1
    ledger.complete(10)
    assert ledger.commit_offset() == 15
    assert ledger.in_flight == 0


def test_gaps_in_offsets_never_hold_the_commit_back() -> None:
    ledger = PartitionLedger(epoch=1, committed=100)
    for offset in (100, 103, 107):  # compaction or transaction markers left holes
        ledger.track(offset)
    ledger.complete(100)
    ledger.complete(107)
    assert ledger.commit_offset() == 103
    ledger.complete(103)
    assert ledger.commit_offset() == 108


def test_nothing_seen_commits_the_committed_offset() -> None:
    assert PartitionLedger(epoch=1, committed=42).commit_offset() == 42
    assert PartitionLedger(epoch=1).commit_offset() is None


def test_done_beyond_the_commit_survives_a_restart_and_is_skipped() -> None:
    first = PartitionLedger(epoch=1, committed=0)
    for offset in range(20):
        first.track(offset)
    for offset in [*range(5, 9), 12, 19]:
        first.complete(offset)
    commit, metadata = first.commit_offset(), first.commit_metadata()
    assert commit == 0
    assert metadata.startswith(METADATA_PREFIX)

    second = PartitionLedger(epoch=2, committed=commit, remembered=decode_done_map(commit, metadata))
    skipped = [offset for offset in range(20) if second.track(offset)]
    assert skipped == [5, 6, 7, 8, 12, 19]
    assert second.in_flight == 20 - len(skipped)


def test_remembered_work_not_fetched_yet_is_carried_into_the_next_commit() -> None:
    remembered = DoneRanges([(50, 60)])
    ledger = PartitionLedger(epoch=3, committed=40, remembered=remembered)
    ledger.track(40)
    ledger.complete(40)
    ledger.track(41)
    assert ledger.commit_offset() == 41
    assert decode_done_map(41, ledger.commit_metadata()).ranges() == [(50, 60)]


def test_a_map_that_does_not_fit_drops_the_farthest_runs_never_claims_more() -> None:
    done = [(i, i + 1) for i in range(1, 20_000, 2)]  # alternating: the worst case for run lengths
    metadata = encode_done_map(0, done, budget=200)
    assert len(metadata) <= 200
    decoded = decode_done_map(0, metadata)
    assert decoded.ranges() == done[: len(decoded.ranges())]
    assert 0 < len(decoded.ranges()) < len(done)


def test_realistic_window_fits_the_default_budget() -> None:
    rng = random.Random(7)
    done = sorted(rng.sample(range(1, 2_000), 1_000))
    metadata = encode_done_map(0, DoneRanges((o, o + 1) for o in done).ranges())
    assert len(metadata) <= DEFAULT_METADATA_BUDGET
    assert sum(e - s for s, e in decode_done_map(0, metadata).ranges()) == len(done)


def test_unreadable_metadata_means_nothing_is_skipped() -> None:
    for junk in ["", "hello", "pc1:!!!", "pc1:gA", METADATA_PREFIX + "AAAA", None]:
        assert not decode_done_map(10, junk)


@given(
    offsets=st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=200, unique=True),
    seed=st.integers(),
)
def test_commit_offset_is_always_the_first_unfinished_record(offsets: list[int], seed: int) -> None:
    offsets.sort()
    ledger = PartitionLedger(epoch=1)
    for offset in offsets:
        ledger.track(offset)
    order = offsets[:]
    random.Random(seed).shuffle(order)
    finished: set[int] = set()
    for offset in order:
        ledger.complete(offset)
        finished.add(offset)
        unfinished = [o for o in offsets if o not in finished]
        expected = unfinished[0] if unfinished else offsets[-1] + 1
        assert ledger.commit_offset() == expected
        remembered = decode_done_map(expected, ledger.commit_metadata())
        assert {o for o in offsets if o in remembered} == {o for o in finished if o > expected}


@given(st.lists(st.tuples(st.integers(1, 10_000), st.integers(1, 50)), max_size=60))
def test_encode_decode_round_trips(pairs: list[tuple[int, int]]) -> None:
    ranges = DoneRanges((start, start + length) for start, length in pairs).ranges()
    assert decode_done_map(0, encode_done_map(0, ranges, budget=10_000)).ranges() == ranges


# --------------------------------------------------------------------------------------------------
# The done map on the wire, pinned: a commit written by an older worker reads the same after an upgrade.
# Every string below is worked out by hand from the format: runs alternate not-done / done from the commit
# offset, each an unsigned LEB128 varint (7 bits a byte, low group first, the high bit set when more follow),
# the bytes in base64url without padding, after "pc1:".
# --------------------------------------------------------------------------------------------------

PINNED_DONE_MAPS = [
    # runs 3 2 5 1 -> 03 02 05 01 -> 000000 110000 001000 000101 | 000000 01.... -> "AwIF" "AQ"
    pytest.param(100, [(103, 105), (110, 111)], "pc1:AwIFAQ", id="single-byte-runs"),
    # runs 1 300 128 1 -> 01, AC 02 (300 = 0b10_0101100), 80 01 (128 = 0b1_0000000), 01 -> "AawC" "gAEB"
    pytest.param(0, [(1, 301), (429, 430)], "pc1:AawCgAEB", id="multi-byte-runs"),
]


@pytest.mark.parametrize(("base", "done", "metadata"), PINNED_DONE_MAPS)
def test_a_done_map_encodes_to_its_pinned_string(base: int, done: list[tuple[int, int]], metadata: str) -> None:
    assert encode_done_map(base, done) == metadata


@pytest.mark.parametrize(("base", "done", "metadata"), PINNED_DONE_MAPS)
def test_a_pinned_done_map_decodes_to_its_ranges(base: int, done: list[tuple[int, int]], metadata: str) -> None:
    assert decode_done_map(base, metadata).ranges() == done


def test_a_map_over_the_budget_keeps_its_nearest_ranges_on_the_wire() -> None:
    # runs 1 1 1 1 1 1 are six bytes; a budget of 10 leaves (10 - 4) * 3 // 4 = 4 of them: 01 01 01 01
    assert encode_done_map(0, [(1, 2), (3, 4), (5, 6)], budget=10) == "pc1:AQEBAQ"
    assert decode_done_map(0, "pc1:AQEBAQ").ranges() == [(1, 2), (3, 4)]
    assert encode_done_map(0, [(1, 2)], budget=5) == "", "not one range fits: no map at all"


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param("pc2:AwIFAQ", id="another-format"),
        pytest.param("AwIFAQ", id="no-prefix"),
        pytest.param("pc1:AwIFA", id="not-base64"),  # 5 characters: no base64 text is 4n + 1 long
        pytest.param("pc1:AwIF", id="odd-run-count"),  # 03 02 05: a not-done run without its done run
        pytest.param("pc1:AwA", id="zero-length-done-run"),  # 03 00
        pytest.param("pc1:AAI", id="zero-length-gap"),  # 00 02: would claim the committed offset itself done
        pytest.param("pc1:A6w", id="truncated-varint"),  # 03 AC: the last byte says another follows
    ],
)
def test_a_malformed_done_map_decodes_to_nothing(metadata: str) -> None:
    assert decode_done_map(100, metadata).ranges() == []


def test_a_done_map_may_span_up_to_the_limit_and_not_one_offset_more() -> None:
    assert MAX_DECODED_SPAN == 50_000_000
    # runs 1 49,999,999 -> 01, FF E0 EB 17 (7-bit groups from the low end: 127, 96, 107, 23) -> "Af_g" "6xc"
    assert encode_done_map(0, [(1, 50_000_000)]) == "pc1:Af_g6xc"
    assert decode_done_map(0, "pc1:Af_g6xc").ranges() == [(1, 50_000_000)]
    # runs 1 50,000,000 -> 01, 80 E1 EB 17 (0, 97, 107, 23) -> "AYDh" "6xc"
    assert decode_done_map(0, "pc1:AYDh6xc").ranges() == []


# --------------------------------------------------------------------------------------------------
# Scaling (issue 13): the ledger holds only what is not done, agrees with a naive model, and a commit costs
# the runs it writes. Timings are in ``python -m bench.ledger_scaling``; these tests assert on structure.
# --------------------------------------------------------------------------------------------------


class NaiveLedger:
    """The ledger's promise, offset by offset: sets and ranges of every offset, nothing clever."""

    def __init__(self, committed: int | None, remembered: DoneRanges) -> None:
        self.next_offset = committed
        self.remembered = remembered
        self.seen: list[int] = []
        self.waiting: set[int] = set()

    def track(self, offset: int) -> bool:
        self.seen.append(offset)
        self.next_offset = offset + 1
        if offset in self.remembered:
            return True
        self.waiting.add(offset)
        return False

    def complete(self, offset: int) -> None:
        self.waiting.discard(offset)

    def commit_offset(self) -> int | None:
        return min(self.waiting) if self.waiting else self.next_offset

    def behind_head(self) -> int:
        commit = self.commit_offset()
        return 0 if commit is None else sum(offset > commit for offset in self.seen)

    def span(self) -> int:
        commit = self.commit_offset()
        return 0 if commit is None or self.next_offset is None else self.next_offset - commit

    def done_ranges(self) -> list[tuple[int, int]]:
        """Every offset after the commit offset up to the next one that is not waiting (gaps the fetches
        skipped included), then the remembered ones beyond, as ranges."""
        commit = self.commit_offset()
        if commit is None or self.next_offset is None:
            return []
        done = {offset for offset in range(commit + 1, self.next_offset) if offset not in self.waiting}
        beyond = max(self.next_offset, commit + 1)
        done |= {offset for start, end in self.remembered.ranges() for offset in range(max(start, beyond), end)}
        return DoneRanges((offset, offset + 1) for offset in done).ranges()


@pytest.mark.parametrize("slack", [0, 64], ids=["queue-rebuilt-early", "queue-rebuilt-as-shipped"])
@given(data=st.data())
def test_the_ledger_agrees_with_a_naive_model_whatever_the_order(slack: int, data: st.DataObject) -> None:
    with mock.patch("pipeline.ledger._COMPACT_SLACK", slack):  # slack 0: the model meets the rebuilt queue often
        _agree_with_the_model(data)


def _agree_with_the_model(data: st.DataObject) -> None:
    committed = data.draw(st.none() | st.integers(0, 20), label="committed")
    remembered = DoneRanges()
    if committed is not None:
        runs = data.draw(st.lists(st.tuples(st.integers(1, 80), st.integers(1, 6)), max_size=5), label="remembered")
        remembered = DoneRanges((committed + gap, committed + gap + length) for gap, length in runs)
    ledger = PartitionLedger(epoch=1, committed=committed, remembered=remembered)
    model = NaiveLedger(committed, remembered)
    for _ in range(data.draw(st.integers(0, 80), label="steps")):
        step = data.draw(st.sampled_from(["track", "complete", "complete any"]))
        if step == "track":
            offset = (model.next_offset or 0) + data.draw(st.integers(0, 3), label="gap")
            assert ledger.track(offset) == model.track(offset)
        else:
            if step == "complete" and model.waiting:
                offset = data.draw(st.sampled_from(sorted(model.waiting)))
            else:  # any offset: in flight, done already, never tracked, or not fetched yet
                offset = data.draw(st.integers(0, 120))
            ledger.complete(offset)
            model.complete(offset)
        commit = ledger.commit_offset()
        assert commit == model.commit_offset()
        assert (ledger.in_flight, ledger.behind_head, ledger.span) == (
            len(model.waiting),
            model.behind_head(),
            model.span(),
        )
        assert list(ledger.done_ranges()) == model.done_ranges()
        if commit is not None:
            assert decode_done_map(commit, ledger.commit_metadata()).ranges() == model.done_ranges()


def test_a_gap_between_records_seen_is_remembered_as_done() -> None:
    ledger = PartitionLedger(epoch=1, committed=100)
    for offset in (100, 103, 107):  # 101, 102, 104-106: no longer in the log
        ledger.track(offset)
    ledger.complete(103)
    assert ledger.commit_offset() == 100
    assert decode_done_map(100, ledger.commit_metadata()).ranges() == [(101, 107)]
    assert (ledger.in_flight, ledger.behind_head, ledger.span) == (2, 2, 8)


def test_completing_what_is_not_in_flight_changes_nothing() -> None:
    ledger = PartitionLedger(epoch=1, committed=0)
    for offset in range(3):
        ledger.track(offset)
    ledger.complete(1)
    for offset in (1, 7, -1):  # twice, never tracked, before the first
        ledger.complete(offset)
    assert (ledger.commit_offset(), ledger.in_flight, ledger.behind_head) == (0, 2, 2)


@given(
    pairs=st.lists(st.tuples(st.integers(1, 100_000), st.integers(1, 20_000)), max_size=80),
    budget=st.integers(0, 160),
)
def test_a_cut_map_keeps_the_longest_nearest_part_that_fits(pairs: list[tuple[int, int]], budget: int) -> None:
    ranges = DoneRanges((start, start + length) for start, length in pairs).ranges()
    metadata = encode_done_map(0, ranges, budget)
    assert len(metadata) <= budget
    kept = decode_done_map(0, metadata).ranges()
    assert kept == ranges[: len(kept)], "the nearest ranges, exactly: nothing claimed that is not done"
    if len(kept) < len(ranges):
        assert len(encode_done_map(0, ranges[: len(kept) + 1], budget=1_000_000)) > budget, "one more does not fit"


def test_encode_reads_only_as_far_as_the_budget_reaches() -> None:
    pulled = 0

    def endless() -> Iterator[tuple[int, int]]:
        nonlocal pulled
        for offset in itertools.count(1, 2):  # alternating: two one-byte runs a range
            pulled += 1
            yield offset, offset + 1

    kept = decode_done_map(0, encode_done_map(0, endless())).ranges()
    assert len(kept) == (DEFAULT_METADATA_BUDGET - len(METADATA_PREFIX)) * 3 // 4 // 2 == 1_498
    assert pulled == len(kept) + 1, "and the one range that did not fit"


def test_a_map_never_spans_more_than_its_decoder_accepts() -> None:
    assert encode_done_map(0, [(1, MAX_DECODED_SPAN + 10)]) == "pc1:Af_g6xc", "cut at the limit"
    assert decode_done_map(0, "pc1:Af_g6xc").ranges() == [(1, MAX_DECODED_SPAN)]
    beyond = [(1, 2), (MAX_DECODED_SPAN, MAX_DECODED_SPAN + 5)]  # starts where the decoder stops accepting
    assert encode_done_map(0, beyond) == encode_done_map(0, [(1, 2)])


def test_a_million_done_behind_a_stuck_head_is_one_run() -> None:
    records = 1_000_000
    ledger = PartitionLedger(epoch=1, committed=0)
    for offset in range(records):
        ledger.track(offset)
        if offset:
            ledger.complete(offset)
    assert (ledger.commit_offset(), ledger.in_flight, ledger.behind_head, ledger.span) == (0, 1, records - 1, records)
    metadata = ledger.commit_metadata()
    assert decode_done_map(0, metadata).ranges() == [(1, records)]
    assert len(metadata) == len("pc1:AT-EPQ"), "two runs: 1 and 999,999"


def test_a_fragmented_window_writes_what_fits_and_the_nearest_first() -> None:
    ledger = PartitionLedger(epoch=1, committed=0)
    for offset in range(200_000):
        ledger.track(offset)
        if offset % 2:
            ledger.complete(offset)
    metadata = ledger.commit_metadata()
    assert len(metadata) <= DEFAULT_METADATA_BUDGET
    kept = decode_done_map(0, metadata).ranges()
    assert kept == list(itertools.islice(ledger.done_ranges(), len(kept))) == [(o, o + 1) for o in range(1, 2_997, 2)]


def _head_last_at_worker_pace(records: int, window: int) -> PartitionLedger:
    """Records fetched in order and completed out of order a window later; the head not at all."""
    rng = random.Random(13)
    ledger = PartitionLedger(epoch=1, committed=0)
    for start in range(0, records, window):
        for offset in range(start, start + window):
            ledger.track(offset)
        batch = [offset for offset in range(start - window, start) if offset > 0]
        rng.shuffle(batch)
        for offset in batch:
            ledger.complete(offset)
    return ledger


def test_what_is_held_stays_bounded_while_the_head_finishes_last_and_is_released_when_it_does() -> None:
    window = 256
    records = 400 * window
    tracemalloc.start()
    try:
        ledger = _head_last_at_worker_pace(records, window)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert (ledger.commit_offset(), ledger.behind_head, ledger.span) == (0, records - 1, records)
    assert ledger.in_flight == window + 1, "the head and the last window"
    assert held < 200_000, f"{held} bytes for {records:,} records: not one per record"  # was ~110 bytes each
    for offset in range(records - window, records):
        ledger.complete(offset)
    ledger.complete(0)
    assert (ledger.commit_offset(), ledger.in_flight, ledger.behind_head, ledger.span) == (records, 0, 0, 0)
    assert ledger.commit_metadata() == ""


def test_below_the_suggested_bound_the_whole_map_fits_with_1105_stretches_of_unfinished_work() -> None:
    # Near the worst case within the bound: as many 2-byte runs (128) as the span allows, the rest 1 byte.
    runs = [128] * 769 + [1] * (2 * 1105 - 769)
    ledger = PartitionLedger(epoch=1, committed=0)
    offset = 0
    for index, length in enumerate(runs):  # not done, done, not done, ... from the head on
        for _ in range(length):
            ledger.track(offset)
            if index % 2:
                ledger.complete(offset)
            offset += 1
    assert ledger.commit_offset() == 0 and ledger.span == sum(runs) <= MAX_SPAN_BEHIND_HEAD
    done = list(ledger.done_ranges())
    assert len(done) == 1105
    assert decode_done_map(0, ledger.commit_metadata()).ranges() == done
