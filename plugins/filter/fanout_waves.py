# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: fanout_waves
short_description: Plan the waves of a fan-out deployment, and the peers of each receiving host
version_added: 0.2.0
description:
  - Doubling waves with multi-source receivers, as C(docs/fanout.md) recommends. Per cluster, the first O(seeds)
    hosts fetch from the origin (wave 0, unless hosts of the cluster already hold a verified copy). In each later
    wave every holder takes O(per_holder) new receivers (V(1) doubles the holders each wave), and every receiver
    of that wave gets all the cluster's holders so far as peers.
  - Peers are hosts of the receiver's own cluster only. Waves of different clusters with the same number run
    together.
  - Returns a list of waves, each C({wave, hosts}) where C(hosts) maps each receiving host to C({cluster, peers});
    an empty C(peers) list means the origin only.
author:
  - directdownload.kvm maintainers (@directdownload)
positional: _input
options:
  _input:
    description:
      - The hosts that need a copy, in order, as a dictionary of cluster names to host lists, or one list.
      - Or a dictionary of host names to their cluster names (in play order), as the deploy role builds it.
    type: raw
    required: true
  holders:
    description: Hosts that already hold a verified copy (from the registry); they serve from the first wave.
    type: list
    elements: str
    default: []
  per_holder:
    description: New receivers per holder and wave, between 1 and O(max_uploads).
    type: int
    default: 1
  max_uploads:
    description: The peers' cap on concurrent uploads (M(directdownload.kvm.peer_server) O(directdownload.kvm.peer_server#module:max_uploads)).
    type: int
    default: 4
  seeds:
    description: How many hosts of a cluster without holders fetch from the origin in wave 0.
    type: int
    default: 1
"""

EXAMPLES = r"""
- name: Plan the waves of this deployment once
  ansible.builtin.set_fact:
    fanout_plan: "{{ {'cluster-a': groups['cluster_a'], 'cluster-b': groups['cluster_b']}
                     | directdownload.kvm.fanout_waves(holders=template_holders) }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: The waves, in order.
  type: list
  elements: dict
  sample:
    - {wave: 0, hosts: {kvm1: {cluster: a, peers: []}}}
    - {wave: 1, hosts: {kvm2: {cluster: a, peers: [kvm1]}}}
    - {wave: 2, hosts: {kvm3: {cluster: a, peers: [kvm1, kvm2]}, kvm4: {cluster: a, peers: [kvm1, kvm2]}}}
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._fanout import plan_waves


def _fanout_waves(clusters, holders=None, per_holder=1, max_uploads=4, seeds=1):
    try:
        return plan_waves(clusters, holders or [], per_holder=per_holder, max_uploads=max_uploads, seeds=seeds)
    except InvalidInput as exc:
        raise AnsibleFilterError(exc.msg) from None


class FilterModule:
    """The waves of a fan-out deployment."""

    def filters(self):
        return {"fanout_waves": _fanout_waves}
