# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this doc fragment is PRIVATE to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!
"""What protects the origin and the operator's time during a ``download``: rate cap, minimum speed, checksum
retries, overall timeout. Only ``download`` moves image bytes, so only it has them.

The argument spec is ``_rate.LIMITS_ARGUMENT_SPEC``; keep both in step.
"""

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options:
  max_rate:
    description:
      - The most bytes per second this download takes from the network, across all its connections (the parallel
        connections of a segmented Metalink download share it). Empty or V(0) means no cap.
      - An integer, or a number with a suffix V(K), V(M), V(G) as curl's C(--limit-rate) and aria2's
        C(--max-download-limit) write them, 1024-based (V(10M) is 10485760 bytes per second); C(B), C(iB) or
        C(/s) after the suffix are accepted.
    type: str
    version_added: 0.2.0
  lowest_speed:
    description:
      - A connection that stays below this many bytes per second for O(lowest_speed_time) seconds is closed and
        the download resumes where it stands (C(Range) and C(If-Range)), on another mirror of a Metalink when
        there is one. It counts as an attempt (see O(retries)). Same syntax as O(max_rate). Empty means no
        minimum (a stalled connection still ends after O(read_timeout)).
      - Like aria2's C(--lowest-speed-limit) and curl's C(--speed-limit)/C(--speed-time). Must be below
        O(max_rate) (per connection) when both are set.
    type: str
    version_added: 0.2.0
  lowest_speed_time:
    description:
      - Seconds over which the speed of a connection is measured for O(lowest_speed).
    type: float
    version_added: 0.2.0
    default: 30.0
  mismatch_retries:
    description:
      - How many more downloads a checksum mismatch earns. V(0) downloads once. A Metalink mirror whose bytes did
        not match is not asked again in the same run while another mirror is left.
      - The failure shows the expected and the actual digest and the bytes transferred in all.
    type: int
    version_added: 0.2.0
    default: 1
  timeout:
    description:
      - The overall budget of the whole download in seconds, every attempt and every wait between them included.
        When it is spent the download stops, keeps its resumable C(.part) and fails. Empty or V(0) means no limit.
      - Not the per-request timeout of M(ansible.builtin.get_url); for that use O(read_timeout) (and
        O(connect_timeout)).
    type: float
    version_added: 0.2.0
"""
