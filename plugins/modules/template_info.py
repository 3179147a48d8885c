#!/usr/bin/python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: template_info
short_description: Read templates, their copies on pools and certificates from the registry
version_added: 0.1.0
description:
  - Lists what the registry holds, as CloudStack's C(listTemplates), C(listIsos) and
    C(listTemplateDirectDownloadCertificates) do, that is templates, copies on primary storage pools, certificates with
    their status per host, and the claims of downloads in progress.
  - Runs where the registry lives, like M(directdownload.kvm.template). A registry file that does not exist yet
    reads as empty.
  - HTTP header values are masked unless O(reveal_secrets=true).
extends_documentation_fragment:
  - directdownload.kvm._attributes.info_module
  - directdownload.kvm._attributes
  - directdownload.kvm._registry
options:
  name:
    description:
      - Only this template (and its copies).
    type: str
  template_id:
    description:
      - Only the template with this id (and its copies, also when the template itself was unregistered).
    type: str
  host:
    description:
      - Only copies recorded for this host, and certificates with a status for this host.
    type: str
  pool:
    description:
      - Only copies on this pool.
    type: str
  alias:
    description:
      - Only the certificate with this alias.
    type: str
  reveal_secrets:
    description:
      - Return HTTP header values in clear text, for a deployment that passes them on to
        M(directdownload.kvm.download). Set C(no_log) on the task that uses this.
    type: bool
    default: false
seealso:
  - module: directdownload.kvm.template
  - module: directdownload.kvm.template_copy
"""

EXAMPLES = r"""
- name: Everything in the registry
  directdownload.kvm.template_info:
  register: registry

- name: The copies on kvm1
  directdownload.kvm.template_info:
    host: kvm1
  register: kvm1_copies

- name: One template with its header values, for a download task
  directdownload.kvm.template_info:
    name: debian-12
    reveal_secrets: true
  register: debian
  no_log: true
"""

RETURN = r"""
templates:
  description: The templates, sorted by name (header values masked unless O(reveal_secrets=true)).
  returned: always
  type: list
  elements: dict
  sample: [{id: 6f1c5b7e-0a43-4c9b-9d55-2a1c7e3f9b10, name: debian-12, format: qcow2, state: Ready,
            download_state: BYPASSED, status: Bypassed Secondary Storage, http_headers: {Authorization: "********"}}]
template:
  description: The template when O(name) or O(template_id) matched one, else absent.
  returned: when a template matched O(name) or O(template_id)
  type: dict
copies:
  description: The copies on pools, sorted by template id, pool and host.
  returned: always
  type: list
  elements: dict
certificates:
  description:
    - The certificates, sorted by alias, with C(hosts) holding the status per host (only the O(host) one when O(host)
      is given).
    - C(fingerprint) is the SHA-256 fingerprint, the key M(directdownload.kvm.certificate) and
      M(directdownload.kvm.certificate_info) return.
  returned: always
  type: list
  elements: dict
claims:
  description: Downloads in progress (claims taken by deployments).
  returned: always
  type: list
  elements: dict
exists:
  description: Whether the registry file exists.
  returned: always
  type: bool
registry:
  description: The path of the registry file.
  returned: always
  type: str
schema_version:
  description: The schema version of the registry document.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.directdownload.kvm.plugins.module_utils import _records
from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
from ansible_collections.directdownload.kvm.plugins.module_utils._module import failures


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **reg.registry_argument_spec(),
            name=dict(type="str"),
            template_id=dict(type="str"),
            host=dict(type="str"),
            pool=dict(type="str"),
            alias=dict(type="str"),
            reveal_secrets=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    registry = reg.Registry(params["registry"])
    with failures(module, registry=registry.path):
        result = _records.select(registry.read(), name=params["name"], template_id=params["template_id"],
                                 host=params["host"], pool=params["pool"], alias=params["alias"],
                                 reveal_secrets=params["reveal_secrets"])
        module.exit_json(changed=False, registry=registry.path, exists=registry.exists(), **result)


if __name__ == "__main__":
    main()
