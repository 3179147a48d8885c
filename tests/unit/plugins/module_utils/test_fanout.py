# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_fanout: the wave plan of a fan-out deployment (pure)."""

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._fanout import plan_waves


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
