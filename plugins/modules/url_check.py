#!/usr/bin/python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: url_check
short_description: Probe a template URL from a KVM host, as the host sees it
version_added: 0.1.0
description:
  - Checks that a KVM host can reach a template or ISO URL and reports its size, virtual size and format, as Apache
    CloudStack's C(CheckUrlCommand) does at registration. The C(register_template) playbook runs it on up to three
    KVM hosts until one reaches the URL.
  - Sends a C(HEAD) request (a one-byte ranged C(GET) where C(HEAD) is refused) with the template's headers,
    follows redirects by the same policy as M(directdownload.kvm.download), and verifies TLS with the host's trust
    (system CAs, O(ca_path) and the trust directory that M(directdownload.kvm.certificate) fills).
  - Then reads the first KiBs of the image with a ranged C(GET) to detect its format by content and, for qcow2, read
    the virtual size from its header (bytes 24 to 31, after checking the C(QFI\xfb) magic). A compressed image
    (gzip, bzip2, xz, zip, zstd; detected by content) is decompressed from those first KiBs only, and never to more
    than 4 KiB of output (a head of a few KiB can expand to gigabytes), so the probe costs the KVM host a few MiB of
    memory whatever the URL serves.
  - The format is read by the same signatures as the safety gate of M(directdownload.kvm.download); RV(notes) says
    when the image would be refused there (a foreign format, two formats at once, a qcow2 backing file, a virtual
    size above the default cap).
  - A Metalink URL (C(.metalink), C(.meta4), or a Metalink content type) is parsed and its mirrors probed in order;
    the sizes come from the image a mirror serves, never from the XML.
  - An unreachable URL is not a failure. RV(reachable) is V(false) and RV(error) says why, so that a playbook can
    try another host. Set O(fail_on_unreachable=true) to fail instead.
extends_documentation_fragment:
  - directdownload.kvm._attributes.info_module
  - directdownload.kvm._attributes
  - directdownload.kvm._transport
requirements:
  - Python C(lxml) on the KVM host for Metalink URLs.
  - Python C(zstandard) to read the header of a zstd-compressed image (optional).
options:
  url:
    description:
      - The URL to probe. Schemes C(http), C(https) and C(nfs), or a Metalink.
      - Credentials in the URL are never shown. The URL is never logged on the host (journal, syslog); in results
        its password and the values of its secret query parameters (signatures, tokens, keys) are masked.
    type: str
    required: true
  format:
    description:
      - The format the template is registered with, V(qcow2), V(raw) or V(iso), in any case (V(QCOW2) as CloudStack
        writes it is V(qcow2)). When given, RV(format_matches) tells whether the image is one.
    type: str
  read_header:
    description:
      - Read the first KiBs of the image to detect its format and virtual size. When false only C(HEAD) is sent.
    type: bool
    default: true
  fail_on_unreachable:
    description:
      - Fail the task when the URL cannot be reached, instead of returning RV(reachable=false).
    type: bool
    default: false
seealso:
  - module: directdownload.kvm.template
  - module: directdownload.kvm.download
"""

EXAMPLES = r"""
- name: Probe the URL from kvm2 with the template's headers
  directdownload.kvm.url_check:
    url: https://images.example.com/debian-12.qcow2.xz
    format: qcow2
    headers:
      Authorization: "Bearer {{ image_token }}"
  delegate_to: kvm2
  register: probe

- name: Give up at once when the host cannot reach it
  directdownload.kvm.url_check:
    url: https://images.example.com/alma-9.iso
    format: iso
    fail_on_unreachable: true
"""

RETURN = r"""
reachable:
  description:
    - Whether the host reached the URL (for a Metalink, one of its mirrors).
  returned: always
  type: bool
  sample: true
error:
  description: Why the URL could not be reached (credentials and query values redacted); null when it was.
  returned: always
  type: str
  sample: "connection refused by mirror.example.com:443 (https://mirror.example.com/debian-12.qcow2)"
