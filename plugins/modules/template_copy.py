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
  - O(state=claimed), O(state=finished) and O(state=released) coordinate concurrent deployments (the C(deploy)
    role uses them). A claim marks a download of the template onto the pool in progress, so that a second
    deployment waits instead of downloading the same image again. CloudStack has no such lock for non-managed
    pools.
  - O(state=claimed) decides, in one registry transaction, what the caller does (RV(action)) and takes the claim
    when it downloads. With O(wait_timeout), a claim of another run (another O(run_id)) is waited for inside this
    one task, polling every O(wait_delay) seconds, until that run recorded the copy or gave up (then the claim is
    taken) or its claim expired. A claim of the same O(run_id) (another host of the same play) is never waited
    for.
  - O(state=finished) takes the per-host results of the download task that tried the candidate hosts
    (O(attempts)) and records the copy from the attempt that succeeded, releasing the claim in the same write, or
    releases the claim when none succeeded. It returns the report row of the host and pool (RV(report)).
  - Runs where the registry lives, like M(directdownload.kvm.template).
extends_documentation_fragment:
  - directdownload.kvm._attributes
  - directdownload.kvm._registry
attributes:
  check_mode:
    details:
      - Reports what would change without writing the registry. A claim in check mode reports what would happen
        and takes nothing.
  diff_mode:
    details:
      - Shows the copy record before and after.
  idempotent:
    support: partial
    details:
      - V(present) and V(absent) are idempotent. V(claimed) takes a new claim each time there is none (use
        O(claim_token) to retry the same claim), and V(released) releases it once. V(finished) records a copy once.
options:
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
      - V(finished) records the copy from O(attempts) or releases the claim of O(acquired); see RV(report).
    type: str
    default: present
    choices: [present, absent, claimed, released, finished]
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
      - The format of the installed image, V(qcow2), V(raw) or V(iso), in any case (V(QCOW2) as CloudStack writes
        it is V(qcow2)). Default is the format of the template.
    type: str
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
  run_id:
    description:
      - With O(state=claimed), the deployment run the claim belongs to (stored in the claim as C(run_id)). A claim
        of the same run held by another host gives RV(action=same_run) and is never waited for.
    type: str
  wait_timeout:
    description:
      - With O(state=claimed), how many seconds to wait while another run holds the claim. V(0) does not wait.
      - When the time is up, RV(action) stays V(busy) and RV(timed_out) is true (the task does not fail).
      - Not in check mode, where nothing is claimed and nothing waits.
    type: int
    default: 0
  wait_delay:
    description:
      - Seconds between two looks at the registry while waiting.
    type: float
    default: 5
  acquired:
    description:
      - With O(state=finished), the result of the O(state=claimed) task (RV(action), RV(claim), RV(timed_out)).
    type: dict
  attempts:
    description:
      - With O(state=finished), the per-item results of the download loop over the candidate hosts (the
        C(results) of the registered loop task), in order. The host of each item is its loop variable.
      - Empty when no download was tried (another host of the run or another run downloaded it).
    type: list
    elements: dict
    default: []
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

- name: Claim the download onto a shared pool, waiting up to an hour for another run that holds it
  directdownload.kvm.template_copy:
    template: debian-12
    host: kvm1
    pool: nfs-primary
    shared: true
    state: claimed
    run_id: "{{ my_run_id }}"
    wait_timeout: 3600
    wait_delay: 5
  register: acquired

- name: Download on each candidate host in turn, until one succeeds or an error no other host can fix
  directdownload.kvm.download:
    url: https://mirror.example.com/debian-12.qcow2
    pool_path: /mnt/nfs-primary
    name: "{{ acquired.template.id }}"
  delegate_to: "{{ candidate }}"
  loop: [kvm1, kvm2, kvm3]
  loop_control:
    loop_var: candidate
    break_when:
      - dl is not failed and not (dl.unreachable | default(false)) or not (dl.retry_elsewhere | default(true))
  ignore_errors: true
  ignore_unreachable: true
  when: acquired.action in ['download', 'present']
  register: dl

