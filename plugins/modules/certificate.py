#!/usr/bin/python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: certificate
short_description: Import, replace or revoke a CA certificate in a KVM host's keystore and trust directory
version_added: 0.1.0
description:
  - Makes a KVM host trust (or stop trusting) a CA certificate for HTTPS image mirrors signed by a private CA, as
    Apache CloudStack's C(uploadTemplateDirectDownloadCertificate) and C(revokeTemplateDirectDownloadCertificate)
    do on the agent.
  - The certificate goes into two stores. The Java keystore O(keystore) (the CloudStack agent's C(cloud.jks) by
    default), changed with C(keytool), so the agent's own private key entry in it is kept. And the
    trust directory O(trust_dir), as C(<trust_dir>/<alias>.pem), which M(directdownload.kvm.download) and
    M(directdownload.kvm.url_check) trust by default.
  - The certificate is validated first, with the Python C(cryptography) library. It must parse (PEM, or a bare
    base64 body as CloudStack accepts, or DER from O(src)), hold exactly one certificate and no private key, and be
    valid now (an expired or not yet valid certificate is refused, with its dates).
  - With O(state=present) it must be able to sign certificates. A certificate whose basic constraints are absent
    or say C(CA:FALSE), or whose key usage lacks C(keyCertSign), is refused before anything is written, unless
    O(allow_non_ca=true).
  - The alias follows CloudStack's rules. It has 1 to 63 letters, digits and hyphens, does not start or end with
    a hyphen, is not C(cloud), and does not start with C(cloudca). Aliases are case-insensitive, as in Java
    keystores, and are stored in lower case.
  - Idempotent by alias and SHA-256 fingerprint, in each store. The same alias with another certificate replaces
    it (rotation). V(absent) removes the alias from both stores (revocation).
  - Unlike CloudStack, C(keytool)'s exit code and output are checked, and every import is confirmed by listing the
    keystore again. A failure fails the task, with C(keytool)'s message and no password in it. The keystore password
    is passed to C(keytool) in its environment (C(-storepass:env)), never on a command line.
  - C(keytool) only ever changes a copy of the keystore, made in a private directory next to it. The copy replaces
    the keystore (atomic rename, fsynced) only when a new listing shows every entry it held before, the agent's
    own C(cloud) key pair included. A failure, a crash or a kill at any moment leaves the keystore as it was, byte
    for byte. Owner, mode and extended attributes (SELinux label) are kept. A symbolic link at O(keystore) is
    written through.
extends_documentation_fragment:
  - directdownload.kvm._attributes
  - directdownload.kvm._keystore
attributes:
  check_mode:
    details:
      - Check mode lists the keystore (one C(keytool -list)) and reads the trust directory, and writes nothing.
  diff_mode:
    details:
      - Shows the SHA-256 fingerprint under the alias in each store before and after (V(null) when absent).
requirements:
  - Python C(cryptography) on the KVM host.
  - C(keytool) from a Java runtime (for example C(openjdk-17-jre-headless)) when O(manage_keystore=true).
