# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: fanout_mirrors
short_description: The peer mirrors of a fan-out receiver, from the peer_server results of its peers
version_added: 0.2.0
description:
  - For the hosts a receiver fetches from in its wave (the C(peers) of C(directdownload.kvm.fanout_waves)) and their
    M(directdownload.kvm.peer_server) results, the O(directdownload.kvm.download#module:mirrors) entries
    C({url, peer=true, fingerprint}) for the file O(name), one per peer that serves it.
  - A peer that started no server (skipped, failed, not serving O(name)) is left out; the origin stays the
    fallback of the download.
author:
  - directdownload.kvm maintainers (@directdownload)
positional: _input
options:
  _input:
    description: The peer host names.
    type: list
    elements: str
    required: true
  served:
    description: The M(directdownload.kvm.peer_server) result of each peer, in the same order (an empty dictionary
      for a peer without one).
    type: list
    elements: raw
    required: true
  name:
    description: The served file name (the template's install name).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: The peers of this host in this wave
  ansible.builtin.set_fact:
    peer_mirrors: "{{ my_peers | directdownload.kvm.fanout_mirrors(my_peers | map('extract', hostvars, 'served'),
                      'debian-12.qcow2') }}"
"""

RETURN = r"""
_value:
  description: The mirrors entries.
  type: list
  elements: dict
  sample:
    - {url: "https://10.0.0.11:8473/debian-12.qcow2", peer: true, fingerprint: "3A:1F:...:9C"}
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.directdownload.kvm.plugins.module_utils._fanout import peer_mirrors


def _fanout_mirrors(peers, served, name):
    if not isinstance(peers, (list, tuple)):
        raise AnsibleFilterError("fanout_mirrors expects a list of peer host names")
    return peer_mirrors(list(peers), list(served or []), name)


class FilterModule:
    """The peer mirrors of a fan-out receiver."""

    def filters(self):
        return {"fanout_mirrors": _fanout_mirrors}
