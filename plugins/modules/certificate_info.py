#!/usr/bin/python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: certificate_info
short_description: List the CA certificates a KVM host trusts for direct download, with their expiry
version_added: 0.1.0
description:
  - Lists the certificates in the host's Java keystore (the CloudStack agent's C(cloud.jks) by default) and in the
    trust directory that M(directdownload.kvm.certificate) writes. For each one it returns the alias, subject,
    issuer, serial, validity, SHA-256 fingerprint and days until expiry, and flags expired and soon-to-expire ones.
  - Private key entries (the agent's own key) are listed by their certificate, marked as such. No secret is ever
    read or returned.
  - The RV(certificates) view has one line per alias. It says whether the alias is in the keystore and in the trust
    directory, and whether both hold the same certificate. Compare it with the registry
    (M(directdownload.kvm.template_info)) to find hosts that lost a certificate (drift).
  - The keystore is read with one C(keytool -list) call.
extends_documentation_fragment:
  - directdownload.kvm._attributes.info_module
  - directdownload.kvm._attributes
  - directdownload.kvm._keystore
requirements:
  - Python C(cryptography) on the KVM host.
  - C(keytool) from a Java runtime when O(include_keystore=true) and the keystore exists.
options:
  include_keystore:
    description:
      - List the keystore O(keystore). A missing keystore is reported with RV(keystore.exists=false).
    type: bool
    default: true
  trust_dir:
    description:
      - The trust directory to list (its C(*.pem) and C(*.crt) files).
      - Default from the agent settings file C(/etc/directdownload/agent.json), else C(/etc/directdownload/trust.d).
    type: path
  include_trust_dir:
    description:
      - List the trust directory.
    type: bool
    default: true
  aliases:
    description:
      - Only report these aliases (case-insensitive). Default is all.
    type: list
    elements: str
  expiry_warning_days:
    description:
      - A certificate with fewer days than this left is flagged RV(certificates[].expiring_soon).
    type: int
    default: 30
seealso:
  - module: directdownload.kvm.certificate
  - module: directdownload.kvm.template_info
"""

EXAMPLES = r"""
- name: List the certificates of the agent keystore and the trust directory
  directdownload.kvm.certificate_info:
  register: host_certs

- name: Warn about certificates that expire within 60 days
  directdownload.kvm.certificate_info:
    expiry_warning_days: 60
  register: host_certs

- name: Show them
  ansible.builtin.debug:
    msg: "{{ host_certs.expiring_soon + host_certs.expired }}"

- name: Is mirror-ca in both stores?
  directdownload.kvm.certificate_info:
    aliases: [mirror-ca]
  register: mirror_ca

- name: Fail when it is missing somewhere
  ansible.builtin.assert:
    that: mirror_ca.certificates | selectattr('in_sync') | list | length == 1
"""

RETURN = r"""
certificates:
  description: One line per alias found in either store, sorted by alias.
  returned: always
  type: list
  elements: dict
  contains:
    alias:
      description: The alias, in lower case.
      type: str
      sample: mirror-ca
    in_keystore:
      description: Whether the keystore has the alias.
      type: bool
    keystore_entry_type:
      description: V(trusted_certificate), V(private_key) or V(secret_key); V(null) when not in the keystore.
      type: str
    in_trust_dir:
      description: Whether the trust directory has C(<alias>.pem).
      type: bool
    in_sync:
      description:
        - Whether both stores hold the same certificate under the alias.
        - V(null) for a private or secret key entry, or when only one store was listed.
      type: bool
    subject:
      description: Subject (RFC 4514) of the certificate (the keystore's when both have it).
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
      sample: "2026-01-01T00:00:00Z"
    not_after:
      description: End of validity, UTC.
      type: str
      sample: "2031-01-01T00:00:00Z"
    fingerprint:
      description: SHA-256 fingerprint.
      type: str
    days_until_expiry:
      description: Whole days left (negative once expired).
      type: int
    expired:
      description: Whether it has expired.
      type: bool
    expiring_soon:
      description: Whether fewer than O(expiry_warning_days) days are left (and it has not expired).
      type: bool
keystore:
  description: The keystore listing.
  returned: when O(include_keystore=true)
  type: dict
  contains:
    path:
      description: The keystore path.
      type: str
    exists:
      description: Whether the keystore exists.
      type: bool
    type:
      description: C(JKS) or C(PKCS12), from the file's first bytes; V(null) when it does not exist.
      type: str
    entries:
      description:
        - Every entry, with RV(keystore.entries[].alias), RV(keystore.entries[].entry_type),
          C(chain_length) and the certificate details of RV(certificates) plus C(not_yet_valid) and C(is_ca).
        - For a private key entry, the details are those of the first certificate of its chain.
      type: list
      elements: dict
      contains:
        alias:
          description: The alias as the keystore lists it.
          type: str
        entry_type:
          description: V(trusted_certificate), V(private_key) or V(secret_key).
          type: str
trust_dir:
  description: The trust directory listing.
  returned: when O(include_trust_dir=true)
  type: dict
  contains:
    path:
      description: The directory.
      type: str
    exists:
      description: Whether it exists.
      type: bool
    certificates:
      description:
        - One entry per C(*.pem)/C(*.crt) file, with C(alias) (the file name without extension), C(path) and the
          certificate details, or C(error) when the file does not hold a certificate.
      type: list
      elements: dict
expired:
  description: Aliases whose certificate has expired.
  returned: always
  type: list
  elements: str
  sample: [old-mirror-ca]
expiring_soon:
  description: Aliases whose certificate expires within O(expiry_warning_days) days.
  returned: always
  type: list
  elements: str
  sample: [mirror-ca]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.directdownload.kvm.plugins.module_utils import _certs
from ansible_collections.directdownload.kvm.plugins.module_utils._module import failures
from ansible_collections.directdownload.kvm.plugins.module_utils._settings import load_settings, option_or_setting


def main():
    module = AnsibleModule(
        argument_spec=dict(
            include_keystore=dict(type="bool", default=True),
            trust_dir=dict(type="path"),
            include_trust_dir=dict(type="bool", default=True),
            aliases=dict(type="list", elements="str"),
            expiry_warning_days=dict(type="int", default=30),
            **_certs.keystore_argument_spec()
        ),
        supports_check_mode=True,
    )
    if not _certs.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=_certs.CRYPTOGRAPHY_IMP_ERR)
    params = module.params
    with failures(module):
        keystore = _certs.keystore_target(params, module.no_log_values) if params["include_keystore"] else None
        trust_dir = option_or_setting(params, "trust_dir", load_settings()) if params["include_trust_dir"] else None
        found = _certs.inventory(keystore, trust_dir, warning_days=params["expiry_warning_days"],
                                 aliases=params["aliases"])
        found["expired"] = [line["alias"] for line in found["certificates"] if line["expired"]]
        found["expiring_soon"] = [line["alias"] for line in found["certificates"] if line["expiring_soon"]]
        module.exit_json(changed=False, **found)


if __name__ == "__main__":
    main()
