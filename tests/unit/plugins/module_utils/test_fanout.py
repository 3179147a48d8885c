# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_fanout: the wave plan of a fan-out deployment (pure)."""

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _fanout
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._fanout import plan_waves
from ansible_collections.directdownload.kvm.plugins.module_utils._fleet import report_table


def sizes(waves):
    return [len(wave["hosts"]) for wave in waves]


def test_one_host_is_one_origin_download():
    assert plan_waves(["kvm1"]) == [{"wave": 0, "hosts": {"kvm1": {"cluster": "", "peers": []}}}]


def test_holders_double_each_wave_and_every_receiver_gets_all_holders():
    hosts = ["kvm%d" % i for i in range(1, 7)]
    waves = plan_waves(hosts)
    assert sizes(waves) == [1, 1, 2, 2]
    assert waves[0]["hosts"]["kvm1"]["peers"] == []
    assert waves[1]["hosts"]["kvm2"]["peers"] == ["kvm1"]
    assert waves[2]["hosts"]["kvm3"]["peers"] == ["kvm1", "kvm2"]
    assert waves[3]["hosts"]["kvm6"]["peers"] == ["kvm1", "kvm2", "kvm3", "kvm4"]
    assert sizes(plan_waves(["h%d" % i for i in range(50)])) == [1, 1, 2, 4, 8, 16, 18]


def test_existing_holders_serve_from_the_first_wave_and_never_receive():
    waves = plan_waves(["kvm1", "kvm2", "kvm3", "kvm4"], holders=["kvm3"])
    assert sizes(waves) == [1, 2]
    assert waves[0]["hosts"] == {"kvm1": {"cluster": "", "peers": ["kvm3"]}}
    assert all("kvm3" not in wave["hosts"] for wave in waves)
    assert plan_waves(["kvm1"], holders=["kvm1"]) == []


def test_clusters_fan_out_inside_themselves_and_share_wave_numbers():
    waves = plan_waves({"a": ["a1", "a2", "a3"], "b": ["b1", "b2"]})
    assert sizes(waves) == [2, 2, 1]
    assert waves[0]["hosts"] == {"a1": {"cluster": "a", "peers": []}, "b1": {"cluster": "b", "peers": []}}
    assert waves[1]["hosts"]["b2"]["peers"] == ["b1"]
    assert waves[2]["hosts"]["a3"]["peers"] == ["a1", "a2"]


def test_per_holder_and_seeds():
    assert sizes(plan_waves(["h%d" % i for i in range(12)], per_holder=2)) == [1, 2, 6, 3]
    assert sizes(plan_waves(["h%d" % i for i in range(6)], seeds=2)) == [2, 2, 2]


@pytest.mark.parametrize("kwargs", [{"per_holder": 0}, {"per_holder": 5}, {"seeds": 0}, {"max_uploads": 0}])
def test_bad_parameters(kwargs):
    with pytest.raises(InvalidInput):
        plan_waves(["h1", "h2"], **kwargs)


def test_a_host_in_two_clusters_is_refused():
    with pytest.raises(InvalidInput):
        plan_waves({"a": ["h1"], "b": ["h1"]})
    with pytest.raises(InvalidInput):
        plan_waves("h1,h2")


# -- the role's helpers: cluster map, peer mirrors, files to serve, reference checksum, byte split -----------------


DIGEST = "ab" * 32


def test_a_host_to_cluster_map_plans_per_cluster_in_play_order():
    waves = plan_waves({"k1": "a", "k2": "b", "k3": "a", "k4": ""})
    assert waves[0]["hosts"] == {"k4": {"cluster": "", "peers": []}, "k1": {"cluster": "a", "peers": []},
                                 "k2": {"cluster": "b", "peers": []}}
    assert waves[1]["hosts"] == {"k3": {"cluster": "a", "peers": ["k1"]}}


def test_peer_mirrors_keep_only_peers_that_serve_the_file():
    served = [{"urls": {"t1": "https://10.0.0.1:8473/t1"}, "fingerprint": "AA:BB", "changed": True},
              {"skipped": True}, {"failed": True, "msg": "no cryptography"}, {},
              {"urls": {"other": "https://10.0.0.5:8473/other"}, "fingerprint": "CC"}]
    assert _fanout.peer_mirrors(["k1", "k2", "k3", "k4", "k5"], served, "t1") == [
        {"url": "https://10.0.0.1:8473/t1", "peer": True, "fingerprint": "AA:BB"}]
    assert _fanout.peer_mirrors([], [], "t1") == []


def test_served_files_are_the_verified_copies_once_per_name_with_their_sha256():
    rows = [{"status": "downloaded", "path": "/p1/t1", "checksum": "{SHA-256}" + DIGEST},
            {"status": "present", "path": "/p2/t1", "checksum": "{SHA-256}" + DIGEST},  # same name: served once
            {"status": "present", "path": "/p2/t2", "checksum": "md5:" + "0" * 32},
            {"status": "failed", "path": None},
            {"status": "would download", "path": "/p3/t3"}]
    assert _fanout.served_files(rows) == [{"path": "/p1/t1", "sha256": DIGEST}, {"path": "/p2/t2"}]
    assert _fanout.reference_checksum(rows) == "{SHA-256}" + DIGEST
    assert _fanout.reference_checksum([{"status": "failed", "checksum": "x"}]) is None
    # The registry's copy records (no status) from an earlier deployment.
    assert _fanout.reference_checksum([{"host": "k1", "checksum": "{SHA-256}" + DIGEST}]) == "{SHA-256}" + DIGEST


def test_byte_split_and_the_report_table_tell_origin_from_peers():
    sources = [{"url": "http://o/x", "bytes": 10, "peer": False}, {"url": "https://k1/x", "bytes": 70, "peer": True},
               {"url": "https://k2/x", "bytes": 20, "peer": True}]
    assert _fanout.byte_split(sources) == (10, 90)
    assert _fanout.byte_split([], total=5) == (5, 0)
    row = {"host": "k2", "pool": "local", "status": "downloaded", "downloaded_on": "k2", "bytes": 3 * 1024 * 1024,
           "seconds": 1.0, "rate_mb_s": 3.1, "source": "http://o/x", "origin_bytes": 1024 * 1024,
           "peer_bytes": 2 * 1024 * 1024, "attempts": []}
    assert report_table([row])[1].endswith("http://o/x (origin 1.0 MiB, peers 2.0 MiB)")
