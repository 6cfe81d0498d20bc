"""How the offset ledger scales: the previous implementation and the current one, side by side, in one run.

The previous implementation (the code before issue 13) is kept below, only here, for the comparison: its
``encode_done_map`` summed every run again after each trim, its ledger held every tracked offset (a deque)
and every done one (a set), and each ``commit_metadata`` sorted all done offsets.

Cases (one process, no I/O; each timing is the best of a few repeats, a slow one runs once):

- ``encode``: ``encode_done_map`` of N alternating single-offset done ranges (the worst case for run
  lengths, 2 runs a range) into the default 4000-character budget;
- ``commit_metadata, stuck head``: one call, with N records done behind a head that is not;
- ``commit_metadata, fragmented``: one call, with every other record of N not done (the map is cut);
- ``complete``: per call, at a worker's pace (a window of 256 records, a worker's default concurrency,
  tracked, then the window before it completed): in order, shuffled, or all but the head, which is last;
- ``memory, stuck head``: bytes the ledger holds (tracemalloc) with N records done behind a stuck head.

    python -m bench.ledger_scaling [--quick]

The full run takes about three minutes, most of it the previous ``encode`` of 64 000 ranges (over a minute
alone); ``--quick`` (smaller sizes) takes seconds.
"""

from __future__ import annotations

import argparse
import base64
import random
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Final, Protocol

from pipeline.ledger import DEFAULT_METADATA_BUDGET, METADATA_PREFIX, PartitionLedger, encode_done_map

#: Repeat a timing until the repeats add up to this many seconds (the best repeat is reported).
TIME_PER_CASE_S: Final = 0.3
MAX_REPEATS: Final = 100
WINDOW: Final = 256


# ------------------------------------------------------------------------------------------------------------
# The previous implementation, for comparison only (pipeline/ledger.py before issue 13).
# ------------------------------------------------------------------------------------------------------------


def _previous_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def previous_encode_done_map(base: int, done: Iterable[tuple[int, int]], budget: int = DEFAULT_METADATA_BUDGET) -> str:
    """The previous ``encode_done_map``: every range encoded, then trimmed by summing all runs again."""
    runs: list[bytes] = []
    cursor = base
    for start, end in done:
        if start <= cursor or end <= start:
            raise ValueError(f"done ranges must be sorted, disjoint and beyond {base}: {start}..{end}")
        runs.append(_previous_varint(start - cursor))
        runs.append(_previous_varint(end - start))
        cursor = end
    payload_budget = (budget - len(METADATA_PREFIX)) * 3 // 4
    while runs and sum(map(len, runs)) > payload_budget:
        del runs[-2:]
    if not runs:
        return ""
    return METADATA_PREFIX + base64.urlsafe_b64encode(b"".join(runs)).decode("ascii").rstrip("=")


