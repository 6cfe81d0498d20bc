"""The offset ledger: commit only the completed prefix; remember done-beyond compactly and safely."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ledger import (
    DEFAULT_METADATA_BUDGET,
    MAX_DECODED_SPAN,
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
