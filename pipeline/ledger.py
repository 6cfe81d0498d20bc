"""Per-partition offset bookkeeping: what may be committed, and what was done beyond it.

Jobs finish out of order, so a partition may only commit the offset below which *every* record is handled
(the completed prefix). Records finished beyond that point are remembered in the commit's metadata string
as a compact run-length map (``pc1:`` + base64url of varint run lengths), so that after a restart or a
rebalance the next owner skips them instead of paying for their LLM calls again.

Offsets are tracked as seen, not assumed contiguous: compaction and transaction markers leave gaps, and a
gap must never hold the commit back. Everything here is pure and synchronous; the worker owns the I/O.
"""

from __future__ import annotations

import base64
import bisect
from collections import deque
from collections.abc import Iterable
from typing import Final

METADATA_PREFIX: Final = "pc1:"
#: Kafka's default ``offset.metadata.max.bytes`` is 4096; stay under it with room for the prefix.
DEFAULT_METADATA_BUDGET: Final = 4000
#: Refuse maps that claim absurd spans (a corrupt or hostile string must not allocate without bound).
MAX_DECODED_SPAN: Final = 50_000_000


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
        return [(max(s, offset), e) for s, e in zip(self._starts, self._ends, strict=True) if e > offset]


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
    reprocesses more, but never skips anything that was not done.
    """
    runs: list[bytes] = []
    cursor = base
    for start, end in done:
        if start <= cursor or end <= start:
            raise ValueError(f"done ranges must be sorted, disjoint and beyond {base}: {start}..{end}")
        runs.append(_varint(start - cursor))
        runs.append(_varint(end - start))
        cursor = end
    payload_budget = (budget - len(METADATA_PREFIX)) * 3 // 4
    while runs and sum(map(len, runs)) > payload_budget:
        del runs[-2:]
    if not runs:
        return ""
    return METADATA_PREFIX + base64.urlsafe_b64encode(b"".join(runs)).decode("ascii").rstrip("=")


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


class PartitionLedger:
    """The offsets of one partition between fetch and commit, for one assignment epoch.

    ``track`` each record in fetch order, ``complete`` it when its result is acknowledged by the broker;
    ``commit_offset`` is the completed prefix. ``remembered`` holds the done map read from the last commit.
    """

    __slots__ = ("_done", "_pending", "committed", "epoch", "next_offset", "remembered")

    def __init__(self, epoch: int, committed: int | None = None, remembered: DoneRanges | None = None) -> None:
        self.epoch = epoch
        self.committed = committed
        self.remembered = remembered or DoneRanges()
        self.next_offset: int | None = committed
        self._pending: deque[int] = deque()
        self._done: set[int] = set()

    @property
    def in_flight(self) -> int:
        return len(self._pending) - len(self._done)

    def track(self, offset: int) -> bool:
        """Start tracking a fetched record; True when the done map says it was already handled (skip it)."""
        if self.next_offset is not None and offset < self.next_offset:
            raise ValueError(f"offset {offset} tracked out of order (next is {self.next_offset})")
        self.next_offset = offset + 1
        self._pending.append(offset)
        if offset in self.remembered:
            self.complete(offset)
            return True
        return False

    def complete(self, offset: int) -> None:
        self._done.add(offset)
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            done.discard(pending.popleft())

    def commit_offset(self) -> int | None:
        """The offset to commit: the first record not yet done, or one past the last seen when all are."""
        if self._pending:
            return self._pending[0]
        return self.next_offset

    def commit_metadata(self, budget: int = DEFAULT_METADATA_BUDGET) -> str:
        """The done-beyond-the-commit map, including remembered work not fetched again yet."""
        base = self.commit_offset()
        if base is None:
            return ""
        done = [(offset, offset + 1) for offset in sorted(self._done)]
        if self.next_offset is not None:
            done.extend(self.remembered.at_or_after(max(self.next_offset, base + 1)))
        return encode_done_map(base, DoneRanges(done).ranges(), budget)
