# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The piece map: units, done/pending runs, the resume state in the sidecar, range planning."""

from __future__ import annotations

import json

from ansible_collections.directdownload.kvm.plugins.module_utils._pieces import (
    MAX_UNITS,
    MIN_RUN_BYTES,
    PieceMap,
    Range,
    plan_ranges,
    runs,
    unit_size_for,
)


def test_runs():
    assert runs(bytearray([1, 1, 0, 1, 0, 0])) == [[0, 2], [3, 4]]
    assert runs(bytearray([1, 1, 0, 1, 0, 0]), 0) == [[2, 3], [4, 6]]
    assert runs(bytearray()) == []


def test_unit_size():
    assert unit_size_for(10 ** 9, 65536, piece_length=262144) == 262144
    assert unit_size_for(10 ** 6, 65536) == 1024 * 1024
    assert unit_size_for(10 ** 6, 65536, unit_size=100000) == 131072  # whole blocks
    huge = 1 << 40
    assert -(-huge // unit_size_for(huge, 65536)) <= MAX_UNITS


def test_map_counts_done_bytes_with_a_short_last_unit():
    pieces = PieceMap(25, 10)
    assert pieces.count == 3 and pieces.span(2) == (20, 25)
    pieces.mark_done(2)
    pieces.mark_done(2)
    pieces.mark_done(0)
    assert pieces.done_bytes == 15 and pieces.done_count == 2 and not pieces.complete
    assert pieces.pending_runs() == [[1, 2]] and pieces.contiguous_from(0) == 1
    pieces.mark_pending(0)
    assert pieces.done_bytes == 5
    pieces.mark_done(0)
    pieces.mark_done(1)
    assert pieces.complete and pieces.done_bytes == 25


def test_resume_state_round_trips_through_json_and_is_refused_for_another_file():
    pieces = PieceMap(100, 10)
    for unit in (0, 1, 2, 7):
        pieces.mark_done(unit)
    state = json.loads(json.dumps(pieces.state({"name": "a"})))
    again = PieceMap(100, 10)
    assert again.load(state, {"name": "a"}) and again.done_runs() == [[0, 3], [7, 8]] and again.done_bytes == 40
    assert not PieceMap(100, 10).load(state, {"name": "b"})
    assert not PieceMap(100, 20).load(state, {"name": "a"})
    assert not PieceMap(90, 10).load(state, {"name": "a"})
    assert not PieceMap(100, 10).load(dict(state, version=1), {"name": "a"})
    garbage = dict(state, done=[["x", 2], [5], [8, 99]])
    third = PieceMap(100, 10)
    assert third.load(garbage, {"name": "a"}) and third.done_runs() == [[8, 10]]


def test_plan_ranges_gives_every_connection_a_range_and_keeps_them_in_order():
    unit = MIN_RUN_BYTES // 4
    pending = plan_ranges([Range(0, 64)], 4, unit)
    assert len(pending) >= 4 and [r.start for r in pending] == sorted(r.start for r in pending)
    assert pending[0].start == 0 and pending[-1].stop == 64
    assert all(a.stop == b.start for a, b in zip(pending, pending[1:]))
    # Small files: not cut below what gives each connection one range.
    small = plan_ranges([Range(0, 3)], 2, 1024)
    assert [(r.start, r.stop) for r in small] == [(0, 1), (1, 3)]
    assert [(r.start, r.stop) for r in plan_ranges([Range(0, 1)], 4, 1024)] == [(0, 1)]
