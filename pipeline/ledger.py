"""Per-partition offset bookkeeping: what may be committed, and what was done beyond it.

Jobs finish out of order, so a partition may only commit the offset below which *every* record is handled
(the completed prefix). Records finished beyond that point are remembered in the commit's metadata string
as a compact run-length map (``pc1:`` + base64url of varint run lengths), so that after a restart or a
rebalance the next owner skips them instead of paying for their LLM calls again.

Offsets are tracked as seen, not assumed contiguous: compaction and transaction markers leave gaps, and a
gap must never hold the commit back. Everything here is pure and synchronous; the worker owns the I/O.

What it costs (``python -m bench.ledger_scaling`` measures it): the ledger holds only the offsets that are
*not* done; a done offset is an absence, so a head that never finishes while a million records complete
behind it costs no memory beyond the head itself. ``track``, ``complete`` and ``commit_offset`` are O(1)
(``complete`` amortised); ``commit_metadata`` and ``encode_done_map`` read the done ranges nearest first and
stop at the first one that does not fit the budget, so a commit costs at most the runs it writes.
"""

from __future__ import annotations

import base64
import bisect
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Final

METADATA_PREFIX: Final = "pc1:"
#: Kafka's default ``offset.metadata.max.bytes`` is 4096; stay under it with room for the prefix.
DEFAULT_METADATA_BUDGET: Final = 4000
#: Refuse maps that claim absurd spans (a corrupt or hostile string must not allocate without bound).
MAX_DECODED_SPAN: Final = 50_000_000
#: The suggested bound on :attr:`PartitionLedger.span` above which the worker stops fetching a partition
#: (and resumes once the head moves). Not memory: done offsets cost the ledger nothing, and not-done ones are
#: bounded by the worker's in-flight limits. What grows with the span is what a crash or a rebalance costs:
#: the next owner fetches the whole span again to skip it (about 100 MB at 1 KB a record), and skips only as
#: much as the done map remembers. Within 100 000 offsets at most 781 runs are 128 or longer (2 bytes) and 6
#: are 16 384 or longer (3 bytes), every other run is 1 byte, so the 2997 bytes of the default budget hold at
#: least 1105 done ranges: the whole map, unless more than 1105 separate stretches of unfinished work lie
#: beyond the head (a worker running 256 jobs at a time leaves far fewer). 100 000 records is also about how
#: far a partition running 100 jobs a second gets while a job is held for the 15 minutes after which
#: ``/healthz`` calls it stuck; a head held longer is wedged, not slow, and fetching on only adds to the replay.
MAX_SPAN_BEHIND_HEAD: Final = 100_000
#: Completed offsets may linger in :class:`PartitionLedger`'s order queue (dropped lazily); it is rebuilt
#: when they outnumber the offsets in flight by more than this, so the queue stays within 2x + this.
_COMPACT_SLACK: Final = 64