def _previous_merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """What the previous ledger's ``DoneRanges(done).ranges()`` did: sort, then join overlapping ranges."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class PreviousPartitionLedger:
    """The previous ``PartitionLedger`` (no remembered map: none of these cases has one)."""

    __slots__ = ("_done", "_pending", "next_offset")

    def __init__(self) -> None:
        self.next_offset: int | None = None
        self._pending: deque[int] = deque()
        self._done: set[int] = set()

    def track(self, offset: int) -> bool:
        self.next_offset = offset + 1
        self._pending.append(offset)
        return False

    def complete(self, offset: int) -> None:
        self._done.add(offset)
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            done.discard(pending.popleft())

    def commit_offset(self) -> int | None:
        if self._pending:
            return self._pending[0]
        return self.next_offset

    def commit_metadata(self, budget: int = DEFAULT_METADATA_BUDGET) -> str:
        base = self.commit_offset()
        if base is None:
            return ""
        done = [(offset, offset + 1) for offset in sorted(self._done)]
        return previous_encode_done_map(base, _previous_merge(done), budget)


# ------------------------------------------------------------------------------------------------------------
# The measurements.
# ------------------------------------------------------------------------------------------------------------


class Ledger(Protocol):
    def track(self, offset: int) -> bool: ...
    def complete(self, offset: int) -> None: ...
    def commit_metadata(self, budget: int = ...) -> str: ...


Row = tuple[str, int, float, float, str]


def best_of(run: Callable[[], object]) -> float:
    """The fastest of a few repeats, in seconds (one run when a single run takes long)."""
    times: list[float] = []
    while len(times) < MAX_REPEATS and sum(times) < TIME_PER_CASE_S:
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def stuck_head(ledger: Ledger, records: int) -> Ledger:
    """``records`` tracked, every one done but the first; as a worker goes, each done a window after it came."""
    for offset in range(records):
        ledger.track(offset)
        if offset - WINDOW > 0:
            ledger.complete(offset - WINDOW)
    for offset in range(max(1, records - WINDOW), records):
        ledger.complete(offset)
    return ledger


def fragmented(ledger: Ledger, records: int) -> Ledger:
    """``records`` tracked, every other one done, the first not."""
    for offset in range(records):
        ledger.track(offset)
    for offset in range(1, records, 2):
        ledger.complete(offset)
    return ledger


COMPLETION_ORDERS: Final = ("in order", "shuffled by 256", "head last")


def time_completions(make: Callable[[], Ledger], order: str, records: int) -> float:
    """Seconds per ``complete``, at a worker's pace: a window of records tracked, then the window before it
    completed (in order, shuffled, or all but the head, which completes last)."""
    rng = random.Random(13)

    def run() -> None:
        ledger = make()
        spent = 0.0
        for start in range(0, records + WINDOW, WINDOW):
            for offset in range(start, min(start + WINDOW, records)):
                ledger.track(offset)
            batch = list(range(max(0, start - WINDOW), min(start, records)))
            if order == "shuffled by 256":
                rng.shuffle(batch)
            elif order == "head last":
                batch = [offset for offset in batch if offset] + ([0] if start >= records else [])
            started = time.perf_counter()
            for offset in batch:
                ledger.complete(offset)
            spent += time.perf_counter() - started
        elapsed.append(spent)

    elapsed: list[float] = []
    best_of(run)
    return min(elapsed) / records


def held_bytes(make: Callable[[], Ledger], records: int) -> float:
    """Bytes allocated and still held by a ledger with ``records`` done behind a stuck head."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ledger = stuck_head(make(), records)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del ledger
    return float(held)


def measure(quick: bool) -> list[Row]:
    rows: list[Row] = []
    for size in (4_000, 8_000) if quick else (4_000, 8_000, 16_000, 64_000):
        ranges = [(offset, offset + 1) for offset in range(1, 2 * size, 2)]
        assert previous_encode_done_map(0, ranges) == encode_done_map(0, ranges)
        previous = best_of(partial(previous_encode_done_map, 0, ranges))
        rows.append(("encode (done ranges)", size, previous, best_of(partial(encode_done_map, 0, ranges)), "s"))

    builds = [("stuck head", stuck_head, size) for size in (10_000, 100_000, 1_000_000)[: 2 if quick else 3]]
    for name, build, size in [*builds, ("fragmented", fragmented, 10_000)]:
        old_ledger, new_ledger = build(PreviousPartitionLedger(), size), build(PartitionLedger(epoch=1), size)
        assert old_ledger.commit_metadata() == new_ledger.commit_metadata()
        previous, now = best_of(old_ledger.commit_metadata), best_of(new_ledger.commit_metadata)
        rows.append((f"commit_metadata, {name}", size, previous, now, "s"))
        del old_ledger, new_ledger

    size = 10_000 if quick else 100_000
    for order in COMPLETION_ORDERS:
        previous = time_completions(PreviousPartitionLedger, order, size)
        now = time_completions(lambda: PartitionLedger(epoch=1), order, size)
        rows.append((f"complete, {order}", size, previous, now, "s/call"))

    size = 100_000 if quick else 1_000_000
    previous = held_bytes(PreviousPartitionLedger, size)
    rows.append(("memory, stuck head", size, previous, held_bytes(lambda: PartitionLedger(epoch=1), size), "bytes"))
    return rows


def _seconds(value: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _bytes(value: float) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def table(rows: list[Row]) -> str:
    lines = [
        "| case | N | previous | now | previous ÷ now |",
        "|---|---:|---:|---:|---:|",
    ]
    for case, size, previous, now, unit in rows:
        show = _bytes if unit == "bytes" else _seconds
        ratio = f"{previous / now:,.0f}" if previous >= 10 * now else f"{previous / now:.2f}"
        suffix = " per call" if unit == "s/call" else ""
        lines.append(f"| {case} | {size:,} | {show(previous)}{suffix} | {show(now)}{suffix} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a few seconds")
    args = parser.parse_args()
    print(table(measure(args.quick)))


if __name__ == "__main__":
    main()
