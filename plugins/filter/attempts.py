# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: attempts
short_description: The hosts a loop over candidate hosts tried, with the outcome and the error of each
version_added: 0.1.0
description:
  - Takes the C(results) of a registered task that looped over candidate hosts (one item per host, the loop
    variable being the host, the task delegated to it, with C(ignore_errors) and C(ignore_unreachable)), as the
    C(directdownload.kvm.registration) and C(directdownload.kvm.deploy) roles run M(directdownload.kvm.url_check)
    and M(directdownload.kvm.download).
  - Returns one entry per item that ran (skipped items left out), in order, with C(host), C(outcome) (V(ok),
    V(failed), V(unreachable)), C(error) (the message of a failure, prefixed with C(host unreachable) for a host that could not
    be reached; for a probe that ran but could not reach the URL, its C(error)) and C(retry_elsewhere)
    (false when the result said that no other host can succeed, as
    RV(directdownload.kvm.download#module:retry_elsewhere) does).
author:
  - directdownload.kvm maintainers (@directdownload)
positional: _input
options:
  _input:
    description: The C(results) of the registered loop task.
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Say which hosts could not reach the URL
  ansible.builtin.debug:
    msg: "{{ probes.results | directdownload.kvm.attempts | rejectattr('outcome', 'eq', 'ok')
             | map(attribute='host') | list }}"
"""

RETURN = r"""
_value:
  description: One entry per host tried.
  type: list
  elements: dict
  sample:
    - {host: kvm2, outcome: unreachable, error: "host unreachable: ssh: connect to host kvm2 port 22", retry_elsewhere: true}
    - {host: kvm1, outcome: ok, error: null, retry_elsewhere: true}
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.directdownload.kvm.plugins.module_utils._fleet import summarize_attempts


def _attempts(results):
    if not isinstance(results, (list, tuple)) or not all(isinstance(result, dict) for result in results):
        raise AnsibleFilterError("attempts expects the results of a loop task (a list of dictionaries)")
    return summarize_attempts(results)[0]


class FilterModule:
    """The attempts of a loop over candidate hosts."""

    def filters(self):
        return {"attempts": _attempts}