class DoneRanges:
    """Sorted, disjoint half-open offset ranges ``[start, end)`` known to be done."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in sorted(ranges):
            if end <= start:
                continue
            if self._ends and start <= self._ends[-1]:
                self._ends[-1] = max(self._ends[-1], end)
            else:
                self._starts.append(start)
                self._ends.append(end)

    def __contains__(self, offset: int) -> bool:
        index = bisect.bisect_right(self._starts, offset) - 1
        return index >= 0 and offset < self._ends[index]

    def __bool__(self) -> bool:
        return bool(self._starts)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def at_or_after(self, offset: int) -> list[tuple[int, int]]:
        """The ranges clipped to ``[offset, ∞)``."""
        return list(self.iter_from(offset))

    def iter_from(self, offset: int) -> Iterator[tuple[int, int]]:
        """The ranges clipped to ``[offset, ∞)``, nearest first, lazily (the ones before are skipped by bisection)."""
        for index in range(bisect.bisect_right(self._ends, offset), len(self._starts)):
            yield max(self._starts[index], offset), self._ends[index]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varints(data: bytes) -> list[int]:
    values: list[int] = []
    value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")
        else:
            values.append(value)
            value = shift = 0
    if shift:
        raise ValueError("truncated varint")
    return values


def encode_done_map(base: int, done: Iterable[tuple[int, int]], budget: int = DEFAULT_METADATA_BUDGET) -> str:
    """Encode done ranges (all at or after ``base + 1``) relative to the commit offset ``base``.

    Runs alternate not-done / done starting at ``base`` (which is never done, or it would be committed).
    When the map does not fit ``budget`` characters, the farthest runs are dropped: the next owner then
    reprocesses more, but never skips anything that was not done. ``done`` is read nearest first and only
    until a range does not fit (so a lazy iterable costs only the runs written, and anything beyond is not
    checked); a range reaching past ``MAX_DECODED_SPAN`` is cut there, so the decoder never refuses the map.
    """
    payload_budget = (budget - len(METADATA_PREFIX)) * 3 // 4
    limit = base + MAX_DECODED_SPAN
    payload = bytearray()
    cursor = base
    for start, end in done:
        if start <= cursor or end <= start:
            raise ValueError(f"done ranges must be sorted, disjoint and beyond {base}: {start}..{end}")
        if start >= limit:
            break
        end = min(end, limit)
        pair = _varint(start - cursor) + _varint(end - start)
        if len(payload) + len(pair) > payload_budget:
            break
        payload += pair
        cursor = end
    if not payload:
        return ""
    return METADATA_PREFIX + base64.urlsafe_b64encode(payload).decode("ascii").rstrip("=")


def decode_done_map(base: int, metadata: str | None) -> DoneRanges:
    """The done ranges a commit's metadata remembers; anything unreadable is treated as nothing done."""
    if not metadata or not metadata.startswith(METADATA_PREFIX):
        return DoneRanges()
    text = metadata[len(METADATA_PREFIX) :]
    try:
        runs = _read_varints(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except ValueError:
        return DoneRanges()
    if len(runs) % 2 or sum(runs) > MAX_DECODED_SPAN:
        return DoneRanges()
    ranges: list[tuple[int, int]] = []
    cursor = base
    for gap, length in zip(runs[::2], runs[1::2], strict=True):
        if gap == 0 or length == 0:
            return DoneRanges()
        start = cursor + gap
        ranges.append((start, start + length))
        cursor = start + length
    return DoneRanges(ranges)


def _merge_touching(ranges: Iterator[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Sorted, disjoint ranges with touching neighbours joined (``(1, 3), (3, 5)`` is ``(1, 5)``), lazily."""
    first = next(ranges, None)
    if first is None:
        return
    start, end = first
    for next_start, next_end in ranges:
        if next_start > end:
            yield start, end
            start = next_start
        end = max(end, next_end)
    yield start, end


class PartitionLedger:
    """The offsets of one partition between fetch and commit, for one assignment epoch.

    ``track`` each record in fetch order, ``complete`` it when its result is acknowledged by the broker;
    ``commit_offset`` is the completed prefix. ``remembered`` holds the done map read from the last commit.

    Only the offsets not done yet are held: ``_pending`` maps each to its ordinal among the tracked records
    (for :attr:`behind_head`), and ``_order`` lists them in offset order, the head first. A completed offset
    leaves ``_pending`` at once and ``_order`` lazily (at the front straight away, elsewhere when the queue
    is rebuilt), so ``complete`` never searches. Everything between the head and ``next_offset`` that is not
    pending counts as done, gaps included: an offset the fetches skipped between two they returned is one
    the log no longer holds (a partition's records come in offset order), and the commit passes it anyway
    as soon as the prefix reaches it.
    """

    __slots__ = ("_order", "_pending", "_tracked", "committed", "epoch", "next_offset", "remembered")

    def __init__(self, epoch: int, committed: int | None = None, remembered: DoneRanges | None = None) -> None:
        self.epoch = epoch
        self.committed = committed
        self.remembered = remembered or DoneRanges()
        self.next_offset: int | None = committed
        self._pending: dict[int, int] = {}
        self._order: deque[int] = deque()
        self._tracked = 0

    @property
    def in_flight(self) -> int:
        """Records tracked and not done yet."""
        return len(self._pending)

    @property
    def behind_head(self) -> int:
        """Records tracked after the commit offset (done or not): what piles up behind a head that is stuck."""
        return self._tracked - self._pending[self._order[0]] if self._order else 0

    @property
    def span(self) -> int:
        """Offsets from the commit offset to the next one expected: what a restart would fetch again."""
        return self.next_offset - self._order[0] if self._order and self.next_offset is not None else 0

    def track(self, offset: int) -> bool:
        """Start tracking a fetched record; True when the done map says it was already handled (skip it)."""
        if self.next_offset is not None and offset < self.next_offset:
            raise ValueError(f"offset {offset} tracked out of order (next is {self.next_offset})")
        self.next_offset = offset + 1
        self._tracked += 1
        if offset in self.remembered:
            return True
        self._pending[offset] = self._tracked
        self._order.append(offset)
        return False

    def complete(self, offset: int) -> None:
        """Record a tracked offset as done; one not in flight (done already, never tracked) changes nothing."""
        pending = self._pending
        if pending.pop(offset, None) is None:
            return
        order = self._order
        if order[0] == offset:  # the head: drop it, and the completed offsets right behind it
            order.popleft()
            while order and order[0] not in pending:
                order.popleft()
        if len(order) > 2 * len(pending) + _COMPACT_SLACK:
            self._order = deque(filter(pending.__contains__, order))

    def commit_offset(self) -> int | None:
        """The offset to commit: the first record not yet done, or one past the last seen when all are."""
        if self._order:
            return self._order[0]
        return self.next_offset

    def done_ranges(self) -> Iterator[tuple[int, int]]:
        """What is done beyond the commit offset, nearest first, lazily: the stretches between the records
        not done yet, then the remembered work not fetched again yet."""
        if self.next_offset is None:  # nothing tracked, nothing committed
            return iter(())
        # With nothing in flight the commit offset is next_offset, and the commit offset is never done.
        remembered = self.remembered.iter_from(self.next_offset if self._order else self.next_offset + 1)
        return _merge_touching(chain(self._done_between_pending(), remembered))

    def _done_between_pending(self) -> Iterator[tuple[int, int]]:
        last = self.next_offset
        if not self._order or last is None:
            return
        pending = self._pending
        previous = self._order[0]
        for offset in self._order:
            if offset in pending:
                if offset > previous + 1:
                    yield previous + 1, offset
                previous = offset
        if last > previous + 1:
            yield previous + 1, last

    def commit_metadata(self, budget: int = DEFAULT_METADATA_BUDGET) -> str:
        """The done-beyond-the-commit map, including remembered work not fetched again yet; it costs the runs
        that fit ``budget``, however much is done or pending beyond them."""
        base = self.commit_offset()
        if base is None:
            return ""
        return encode_done_map(base, self.done_ranges(), budget)
