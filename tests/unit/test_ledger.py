"""The offset ledger: commit only the completed prefix; remember done-beyond compactly and safely."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from pipeline.ledger import (
    DEFAULT_METADATA_BUDGET,
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
