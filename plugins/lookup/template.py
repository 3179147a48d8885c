# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: template
short_description: Read a template record by name from a directdownload registry file
version_added: 0.1.0
description:
  - Returns the record of each named template from the registry file on the B(controller), as
    M(directdownload.kvm.template) stored it (id, url, format, checksum, size, state ...).
  - Lookups run on the controller. When the registry lives on another host, use M(directdownload.kvm.template_info)
    with C(delegate_to) instead.
  - HTTP header values are masked unless O(reveal_secrets=true).
author:
  - directdownload.kvm maintainers (@directdownload)
options:
  _terms:
    description: Template names.
    type: list
    elements: str
    required: true
  registry:
    description: Path of the registry file on the controller.
    type: path
    default: ~/.local/state/directdownload/registry.json
  reveal_secrets:
    description:
      - Return HTTP header values in clear text (for a download task; keep such a task C(no_log)).
    type: bool
    default: false
  missing:
    description:
      - What to do for a name that is not registered. V(error) fails, V(empty) returns an empty dictionary for it.
    type: str
    default: error
    choices: [error, empty]
seealso:
  - module: directdownload.kvm.template_info
"""

EXAMPLES = r"""
- name: Show the id of debian-12
  ansible.builtin.debug:
    msg: "{{ lookup('directdownload.kvm.template', 'debian-12').id }}"

- name: Use a registry kept elsewhere on the controller
  ansible.builtin.set_fact:
    debian: "{{ lookup('directdownload.kvm.template', 'debian-12', registry='/srv/dd/registry.json') }}"

- name: Is alma-9 registered?
  ansible.builtin.debug:
    msg: "{{ lookup('directdownload.kvm.template', 'alma-9', missing='empty') | length > 0 }}"
"""

RETURN = r"""
_raw:
  description: One template record (a dictionary) per name; an empty dictionary for a missing one with
    O(missing=empty).
  type: list
  elements: dict
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import DirectDownloadError


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        registry = reg.Registry(self.get_option("registry"))
        try:
            doc = registry.read()
        except DirectDownloadError as exc:
            raise AnsibleLookupError(exc.msg) from exc
        reveal = self.get_option("reveal_secrets")
        records = []
        for name in terms:
            record = reg.get_template(doc, name=name)
            if record is None:
                if self.get_option("missing") == "error":
                    raise AnsibleLookupError("no template %r in the registry %s" % (name, registry.path))
                records.append({})
                continue
            records.append(dict(record) if reveal else reg.public_template(record))
        return records
