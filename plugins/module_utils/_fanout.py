# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Fan-out waves (docs/fanout.md, "Wave shape"): which hosts fetch in which wave, and from which peers. Pure.

Doubling waves with multi-source receivers: per cluster, the first ``seeds`` hosts fetch from the origin (wave 0,
unless hosts of the cluster already hold a verified copy); in every later wave each holder takes ``per_holder`` new
receivers (1 = doubling), and every receiver of that wave gets *all* the cluster's holders so far as peers (the
origin stays its last-priority fallback). Peers are only ever hosts of the receiver's own cluster (network
locality). Waves of different clusters with the same index run together.
"""

from __future__ import annotations

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput


def plan_waves(clusters, holders=(), per_holder=1, max_uploads=4, seeds=1):
    """The waves as a list of ``{"wave": k, "hosts": {host: {"cluster": name, "peers": [hosts]}}}``.

    ``clusters``: ``{cluster: [hosts in order]}`` (or a plain list: one cluster named ``""``); ``holders``: hosts
    that already hold a verified copy (sources from the start, never receivers); ``per_holder`` (1 to
    ``max_uploads``): receivers per holder per wave; ``seeds``: origin downloads of a cluster without holders.
    A receiver with ``peers == []`` fetches from the origin only.
    """
    if isinstance(clusters, (list, tuple)):
        clusters = {"": list(clusters)}
    if not isinstance(clusters, dict):
        raise InvalidInput("fanout_waves expects a dictionary of cluster names to host lists, or a host list")
    per_holder, max_uploads, seeds = int(per_holder), int(max_uploads), int(seeds)
    if max_uploads < 1 or not 1 <= per_holder <= max_uploads:
        raise InvalidInput("per_holder must be between 1 and max_uploads (%d)" % max_uploads)
    if seeds < 1:
        raise InvalidInput("seeds must be at least 1")
    holders = set(holders or ())
    seen = set()
    waves = []
    for cluster in sorted(clusters, key=str):
        hosts = list(clusters[cluster] or [])
        for host in hosts:
            if host in seen:
                raise InvalidInput("host %s is listed twice (each host belongs to one cluster)" % host)
            seen.add(host)
        have = [host for host in hosts if host in holders]
        todo = [host for host in hosts if host not in holders]
        index = 0
        while todo:
            if have:
                count, peers = len(have) * per_holder, list(have)
            else:
                count, peers = seeds, []
            batch, todo = todo[:count], todo[count:]
            while len(waves) <= index:
                waves.append({"wave": len(waves), "hosts": {}})
            for host in batch:
                waves[index]["hosts"][host] = {"cluster": cluster, "peers": peers}
            have.extend(batch)
            index += 1
    return waves
