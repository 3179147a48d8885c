#!/usr/bin/python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: certificate_registry
short_description: Record a direct-download CA certificate and its per-host status in the registry
version_added: 0.1.0
description:
  - Keeps the registry's view of CA certificates, as CloudStack's certificate table and its host map do. It runs on
    the registry host (the controller by default, or a host that tasks delegate to). It never touches a KVM host;
    M(directdownload.kvm.certificate) does that.
  - With O(content) or O(src), validates the certificate and records it under O(alias), with its subject, issuer,
    serial, validity and SHA-256 fingerprint. The checks are those of M(directdownload.kvm.certificate). The
    certificate parses, is one certificate, is valid now, can sign certificates (a CA; see O(allow_non_ca)), and
    the alias follows CloudStack's rules. Recording
    another certificate under an existing alias replaces it (rotation) and clears its per-host statuses, because the
    new certificate is on no host yet.
  - With O(host) and O(status), records the outcome on that host. V(UPLOADED) and V(REVOKED) are only recorded
    for the certificate the host confirmed, when O(fingerprint) is given. This is CloudStack's host map, but written
    only after a confirmed import (CloudStack wrote it even when the host failed).
  - V(absent) removes the certificate and all its host statuses from the registry.
  - With only O(alias), reads the record (RV(exists), RV(certificate)) and changes nothing.
extends_documentation_fragment:
  - directdownload.kvm._attributes
  - directdownload.kvm._registry
attributes:
  check_mode:
    details:
      - Reads the registry and reports what would change, without writing.
  diff_mode:
    details:
      - Shows the certificate record (without its PEM) and the host status before and after.
requirements:
  - Python C(cryptography) on the registry host when O(content) or O(src) is given.
