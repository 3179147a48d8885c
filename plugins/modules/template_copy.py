#!/usr/bin/python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: template_copy
short_description: Record or remove the copy of a direct-download template on a host's storage pool
version_added: 0.1.0
description:
  - Keeps the registry's list of template copies on primary storage pools (CloudStack's C(template_spool_ref)). A
    copy is recorded after M(directdownload.kvm.download) installed the image; the C(deploy_template) playbook does
    both.
  - A copy on a host-local pool is identified by template, O(host) and O(pool). A copy on a shared pool
    (O(shared=true)) is identified by template and O(pool) only, whichever host downloaded it (recorded in
    C(host)), so every host of the cluster sees it.
  - O(state=claimed) and O(state=released) coordinate concurrent deployments. A claim marks a download of the
    template onto the pool in progress, so that a second deployment waits (retrying the claim) instead of
    downloading the same image again. CloudStack has no such lock for non-managed pools.
  - Runs where the registry lives, like M(directdownload.kvm.template).
author:
  - directdownload.kvm maintainers (@directdownload)
extends_documentation_fragment:
  - directdownload.kvm._attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports what would change without writing the registry. A claim in check mode reports what would happen
        and takes nothing.
  diff_mode:
    support: full
    details:
      - Shows the copy record before and after.
  idempotent:
    support: partial
    details:
      - V(present) and V(absent) are idempotent. V(claimed) takes a new claim each time there is none (use
        O(claim_token) to retry the same claim), and V(released) releases it once.
options:
  registry:
    description:
      - Path of the registry file on the host that runs the module.
    type: path
    default: ~/.local/state/directdownload/registry.json
  template:
    description:
      - The name of the template. One of O(template) and O(template_id) is required.
    type: str
  template_id:
    description:
      - The id of the template. With O(state=absent) an id whose template was unregistered still finds its copies.
    type: str
  host:
    description:
      - The KVM host (inventory name) whose pool holds the copy; for a shared pool, the host that downloaded it.
    type: str
    required: true
  pool:
    description:
      - The pool, a libvirt pool name or a pool directory, as the deployment names it. For a shared pool the name must
        be the same on every host.
    type: str
    required: true
  shared:
    description:
      - The pool is shared by the hosts of a cluster (NFS, shared mount point), so one copy serves them all.
    type: bool
    default: false
  state:
    description:
      - V(present) records the copy, V(absent) removes its record (the file is not touched).
      - V(claimed) claims the download of the template onto the pool; see RV(claim_status).
      - V(released) drops the claim with O(claim_token).
    type: str
    default: present
    choices: [present, absent, claimed, released]
  install_path:
    description:
      - The path of the image on the host. Required with O(state=present).
    type: str
  size:
    description:
      - The size of the installed file in bytes.
    type: int
  virtual_size:
    description:
      - The virtual disk size in bytes.
    type: int
  checksum:
    description:
      - The digest verified when the copy was downloaded, C({ALG}hex).
    type: str
  format:
    description:
      - The format of the installed image.
    type: str
    choices: [qcow2, raw, iso]
  claim_token:
    description:
      - With O(state=claimed), retry the claim held with this token (it is granted again). With O(state=present),
        release this claim at the same time as recording the copy. Required with O(state=released).
    type: str
  claim_ttl:
    description:
      - Seconds after which a claim counts as abandoned (its holder died) and can be taken over.
    type: int
    default: 10800
  holder:
    description:
      - Who holds the claim, for people reading the registry (for example the playbook run and the host).
    type: str
seealso:
  - module: directdownload.kvm.template
  - module: directdownload.kvm.template_info
  - module: directdownload.kvm.download
"""

EXAMPLES = r"""
- name: Record the copy that the download task installed on kvm1
  directdownload.kvm.template_copy:
    template: debian-12
    host: kvm1
    pool: /var/lib/libvirt/images
    install_path: "{{ dl.path }}"
    size: "{{ dl.size }}"
    virtual_size: "{{ dl.virtual_size }}"
    checksum: "{{ dl.checksum }}"
    format: "{{ dl.format }}"

# Waiting in a loop like this is for one host at a time: when several hosts of ONE play may claim the same pool,
# claim once per host and wait only after the downloads (see the deploy role's tasks/pool.yml), or the holder
# cannot reach its download while the others are still looping.
- name: Wait for and take the claim of a download onto a shared pool
  directdownload.kvm.template_copy:
    template: debian-12
    host: kvm1
    pool: nfs-primary
    shared: true
    state: claimed
  register: claim
  until: claim.claim_status != 'busy'
  retries: 360
  delay: 10

- name: Forget the copy on kvm2 (the file stays)
  directdownload.kvm.template_copy:
    template: debian-12
    host: kvm2
    pool: /var/lib/libvirt/images
    state: absent