options:
  alias:
    description:
      - The name of the certificate in both stores.
    type: str
    required: true
  content:
    description:
      - The certificate as PEM text, or its base64 body without the C(BEGIN)/C(END) lines.
      - One of O(content) and O(src) is required with O(state=present).
    type: str
  src:
    description:
      - A file on the KVM host with the certificate (PEM, base64 body or DER).
      - To send a file from the controller, use O(content) with C(lookup('file', ...)).
    type: path
  state:
    description:
      - V(present) imports the certificate, or replaces a different one under the same alias.
      - V(absent) removes the alias from both stores, whatever certificate it holds (as CloudStack revokes by alias).
        O(content) or O(src), when given, are only parsed and described in the result.
    type: str
    default: present
    choices: [present, absent]
  allow_non_ca:
    description:
      - Accept a certificate that cannot sign other certificates (not a CA), to trust exactly that certificate.
        Some private mirrors serve a self-signed server certificate and operators pin it. HTTPS verification
        treats every certificate in the trust directory as a trust anchor, so a pinned server certificate works.
      - The default refuses such a certificate, because uploading a mirror's leaf certificate by mistake, instead
        of its CA, breaks at the next renewal of that certificate.
    type: bool
    default: false
  keystore_type:
    description:
      - The keystore type. V(auto) detects the type of an existing keystore from its first bytes. For a new one,
        V(auto) picks C(JKS) for a C(.jks) file name, as CloudStack's C(cloud.jks), else C(PKCS12).
      - An existing keystore of another type than the one given fails the task. It is never converted.
    type: str
    default: auto
    choices: [auto, JKS, PKCS12]
  create_keystore:
    description:
      - Create O(keystore) when it does not exist. When false, a missing keystore fails the task with
        O(state=present).
    type: bool
    default: false
  manage_keystore:
    description:
      - Manage the keystore. Set to false on hosts without Java, where only the trust directory matters.
    type: bool
    default: true
  trust_dir:
    description:
      - The directory of trusted CA certificates, one C(<alias>.pem) file each, written atomically with mode 0644.
        It is created with mode 0755 when it is missing.
      - Default from the agent settings file C(/etc/directdownload/agent.json), else C(/etc/directdownload/trust.d),
        the directory that M(directdownload.kvm.download) trusts by default.
    type: path
  manage_trust_dir:
    description:
      - Manage the trust directory.
      - With O(manage_keystore=false) and O(manage_trust_dir=false) the module only validates the certificate and
        returns its details, without changing anything. The role C(directdownload.kvm.certificates) uses this to
        validate once on the controller.
    type: bool
    default: true
notes:
  - Restart the CloudStack agent (if one runs) for its Java code to see a changed C(cloud.jks). The
    M(directdownload.kvm.download) module reads the trust directory on every run.
  - An alias that holds a private key or secret key entry in the keystore is never touched; the task fails.
seealso:
  - module: directdownload.kvm.certificate_info
  - module: directdownload.kvm.certificate_registry
  - module: community.general.java_cert
"""

EXAMPLES = r"""
- name: Trust the mirror CA on a KVM host (agent keystore and trust directory)
  directdownload.kvm.certificate:
    alias: mirror-ca
    content: "{{ lookup('ansible.builtin.file', 'files/mirror-ca.pem') }}"

- name: Rotate it (same alias, new certificate), showing the fingerprints
  directdownload.kvm.certificate:
    alias: mirror-ca
    content: "{{ lookup('ansible.builtin.file', 'files/mirror-ca-2027.pem') }}"
  diff: true

- name: Trust a CA on a host without Java (trust directory only)
  directdownload.kvm.certificate:
    alias: mirror-ca
    src: /root/mirror-ca.pem
    manage_keystore: false

- name: Keep the certificate in a PKCS12 keystore of our own, created when missing
  directdownload.kvm.certificate:
    alias: mirror-ca
    src: /root/mirror-ca.pem
    keystore: /etc/directdownload/trust.p12
    keystore_password: "{{ vault_truststore_password }}"
    create_keystore: true

- name: Revoke it from both stores
  directdownload.kvm.certificate:
    alias: mirror-ca
    state: absent
"""

RETURN = r"""
alias:
  description: The alias, in lower case.
  returned: always
  type: str
  sample: mirror-ca
keystore:
  description:
    - What happened in the keystore. V(imported) (new alias), V(replaced) (another certificate was under the alias),
      V(unchanged), V(removed), V(absent) (nothing to remove), or V(skipped) (O(manage_keystore=false)).
    - In check mode, what would happen.
  returned: always
  type: str
  sample: imported
trust_dir:
  description: What happened in the trust directory, with the same words as RV(keystore).
  returned: always
  type: str
  sample: imported
keystore_path:
  description: The keystore managed.
  returned: when O(manage_keystore=true)
  type: str
  sample: /etc/cloudstack/agent/cloud.jks
trust_dir_path:
  description: The trust directory managed.
  returned: when O(manage_trust_dir=true)
  type: str
  sample: /etc/directdownload/trust.d
subject:
  description: The certificate subject (RFC 4514).
  returned: when O(state=present), or O(state=absent) with a certificate given
  type: str
  sample: CN=Mirror CA,O=Example
