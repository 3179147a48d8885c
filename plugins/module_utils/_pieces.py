# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The piece map of a transfer in ranges: the file cut into units (a Metalink's piece length, else a unit size),
which are done and which are pending, and its resume state, saved as the ``segments`` key of the one ``.part.json``
sidecar (``_sink.PartFile``). Pure: no I/O."""

from __future__ import annotations

from typing import AbstractSet, Any, Optional, Sequence

DEFAULT_UNIT_SIZE = 1024 * 1024
# Bounds the map for very large files without piece hashes (units grow instead).
MAX_UNITS = 1 << 16
RUNS_PER_CONNECTION = 4
MIN_RUN_BYTES = 16 * 1024 * 1024
STATE_VERSION = 2


def runs(flags: Sequence[int], value: int = 1) -> list[list[int]]:
    """``[[start, stop], ...]`` of the runs of ``flags`` equal to ``value``."""
    found, start = [], None
    for index, flag in enumerate(flags):
        if (flag == value) and start is None:
            start = index
        elif flag != value and start is not None:
            found.append([start, index])
            start = None
    if start is not None:
        found.append([start, len(flags)])
    return found


def unit_size_for(size: int, block_size: int, piece_length: Optional[int] = None,
                  unit_size: Optional[int] = None) -> int:
    """The unit of a map: the piece length when there are piece hashes, else ``unit_size`` (1 MiB by default),
    grown so the map has at most MAX_UNITS units, rounded up to whole blocks."""
    if piece_length:
        return piece_length
    unit = max(int(unit_size or DEFAULT_UNIT_SIZE), -(-size // MAX_UNITS), 1)
    return -(-unit // block_size) * block_size


class Range:
    """Units ``[start, stop)`` still to fetch. ``avoid``: source URLs not to ask first (they failed for it);
    ``clean``: the bytes there read as zeros (sparse writes are safe)."""

    __slots__ = ("start", "stop", "avoid", "clean")

    def __init__(self, start: int, stop: int, avoid: AbstractSet[str] = frozenset(), clean: bool = True) -> None:
        self.start = start
        self.stop = stop
        self.avoid = avoid
        self.clean = clean

    def __repr__(self) -> str:
        return "Range(%d, %d)" % (self.start, self.stop)


class PieceMap:
    """``size`` bytes in units of ``unit`` bytes; ``done[i]`` is 1 when unit ``i`` is written and verified."""

    def __init__(self, size: int, unit: int) -> None:
        self.size = size
        self.unit = unit
        self.count = -(-size // unit)
        self.done = bytearray(self.count)
        self.done_count = 0
        self.done_bytes = 0

    def span(self, unit: int) -> tuple[int, int]:
        start = unit * self.unit
        return start, min(start + self.unit, self.size)

    def length(self, unit: int) -> int:
        start, stop = self.span(unit)
        return stop - start

    def mark_done(self, unit: int) -> None:
        if not self.done[unit]:
            self.done[unit] = 1
            self.done_count += 1
            self.done_bytes += self.length(unit)

    def mark_pending(self, unit: int) -> None:
        if self.done[unit]:
            self.done[unit] = 0
            self.done_count -= 1
            self.done_bytes -= self.length(unit)

    @property
    def complete(self) -> bool:
        return self.done_count == self.count

    def done_runs(self) -> list[list[int]]:
        return runs(self.done, 1)

    def pending_runs(self) -> list[list[int]]:
        return runs(self.done, 0)

    def contiguous_from(self, unit: int) -> int:
        """The first unit at or after ``unit`` that is not done."""
        while unit < self.count and self.done[unit]:
            unit += 1
        return unit

    # -- resume state

    def state(self, identity: dict[str, Any]) -> dict[str, Any]:
        """The resume state (the ``segments`` key of the sidecar)."""
        return dict(version=STATE_VERSION, identity=identity, size=self.size, unit=self.unit, done=self.done_runs())

    def load(self, state: Any, identity: dict[str, Any]) -> bool:
        """Mark done what ``state`` says, when it is the state of this map (same identity, size, unit). Returns
        True when it was used."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or state.get("identity") != identity \
                or state.get("size") != self.size or state.get("unit") != self.unit:
            return False
        for run in state.get("done") or ():
            try:
                start, stop = int(run[0]), int(run[1])
            except (TypeError, ValueError, IndexError):
                continue
            for unit in range(max(0, start), min(stop, self.count)):
                self.mark_done(unit)
        return True


def plan_ranges(pending: list[Range], connections: int, unit: int) -> list[Range]:
    """Cut the largest of ``pending`` (Range list, changed in place) in two until every connection has one, and
    further, down to MIN_RUN_BYTES, up to RUNS_PER_CONNECTION each; then sort by start. Ranges are taken from the
    front, so the finished prefix that the hashing follows stays close behind the connections."""
    while True:
        largest = max(pending, key=lambda r: r.stop - r.start, default=None)
        if largest is None or largest.stop - largest.start < 2:
            break
        if len(pending) >= connections and (
                len(pending) >= connections * RUNS_PER_CONNECTION
                or (largest.stop - largest.start) // 2 * unit < MIN_RUN_BYTES):
            break
        middle = (largest.start + largest.stop) // 2
        pending.append(Range(middle, largest.stop, clean=largest.clean))
        largest.stop = middle
    pending.sort(key=lambda r: r.start)
    return pending
