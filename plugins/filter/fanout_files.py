# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: fanout_files
short_description: What a fan-out holder serves, or the reference checksum, from its deployment report rows
version_added: 0.2.0
description:
  - From the report rows of the C(directdownload.kvm.deploy) role (C(deploy_report)), the verified copies a host
    holds (status V(downloaded) or V(present)) as M(directdownload.kvm.peer_server) O(directdownload.kvm.peer_server#module:files)
    entries C({path, sha256}), one per file name; C(sha256) when the verified checksum is a SHA-256.
  - With O(reference=true), the checksum of the first verified copy instead (an empty string when there is
    none), the reference for a template registered without a checksum.
author:
  - directdownload.kvm maintainers (@directdownload)
extends_documentation_fragment:
  - directdownload.kvm._report_rows
options:
  reference:
    description: Return the checksum of the first verified copy instead of the files.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Serve this host's verified copies
  directdownload.kvm.peer_server:
    files: "{{ deploy_report | directdownload.kvm.fanout_files }}"
    token: "{{ deployment_token }}"
    address: "{{ ansible_host }}"
  no_log: true
"""

RETURN = r"""
_value:
  description: The files (a list of dictionaries), or with O(reference=true) a checksum string.
  type: raw
  sample:
    - {path: /var/lib/libvirt/images/3f2a.qcow2, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.directdownload.kvm.plugins.module_utils._fanout import reference_checksum, served_files


def _fanout_files(rows, reference=False):
    if not isinstance(rows, (list, tuple)) or not all(isinstance(row, dict) for row in rows):
        raise AnsibleFilterError("fanout_files expects a list of report rows (dictionaries)")
    if reference:
        return reference_checksum(rows) or ""
    return served_files(rows)


class FilterModule:
    """What a fan-out holder serves."""

    def filters(self):
        return {"fanout_files": _fanout_files}