status:
  description: The HTTP status of the probe (null for C(nfs://) URLs, which have none).
  returned: always
  type: int
  sample: 200
size:
  description: The size of the resource in bytes (C(Content-Length), or the total of a ranged answer); null when the
    server does not say.
  returned: always
  type: int
  sample: 333185024
virtual_size:
  description:
    - The virtual disk size in bytes, from the qcow2 header (also when the image is compressed); for an uncompressed
      raw image or an ISO, its size. Null when unknown.
  returned: always
  type: int
  sample: 2147483648
format_detected:
  description:
    - What the first bytes show, V(qcow2), V(iso), V(raw), a foreign format (V(vmdk), V(vhdx), V(vpc), V(qed),
      V(luks), V(vdi), V(parallels), V(bochs), V(cloop), V(qcow)) or V(html) (an error page served as the image).
      Null when the header was not read.
  returned: always
  type: str
  sample: qcow2
format_matches:
  description: Whether the detected format is O(format); null when either is unknown.
  returned: when the URL was reached
  type: bool
  sample: true
compression:
  description: The compression of the image, detected by content (V(gzip), V(bzip2), V(xz), V(zip), V(zstd)), or
    null.
  returned: when the URL was reached
  type: str
  sample: xz
final_url:
  description: The URL that answered after redirects (credentials and query values redacted).
  returned: always
  type: str
  sample: https://cdn.example.com/debian-12.qcow2
content_type:
  description: The C(Content-Type) of the answer.
  returned: when the URL was reached
  type: str
accept_ranges:
  description: Whether the server serves byte ranges (downloads can resume).
  returned: when the URL was reached
  type: bool
url:
  description: The URL probed, redacted.
  returned: always
  type: str
mirror:
  description: For a Metalink, the mirror that answered.
  returned: when O(url) is a Metalink and a mirror answered
  type: str
mirror_errors:
  description: For a Metalink, the mirrors that failed before one answered, with their errors.
  returned: when O(url) is a Metalink
  type: list
  elements: dict
metalink:
  description: For a Metalink, what the document says (file name, declared size, hashes, mirrors, notes).
  returned: when O(url) is a Metalink that could be parsed
  type: dict
notes:
  description: Things the operator should know (header not readable, HTML page served, what the download's
    safety gate would refuse, ...).
  returned: when the URL was reached
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.directdownload.kvm.plugins.module_utils import _probe
from ansible_collections.directdownload.kvm.plugins.module_utils._formats import canonical_format
from ansible_collections.directdownload.kvm.plugins.module_utils._module import failures
from ansible_collections.directdownload.kvm.plugins.module_utils._settings import load_settings
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import (
    TRANSPORT_ARGUMENT_SPEC,
    open_plain_source,
    source_options_from_params,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import protect_url_options, redact_url


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True, no_log=True),  # never logged; secrets masked, see below
            format=dict(type="str"),  # any case: _formats.canonical_format
            read_header=dict(type="bool", default=True),
            fail_on_unreachable=dict(type="bool", default=False),
            **TRANSPORT_ARGUMENT_SPEC
        ),
        supports_check_mode=True,
    )
    params = module.params
    # url and proxy are no_log (never in the host's log); in results only their passwords and signatures are masked.
    protect_url_options(module, ("url", "proxy"))
    with failures(module, url=redact_url(params["url"]), reachable=False):
        settings = load_settings()
        options = source_options_from_params(params, settings)
        request = _probe.PlainSourceOptions(options, params["nfs_transport"])

        def open_plain(url):
            return open_plain_source(url, request)

        result = _probe.probe_url(params["url"], open_plain, image_format=canonical_format(params["format"]),
                                  read_header=params["read_header"], metalink_name=params["metalink_name"],
                                  locations=params["metalink_locations"])
        result.pop("retry_elsewhere", None)  # a probe that could not reach the URL is a result, not a failure
        if params["fail_on_unreachable"] and not result["reachable"]:
            module.fail_json(msg="cannot reach %s: %s" % (redact_url(params["url"]), result["error"]), **result)
        module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