"""

RETURN = r"""
template_copy:
  description:
    - The copy record (after the change; before it for O(state=absent); the recorded copy when RV(claim_status) is
      V(exists)). Absent when there is none.
  returned: when a copy is recorded or was removed
  type: dict
  sample:
    template_id: 6f1c5b7e-0a43-4c9b-9d55-2a1c7e3f9b10
    template_name: debian-12
    host: kvm1
    pool: /var/lib/libvirt/images
    shared: false
    install_path: /var/lib/libvirt/images/6f1c5b7e-0a43-4c9b-9d55-2a1c7e3f9b10
    size: 536870912
    virtual_size: 2147483648
    checksum: "{SHA-256}9f86...0a08"
    format: qcow2
    state: Ready
    download_state: DOWNLOADED
    downloaded_at: "2025-01-31T12:03:00Z"
claim_status:
  description:
    - With O(state=claimed) V(granted) (the caller downloads, then records the copy with the C(token) of RV(claim) as
      O(claim_token)), V(busy) (another deployment is downloading it; retry later) or V(exists) (a copy is already
      recorded; nothing to download).
  returned: when O(state=claimed)
  type: str
  sample: granted
claim:
  description: The claim taken, held by someone else, or released.
  returned: when O(state=claimed) or O(state=released)
  type: dict
  sample: {template_id: 6f1c..., pool: nfs-primary, host: kvm1, shared: true, token: 3b9f..., holder: kvm1,
           claimed_at: "2025-01-31T12:00:00Z", expires_at: "2025-01-31T15:00:00Z"}
template:
  description: The template of the copy, header values masked.
  returned: when the template is registered
  type: dict
registry:
  description: The path of the registry file.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import DirectDownloadError, InvalidInput


def find_template(doc, params, required=True):
    record = reg.get_template(doc, name=params["template"], template_id=params["template_id"])
    if record is None and required:
        wanted = params["template"] if params["template"] is not None else params["template_id"]
        raise InvalidInput("no template %s in the registry: register it first with directdownload.kvm.template" % wanted)
    return record


def copy_record(params, template):
    record = {
        "template_id": template["id"],
        "template_name": template["name"],
        "host": params["host"],
        "pool": params["pool"],
        "shared": params["shared"],
        "install_path": params["install_path"],
        "size": params["size"],
        "virtual_size": params["virtual_size"],
        "checksum": params["checksum"],
        "format": params["format"] or template.get("format"),
    }
    return record


def apply(doc, params):
    """Apply the requested state to ``doc``. Returns a result dict (without ``registry``)."""
    state = params["state"]
    template = find_template(doc, params, required=state != "absent" and state != "released")
    result = {"changed": False}
    if template is not None:
        result["template"] = reg.public_template(template)
    template_id = template["id"] if template is not None else params["template_id"]
    if state == "present":
        if not params["install_path"]:
            raise InvalidInput("state=present needs install_path: the path of the image on the host")
        before, after = reg.record_copy(doc, copy_record(params, template))
        if params["claim_token"]:
            reg.release_claim(doc, params["claim_token"])
        result.update(changed=before != after, template_copy=after, before=before)
    elif state == "absent":
        before = reg.remove_copy(doc, template_id, params["host"], params["pool"]) if template_id else None
        result.update(changed=before is not None, before=before)
        if before is not None:
            result["template_copy"] = before
    elif state == "claimed":
        status, record = reg.claim_copy(doc, template_id, params["host"], params["pool"], shared=params["shared"],
                                        holder=params["holder"], ttl=params["claim_ttl"], token=params["claim_token"])
        result.update(claim_status=status, changed=status == "granted" and record["token"] != params["claim_token"])
        if status == "exists":
            result["template_copy"] = record
        else:
            result["claim"] = record
    else:  # released
        if not params["claim_token"]:
            raise InvalidInput("state=released needs claim_token")
        released = reg.release_claim(doc, params["claim_token"])
        result.update(changed=released is not None, claim=released or {})
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            registry=dict(type="path", default=reg.DEFAULT_REGISTRY_PATH),
            template=dict(type="str"),
            template_id=dict(type="str"),
            host=dict(type="str", required=True),
            pool=dict(type="str", required=True),
            shared=dict(type="bool", default=False),
            state=dict(type="str", default="present", choices=["present", "absent", "claimed", "released"]),
            install_path=dict(type="str"),
            size=dict(type="int"),
            virtual_size=dict(type="int"),
            checksum=dict(type="str"),
            format=dict(type="str", choices=["qcow2", "raw", "iso"]),
            claim_token=dict(type="str", no_log=False),
            claim_ttl=dict(type="int", default=10800),
            holder=dict(type="str"),
        ),
        required_one_of=[("template", "template_id")],
        required_if=[("state", "present", ("install_path",)), ("state", "released", ("claim_token",))],
        supports_check_mode=True,
    )
    params = module.params
    registry = reg.Registry(params["registry"])
    try:
        if module.check_mode:
            result = apply(registry.read(), params)
        else:
            with registry.transaction() as doc:
                result = apply(doc, params)
    except DirectDownloadError as exc:
        module.fail_json(msg=exc.msg, registry=registry.path)
    except ValueError as exc:
        module.fail_json(msg=str(exc), registry=registry.path)
    before = result.pop("before", None)
    result["registry"] = registry.path
    if module._diff and params["state"] in ("present", "absent"):
        after = result.get("template_copy") if params["state"] == "present" else None
        result["diff"] = {"before": before or {}, "after": after or {}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