options:
  alias:
    description:
      - The certificate alias, as given to M(directdownload.kvm.certificate). Stored in lower case.
    type: str
    required: true
  content:
    description:
      - The certificate as PEM text or its base64 body. Validated, then recorded.
    type: str
  src:
    description:
      - A file on the registry host with the certificate (PEM, base64 body or DER).
    type: path
  allow_non_ca:
    description:
      - Accept a certificate that cannot sign other certificates (basic constraints absent or C(CA:FALSE), or key
        usage without C(keyCertSign)), for example a mirror's self-signed server certificate to pin. As the option
        of the same name of M(directdownload.kvm.certificate).
    type: bool
    default: false
  state:
    description:
      - V(present) records the certificate and/or a host status. V(absent) removes the certificate record.
    type: str
    default: present
    choices: [present, absent]
  host:
    description:
      - The KVM host whose status to record (its inventory name). Requires O(status).
    type: str
  status:
    description:
      - The outcome on O(host). V(UPLOADED) after a confirmed import, V(FAILED) when the host failed,
        V(REVOKED) after removal, V(SKIPPED) when there was nothing to revoke.
    type: str
    choices: [UPLOADED, FAILED, REVOKED, SKIPPED]
  details:
    description:
      - A short text stored with the status, for example the error of a failed host. Default V(OK) for V(UPLOADED),
        V(REVOKED) and V(SKIPPED).
    type: str
  fingerprint:
    description:
      - The SHA-256 fingerprint the host reported (RV(directdownload.kvm.certificate#module:fingerprint)). When given,
        the status is recorded only if it is the fingerprint of the registry's certificate; otherwise the task fails
        (the certificate was rotated meanwhile).
    type: str
  hypervisor:
    description:
      - Recorded with the certificate, as CloudStack does. Only KVM is supported; the case does not matter (V(kvm)
        and V(KVM) are the same, as in M(directdownload.kvm.template)). Stored as C(KVM).
    type: str
    default: KVM
notes:
  - Several tasks may write the registry at the same time (one per KVM host, delegated to the registry host). Every
    write takes a lock and is atomic, so no status is lost.
seealso:
  - module: directdownload.kvm.certificate
  - module: directdownload.kvm.template_info
"""

EXAMPLES = r"""
- name: Record the mirror CA in the registry (validates it)
  directdownload.kvm.certificate_registry:
    alias: mirror-ca
    content: "{{ lookup('ansible.builtin.file', 'files/mirror-ca.pem') }}"
  delegate_to: localhost
  run_once: true

- name: Import it on every KVM host
  directdownload.kvm.certificate:
    alias: mirror-ca
    content: "{{ lookup('ansible.builtin.file', 'files/mirror-ca.pem') }}"
  register: imported
  ignore_errors: true

- name: Record each host's outcome
  directdownload.kvm.certificate_registry:
    alias: mirror-ca
    host: "{{ inventory_hostname }}"
    status: "{{ 'FAILED' if imported is failed else 'UPLOADED' }}"
    details: "{{ imported.msg | default('OK') }}"
    fingerprint: "{{ imported.fingerprint | default(omit) }}"
  delegate_to: localhost
"""

RETURN = r"""
certificate:
  description: The certificate record after the change (in check mode, as it would be), without its PEM.
  returned: when the certificate is in the registry
  type: dict
  contains:
    alias:
      description: The alias.
      type: str
    subject:
      description: Subject (RFC 4514).
      type: str
    issuer:
      description: Issuer (RFC 4514).
      type: str
    serial:
      description: Serial number, upper-case hex.
      type: str
    not_before:
      description: Start of validity, UTC.
      type: str
    not_after:
      description: End of validity, UTC.
      type: str
    validity:
      description: "CloudStack's form, C(From: [not_before] - To: [not_after])."
      type: str
    fingerprint:
      description: SHA-256 fingerprint, as RV(directdownload.kvm.certificate#module:fingerprint) shows it.
      type: str
    hypervisor:
      description: C(KVM).
      type: str
    hosts:
      description: Per-host status, keyed by host, each with C(status), C(details) and C(updated_at).
      type: dict
host_status:
  description: The status recorded for O(host).
  returned: when O(host) is given
  type: dict
  sample: {"status": "UPLOADED", "details": "OK", "updated_at": "2026-11-24T10:00:00Z"}
exists:
  description: Whether the registry holds the certificate (after the change).
  returned: always
  type: bool
  sample: true
registry:
  description: The registry file used.
  returned: always
  type: str
  sample: /root/.local/state/directdownload/registry.json
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.directdownload.kvm.plugins.module_utils import _certs
from ansible_collections.directdownload.kvm.plugins.module_utils import _records
from ansible_collections.directdownload.kvm.plugins.module_utils import _registry
from ansible_collections.directdownload.kvm.plugins.module_utils._module import failures


def certificate_result(params, registry_path, before, after, diff):
    """The module result for the (before, after) views of _records.certificate_state."""
    result = {"changed": before != after, "registry": registry_path, "exists": after is not None}
    if after is not None:
        result["certificate"] = after
        if params["host"] is not None:
            result["host_status"] = after.get("hosts", {}).get(params["host"])
    if diff:
        result["diff"] = {"before": before or {}, "after": after or {}}
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **_certs.certificate_source_argument_spec(),
            host=dict(type="str"),
            status=dict(type="str", choices=list(_registry.CERTIFICATE_HOST_STATUSES)),
            details=dict(type="str"),
            fingerprint=dict(type="str"),
            hypervisor=dict(type="str", default="KVM"),
            allow_non_ca=dict(type="bool", default=False),
            **_registry.registry_argument_spec()
        ),
        mutually_exclusive=[("content", "src")],
        required_together=[("host", "status")],
        supports_check_mode=True,
    )
    params = module.params
    if (params["content"] is not None or params["src"] is not None) and not _certs.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=_certs.CRYPTOGRAPHY_IMP_ERR)
    registry = _registry.Registry(params["registry"])
    with failures(module, alias=params["alias"], registry=registry.path):
        alias = _certs.canonical_alias(params["alias"])
        record = None
        if params["state"] == "present":
            record = _records.certificate_record(_certs.read_certificate_option(params), params["allow_non_ca"],
                                                 params["hypervisor"])
        dry_run = module.check_mode or not _records.certificate_writes(params, record)
        before, after = registry.apply(lambda doc: _records.certificate_state(doc, params, alias, record), dry_run)
        module.exit_json(**certificate_result(params, registry.path, before, after, module._diff))


if __name__ == "__main__":
    main()
