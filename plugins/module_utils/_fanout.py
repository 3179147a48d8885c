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

import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import parse_checksum
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput

# Report statuses of a pool that holds a verified copy (_fleet).
HOLDING = ("downloaded", "present")


def plan_waves(clusters: Union[dict[str, Any], list[str], tuple[str, ...]], holders: Optional[Iterable[str]] = (),
               per_holder: int = 1, max_uploads: int = 4, seeds: int = 1) -> list[dict[str, Any]]:
    """The waves as a list of ``{"wave": k, "hosts": {host: {"cluster": name, "peers": [hosts]}}}``.

    ``clusters``: ``{cluster: [hosts in order]}`` (or a plain list: one cluster named ``""``); ``holders``: hosts
    that already hold a verified copy (sources from the start, never receivers); ``per_holder`` (1 to
    ``max_uploads``): receivers per holder per wave; ``seeds``: origin downloads of a cluster without holders.
    A receiver with ``peers == []`` fetches from the origin only.
    """
    if isinstance(clusters, (list, tuple)):
        clusters = {"": list(clusters)}
    elif isinstance(clusters, dict) and clusters and all(not isinstance(v, (list, tuple)) for v in clusters.values()):
        clusters = by_cluster(clusters)
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


def by_cluster(host_clusters: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{host: cluster}`` (in play order; an empty or missing cluster is ``""``) as ``{cluster: [hosts]}``."""
    clusters = {}
    for host, cluster in host_clusters.items():
        clusters.setdefault(str(cluster or ""), []).append(host)
    return clusters


def peer_mirrors(peers: Optional[Iterable[str]], served: Optional[Iterable[Any]], name: str) -> list[dict[str, Any]]:
    """The ``mirrors`` entries of a receiver: one ``{url, peer: true, fingerprint}`` per peer host whose
    ``peer_server`` result in ``served`` (parallel to ``peers``) serves ``name``. A peer that did not start a server
    (skipped, failed, nothing to serve) is left out: the origin stays the fallback."""
    mirrors = []
    for _host, result in zip(peers or (), served or ()):
        if not isinstance(result, dict) or result.get("failed") or result.get("skipped"):
            continue
        url = (result.get("urls") or {}).get(name)
        fingerprint = result.get("fingerprint")
        if url and fingerprint:
            mirrors.append({"url": url, "peer": True, "fingerprint": fingerprint})
    return mirrors


def served_files(rows: Optional[Iterable[Mapping[str, Any]]]) -> list[dict[str, str]]:
    """The ``files`` of a holder's ``peer_server``: each verified copy of its report rows (``_fleet.finish``) as
    ``{path, sha256}`` (the SHA-256 when the verified checksum is one, so every peer's ETag is the same), one per
    file name (a peer serves files by name)."""
    files, names = [], set()
    for row in rows or ():
        path = row.get("path")
        if row.get("status") not in HOLDING or not path or os.path.basename(path) in names:
            continue
        names.add(os.path.basename(path))
        entry = {"path": path}
        try:
            checksum = parse_checksum(row.get("checksum") or "", default_algorithm="sha256")
        except InvalidInput:
            checksum = None
        if checksum is not None and checksum.algorithm == "sha256":
            entry["sha256"] = checksum.hexdigest
        files.append(entry)
    return files


def reference_checksum(rows: Optional[Iterable[Mapping[str, Any]]]) -> Optional[str]:
    """The checksum of the first verified copy among report ``rows`` (or the registry's copy records, which have no
    ``status``), for a template registered without one (the reference every later copy is verified against); None
    when no row holds a copy with a checksum."""
    for row in rows or ():
        if row.get("status", HOLDING[0]) in HOLDING and row.get("checksum"):
            return row["checksum"]
    return None


def byte_split(sources: Optional[Sequence[Mapping[str, Any]]], total: Optional[int] = 0) -> tuple[int, int]:
    """``(origin_bytes, peer_bytes)`` from a download's ``sources`` result (without one: ``total`` from the
    origin)."""
    if not sources:
        return int(total or 0), 0
    origin = sum(int(s.get("bytes") or 0) for s in sources if not s.get("peer"))
    peers = sum(int(s.get("bytes") or 0) for s in sources if s.get("peer"))
    return origin, peers
