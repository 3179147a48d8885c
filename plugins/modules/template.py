#!/usr/bin/python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: template
short_description: Register or unregister a direct-download template or ISO in the registry
version_added: 0.1.0
description:
  - Records a template or ISO that KVM hosts download straight from its URL into primary storage, as Apache
    CloudStack's C(registerTemplate) and C(registerIso) with C(directdownload=true) do. Nothing is downloaded here;
    M(directdownload.kvm.download) does that on each host, and M(directdownload.kvm.template_copy) records the copies.
  - The registry is a JSON file (see O(registry)) written under a lock with an atomic rename. Run this module where
    the registry lives, by default on the controller (C(delegate_to) a registry host for AWX job templates).
  - Inputs are validated as CloudStack does where it is right, and more helpfully where it is not; the URL scheme
    (C(http), C(https), C(nfs)), the URL suffix for the format, the checksum form and length, the HTTP headers, and
    the size. A size of 0 or unknown is refused unless O(allow_unknown_size=true) (CloudStack registers it and then
    never deploys it, issue 8037).
  - The stored template has an C(id) (a UUID that stays the same for the template's life), C(state=Ready),
    C(download_state=BYPASSED) and C(status=Bypassed Secondary Storage).
  - Registering the same name again with the same content changes nothing. Other content updates the template and
    shows what changed in diff mode. Probe facts (O(size), O(virtual_size), O(checked_on)) do not count as a change
    when they equal the stored ones, so probing again from another host changes nothing.
  - HTTP header values are stored in the registry file (mode 0600) because downloads need them, and are shown as
    C(********) in every result and diff.
extends_documentation_fragment:
  - directdownload.kvm._attributes
  - directdownload.kvm._registry
attributes:
  check_mode:
    details:
      - Validates every input and reports what would change without writing the registry.
  diff_mode:
    details:
      - Shows the template before and after, with header values masked and URL credentials redacted.
options:
  name:
    description:
      - The template name; the key of the template in the registry.
    type: str
    required: true
  state:
    description:
      - V(present) registers or updates the template, V(absent) unregisters it.
    type: str
    default: present
    choices: [present, absent]
  display_text:
    description:
      - A description shown with the template. Defaults to O(name).
    type: str
  url:
    description:
      - Where the image is. Schemes C(http), C(https) and C(nfs) (C(nfs://server/export/path/file)).
      - The lower-cased URL path, without its query string, must end in a suffix of the format, optionally followed
        by C(.gz), C(.bz2), C(.xz), C(.zip) or C(.zst) (not for ISOs). qcow2 C(.qcow2) or C(.img); raw C(.raw) or
        C(.img); iso C(.iso). A Metalink (C(.metalink) or C(.meta4)) is accepted for every format.
      - Required with O(state=present).
      - Stored as given in the registry (mode 0600). Never logged (journal, syslog); shown redacted in results.
    type: str
  mirrors:
    description:
      - Further URLs of the same file, recorded with the template and passed on to
        O(directdownload.kvm.download#module:mirrors) by the C(deploy) role (failover, and parallel ranges with
        more than one connection).
      - Each a URL or a dict with C(url), optional C(priority) and C(location); every URL is checked as O(url) is.
      - Stored in the registry (mode 0600). Never logged; shown redacted in results.
    type: list
    version_added: 0.2.0
    elements: raw
  format:
    description:
      - The image format, V(qcow2), V(raw) or V(iso), in any case (V(QCOW2) as CloudStack writes it is V(qcow2)).
        Stored in lower case. Required with O(state=present).
    type: str
  type:
    description:
      - V(template) for a disk image, V(iso) for an ISO (format V(iso)). Defaults from O(format).
    type: str
    choices: [template, iso]
  checksum:
    description:
      - The digest of the image as downloaded, C({SHA-256}hex) (CloudStack), C(sha256:hex) (Ansible) or bare hex
        (see O(checksum_algorithm)). Upper- or lower-case hex. Stored as C({ALG}hex).
      - Empty means that downloads are not verified.
    type: str
  checksum_algorithm:
    description:
      - The algorithm of a bare hex O(checksum). CloudStack reads a bare hex digest as MD5.
    type: str
    default: md5
    choices: [md5, sha1, sha224, sha256, sha384, sha512]
  direct_download:
    description:
      - Must be V(true). Templates that go through secondary storage are not managed by this collection; V(false)
        fails with a clear message.
    type: bool
    default: true
  hypervisor:
    description:
      - Only V(kvm) supports direct download. The case does not matter (V(KVM) is the same); stored as C(kvm).
    type: str
    default: kvm
  zone:
    description:
      - The zone the template belongs to, as free text (for example a CloudStack zone name). Not interpreted.
    type: str
  os_type:
    description:
      - The guest OS type, as free text. Not interpreted.
    type: str
  headers:
    description:
      - HTTP headers that hosts send when they probe and download the URL (CloudStack's C(HTTP_HEADER:<name>) template
        details; keys in that form are accepted and stripped to the header name). The same option as
        O(directdownload.kvm.download#module:headers).
      - Values are secrets. They are stored in the registry file and never shown.
      - The stored template keeps them under C(http_headers), the registry's field name.
    type: dict
    aliases: [http_headers]
  size:
    description:
      - The size of the image at the URL in bytes (C(Content-Length)), normally RV(directdownload.kvm.url_check#module:size)
        from a probe.
      - When omitted for an existing template whose URL, format and headers did not change, the stored size is kept.
    type: int
  virtual_size:
    description:
      - The virtual disk size in bytes (for a qcow2 image, from its header), normally
        RV(directdownload.kvm.url_check#module:virtual_size).
    type: int
  checked_on:
    description:
      - The host that probed the URL (recorded with the time of the probe).
    type: str
  allow_unknown_size:
    description:
      - Register even though neither O(size) nor O(virtual_size) is known and above 0.
    type: bool
    default: false
  remove_copies:
    description:
      - With O(state=absent), also remove the records of the template's copies on pools. The image files are not
        touched; the C(unregister_template) playbook deletes them first when asked to purge.
      - When false, copy records stay in the registry (listed by M(directdownload.kvm.template_info) with the
        template's id) so that a later purge still finds the files.
    type: bool
    default: false
seealso:
  - module: directdownload.kvm.url_check
  - module: directdownload.kvm.template_copy
  - module: directdownload.kvm.template_info
  - module: directdownload.kvm.download
"""

EXAMPLES = r"""
- name: Register a qcow2 template (size from an earlier url_check)
  directdownload.kvm.template:
    name: debian-12
    url: https://images.example.com/debian-12-genericcloud-amd64.qcow2
    format: qcow2
    checksum: "{SHA-512}{{ debian_sha512 }}"
    size: "{{ probe.size }}"
    virtual_size: "{{ probe.virtual_size }}"
    checked_on: "{{ probe_host }}"

- name: Register an ISO behind a token, keeping the registry on a registry host
  directdownload.kvm.template:
    registry: /srv/directdownload/registry.json
    name: alma-9-boot
    url: https://mirror.example.com/isos/AlmaLinux-9-boot.iso
    format: iso
    headers:
      Authorization: "Bearer {{ mirror_token }}"
    size: 1059061760
  delegate_to: registry.example.com

- name: Unregister a template and forget its copies
  directdownload.kvm.template:
    name: debian-12
    state: absent
    remove_copies: true
"""

RETURN = r"""
template:
  description:
    - The template as stored (after the change; before it for O(state=absent)), header values masked and URL
      credentials redacted. Absent when there was no such template to remove.
  returned: when the template exists or was removed
  type: dict
  sample:
    id: 6f1c5b7e-0a43-4c9b-9d55-2a1c7e3f9b10
    name: debian-12
    display_text: debian-12
    url: https://images.example.com/debian-12-genericcloud-amd64.qcow2
    format: qcow2
    type: template
    checksum: "{SHA-512}7c3f...e1"
    hypervisor: kvm
    zone: null
    os_type: null
    http_headers: {Authorization: "********"}
    size: 333185024
    virtual_size: 2147483648
    checked_on: kvm2
    checked_at: "2025-01-31T12:00:00Z"
    direct_download: true
    is_ready: true
    state: Ready
    download_state: BYPASSED
    status: Bypassed Secondary Storage
    created_at: "2025-01-31T12:00:01Z"
    updated_at: "2025-01-31T12:00:01Z"
changed_fields:
  description: The fields that changed (or would change in check mode).
  returned: always
  type: list
  elements: str
  sample: [size, url]
copies:
  description:
    - With O(state=absent), the copies of the template recorded in the registry (removed when
      O(remove_copies=true)).
  returned: when O(state=absent)
  type: list
  elements: dict
registry:
  description: The path of the registry file.
  returned: always
  type: str
  sample: /home/ops/.local/state/directdownload/registry.json
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import ALGORITHMS
from ansible_collections.directdownload.kvm.plugins.module_utils._module import failures
from ansible_collections.directdownload.kvm.plugins.module_utils._description import protect_mirrors
from ansible_collections.directdownload.kvm.plugins.module_utils._template import build_template, changed_fields
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import protect_url_options


def present(doc, params, stamp):
    """Compute and apply the registration on ``doc``. Returns (before, after)."""
    existing = reg.get_template(doc, name=params["name"])
    record = build_template(params, existing, stamp)
    return reg.upsert_template(doc, record)


def absent(doc, params):
    """Remove the template from ``doc``. Returns (before, copies)."""
    before = reg.get_template(doc, name=params["name"])
    if before is None:
        return None, []
    copies = reg.list_copies(doc, template_id=before["id"])
    if params["remove_copies"]:
        reg.remove_copies_of(doc, before["id"])
    reg.remove_template(doc, name=params["name"])
    return before, copies


def present_result(before, after, diff):
    """The result of state=present: changed fields, the template (masked) and, with ``diff``, its diff."""
    fields = changed_fields(before, after)
    result = {"changed": bool(fields), "changed_fields": fields, "template": reg.public_template(after)}
    if diff:
        result["diff"] = {"before": reg.public_template(before) or {},
                          "after": reg.public_template(after, before) if fields else reg.public_template(before)}
    return result


def absent_result(before, copies, diff):
    """The result of state=absent: the removed template (masked) and its copies."""
    result = {"changed": before is not None, "copies": copies, "changed_fields": [] if before is None else ["state"]}
    if before is not None:
        result["template"] = reg.public_template(before)
    if diff:
        result["diff"] = {"before": reg.public_template(before) or {}, "after": {}}
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            display_text=dict(type="str"),
            url=dict(type="str", no_log=True),  # never logged; secrets masked, see below
            format=dict(type="str"),  # any case: _template reads it through _formats.canonical_format
            type=dict(type="str", choices=["template", "iso"]),
            checksum=dict(type="str"),
            checksum_algorithm=dict(type="str", default="md5", choices=list(ALGORITHMS)),
            direct_download=dict(type="bool", default=True),
            hypervisor=dict(type="str", default="kvm"),
            zone=dict(type="str"),
            os_type=dict(type="str"),
            headers=dict(type="dict", no_log=True, aliases=["http_headers"]),
            mirrors=dict(type="list", elements="raw", no_log=True),  # secrets masked, see protect_mirrors
            size=dict(type="int"),
            virtual_size=dict(type="int"),
            checked_on=dict(type="str"),
            allow_unknown_size=dict(type="bool", default=False),
            remove_copies=dict(type="bool", default=False),
            **reg.registry_argument_spec()
        ),
        required_if=[("state", "present", ("url", "format"))],
        supports_check_mode=True,
    )
    # url is no_log (never in the host's log); in results only its password and signatures are masked.
    protect_url_options(module, ("url",))
    protect_mirrors(module)
    # The registry field keeps its name: _template reads http_headers.
    params = dict(module.params, http_headers=module.params["headers"])
    registry = reg.Registry(params["registry"])
    stamp = reg.timestamp()
    with failures(module, registry=registry.path):
        if params["state"] == "present":
            before, after = registry.apply(lambda doc: present(doc, params, stamp), module.check_mode)
            result = present_result(before, after, module._diff)
        else:
            before, copies = registry.apply(lambda doc: absent(doc, params), module.check_mode)
            result = absent_result(before, copies, module._diff)
        module.exit_json(registry=registry.path, **result)


if __name__ == "__main__":
    main()
