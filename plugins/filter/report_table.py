# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: report_table
short_description: Format the rows of a deployment report as an aligned text table
version_added: 0.1.0
description:
  - Turns the report rows of the C(directdownload.kvm.deploy) role (C(deploy_report) of each host, the RV(report)
    of M(directdownload.kvm.template_copy) with O(directdownload.kvm.template_copy#module:state=finished)) into
    lines of text with aligned columns, sorted by host and pool, with a header line.
  - Columns are the host, the pool, the status (downloaded, present, would download, failed, unreachable), the host
    that downloaded the copy, the bytes moved (KiB, MiB, GiB), the seconds, the rate in MB/s, where a resumed
    transfer started, and the URL that served the bytes, or for a pool that failed the error of each host tried.
author:
  - directdownload.kvm maintainers (@directdownload)
extends_documentation_fragment:
  - directdownload.kvm._report_rows
seealso:
  - module: directdownload.kvm.template_copy
"""

EXAMPLES = r"""
- name: Show the report of every host of the play
  ansible.builtin.debug:
    msg: "{{ ansible_play_hosts_all | map('extract', hostvars) | selectattr('deploy_report', 'defined')
             | map(attribute='deploy_report') | flatten(levels=1) | directdownload.kvm.report_table }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: The lines of the table, the header first.
  type: list
  elements: str
  sample:
    - "HOST  POOL         STATUS      ON    MOVED     TIME   RATE       RESUMED  SOURCE / ATTEMPTS"
    - "kvm1  nfs-primary  downloaded  kvm2  32.0 MiB  1.2 s  28.0 MB/s  -        https://mirror.example.com/d.qcow2
       (after kvm1: host unreachable)"
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.directdownload.kvm.plugins.module_utils._fleet import report_table


def _report_table(rows):
    if not isinstance(rows, (list, tuple)) or not all(isinstance(row, dict) for row in rows):
        raise AnsibleFilterError("report_table expects a list of report rows (dictionaries)")
    return report_table(rows)


class FilterModule:
    """The deployment report as a table."""

    def filters(self):
        return {"report_table": _report_table}