issuer:
  description: The certificate issuer (RFC 4514).
  returned: when O(state=present), or O(state=absent) with a certificate given
  type: str
  sample: CN=Mirror CA,O=Example
serial:
  description: The serial number in upper-case hex, as C(openssl x509 -serial) prints it.
  returned: when O(state=present), or O(state=absent) with a certificate given
  type: str
  sample: 72A1CBB28707865380CC6FF5195025AD1A993226
not_before:
  description: Start of the validity period, UTC.
  returned: when O(state=present), or O(state=absent) with a certificate given
  type: str
  sample: "2026-01-01T00:00:00Z"
not_after:
  description: End of the validity period, UTC.
  returned: when O(state=present), or O(state=absent) with a certificate given
  type: str
  sample: "2031-01-01T00:00:00Z"
fingerprint:
  description: SHA-256 fingerprint of the certificate, as C(keytool) and C(openssl x509 -fingerprint) print it.
  returned: when O(state=present), or O(state=absent) with a certificate given
  type: str
  sample: "16:7F:90:79:66:2B:14:A2:B4:53:D2:51:99:9D:61:4B:B2:56:A7:8C:F0:62:75:46:8F:00:94:E5:EC:C1:33:5B"
days_until_expiry:
  description: Whole days until the certificate expires.
  returned: when O(state=present), or O(state=absent) with a certificate given
  type: int
  sample: 1500
is_ca:
  description: Whether the certificate says it is a CA (basic constraints).
  returned: when O(state=present), or O(state=absent) with a certificate given
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.directdownload.kvm.plugins.module_utils import _certs
from ansible_collections.directdownload.kvm.plugins.module_utils._module import failures
from ansible_collections.directdownload.kvm.plugins.module_utils._settings import load_settings, option_or_setting

DESCRIPTION_KEYS = ("subject", "issuer", "serial", "not_before", "not_after", "fingerprint", "days_until_expiry", "is_ca")


def certificate_output(result, keystore, trust_dir, cert, diff):
    """The module result for what _certs.ensure_certificate did: the outcome in each store, their paths, the
    certificate's description and, with ``diff``, the fingerprints before and after."""
    output = {"changed": result["changed"], "alias": result["alias"], "keystore": result["keystore"],
              "trust_dir": result["trust_dir"]}
    if keystore is not None:
        output["keystore_path"] = keystore.path
    if trust_dir is not None:
        output["trust_dir_path"] = trust_dir
    if cert is not None:
        description = _certs.describe(cert)
        output.update({key: description[key] for key in DESCRIPTION_KEYS})
    if diff:
        output["diff"] = result["diff"]
    return output


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **_certs.certificate_source_argument_spec(),
            keystore_type=dict(type="str", default="auto", choices=["auto", "JKS", "PKCS12"]),
            create_keystore=dict(type="bool", default=False),
            manage_keystore=dict(type="bool", default=True),
            trust_dir=dict(type="path"),
            manage_trust_dir=dict(type="bool", default=True),
            allow_non_ca=dict(type="bool", default=False),
            **_certs.keystore_argument_spec()
        ),
        mutually_exclusive=[("content", "src")],
        required_if=[("state", "present", ("content", "src"), True)],
        supports_check_mode=True,
    )
    if not _certs.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=_certs.CRYPTOGRAPHY_IMP_ERR)
    params = module.params
    with failures(module, alias=params["alias"]):
        data = _certs.read_certificate_option(params)
        cert = _certs.load_certificate(data) if data is not None else None
        keystore = None
        if params["manage_keystore"]:
            keystore = _certs.keystore_target(params, module.no_log_values, params["keystore_type"],
                                              params["create_keystore"])
        trust_dir = option_or_setting(params, "trust_dir", load_settings()) if params["manage_trust_dir"] else None
        result = _certs.ensure_certificate(params["alias"], cert, params["state"], keystore=keystore,
                                           trust_dir=trust_dir, check_mode=module.check_mode,
                                           allow_non_ca=params["allow_non_ca"])
        module.exit_json(**certificate_output(result, keystore, trust_dir, cert, module._diff))


if __name__ == "__main__":
    main()