- name: Record the copy from the attempt that succeeded, or release the claim
  directdownload.kvm.template_copy:
    template: debian-12
    host: kvm1
    pool: nfs-primary
    shared: true
    state: finished
    acquired: "{{ acquired }}"
    attempts: "{{ dl.results | default([]) }}"
  register: finished

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
action:
  description:
    - With O(state=claimed), what the caller does. V(present) a copy is recorded (RV(template_copy)); check that its
      file is still there. V(download) the caller holds the claim (RV(claim)); download, then O(state=finished).
      V(busy) another run holds the claim (after O(wait_timeout) when waiting). V(same_run) another host of the same
      O(run_id) holds it; look for its copy once that host finished.
  returned: when O(state=claimed)
  type: str
  sample: download
waited:
  description: Seconds spent waiting for another run's claim.
  returned: when O(state=claimed)
  type: float
  sample: 12.5
timed_out:
  description: The wait ended because O(wait_timeout) was reached while another run still held the claim.
  returned: when O(state=claimed)
  type: bool
  sample: false
report:
  description:
    - With O(state=finished), the report row of the host and pool.
    - C(status) is V(downloaded), V(present), V(would download) (check mode), V(failed) or V(unreachable) (every
      candidate host was unreachable); C(downloaded_on) the host that downloaded the copy or recorded it; C(bytes)
      the bytes moved; C(seconds); C(rate_mb_s) (MB/s, 10^6 bytes); C(resumed_from) the offset a resumed transfer
      started at; C(source) the URL that served the bytes; C(attempts) each candidate host tried with its
      C(outcome) (ok, failed, unreachable) and C(error); C(error) the summary when the pool could not be deployed.
  returned: when O(state=finished)
  type: dict
  sample: {host: kvm1, pool: nfs-primary, template: debian-12, status: downloaded, downloaded_on: kvm2,
           path: /mnt/nfs-primary/6f1c..., bytes: 536870912, seconds: 4.2, rate_mb_s: 127.8, resumed_from: 0,
           source: "https://mirror.example.com/debian-12.qcow2",
           attempts: [{host: kvm1, outcome: failed, error: "connection refused"}, {host: kvm2, outcome: ok,
                       error: null}], error: null}
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
  returned: when O(state=claimed), O(state=released) or O(state=finished)
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

from ansible_collections.directdownload.kvm.plugins.module_utils import _records
from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
from ansible_collections.directdownload.kvm.plugins.module_utils._formats import canonical_format
from ansible_collections.directdownload.kvm.plugins.module_utils._module import failures


def main():
    module = AnsibleModule(
        argument_spec=dict(
            template=dict(type="str"),
            template_id=dict(type="str"),
            host=dict(type="str", required=True),
            pool=dict(type="str", required=True),
            shared=dict(type="bool", default=False),
            state=dict(type="str", default="present", choices=list(_records.COPY_STATES)),
            install_path=dict(type="str"),
            size=dict(type="int"),
            virtual_size=dict(type="int"),
            checksum=dict(type="str"),
            format=dict(type="str"),
            claim_token=dict(type="str", no_log=False),
            claim_ttl=dict(type="int", default=reg.DEFAULT_CLAIM_TTL),
            holder=dict(type="str"),
            run_id=dict(type="str"),
            wait_timeout=dict(type="int", default=0),
            wait_delay=dict(type="float", default=5),
            acquired=dict(type="dict"),
            attempts=dict(type="list", elements="dict", default=[]),
            **reg.registry_argument_spec()
        ),
        required_one_of=[("template", "template_id")],
        required_if=[("state", "present", ("install_path",)), ("state", "released", ("claim_token",)),
                     ("state", "finished", ("acquired",))],
        supports_check_mode=True,
    )
    registry = reg.Registry(module.params["registry"])
    with failures(module, registry=registry.path):
        params = dict(module.params, format=canonical_format(module.params["format"]))
        if params["state"] == "claimed":
            result = _records.claim_waiting(registry, params, module.check_mode)
        else:
            check_mode = module.check_mode
            result = registry.apply(lambda doc: _records.copy_state(doc, params, check_mode), check_mode)
        if module._diff and params["state"] in ("present", "absent"):
            result["diff"] = _records.copy_diff(params["state"], result)
        result.pop("before", None)
        module.exit_json(registry=registry.path, **result)


if __name__ == "__main__":
    main()
