# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this doc fragment is PRIVATE to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!
"""How a module on the KVM host reaches an image URL: the options that ``download`` and ``url_check`` share.

With the ``action_group`` attribute of the ``transfer`` group. Their argument spec is
``_sources.TRANSPORT_ARGUMENT_SPEC``; keep both in step.
"""

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options:
  headers:
    description:
      - HTTP headers to send, as CloudStack's C(HTTP_HEADER:<name>) template details do. Values are secrets and never
        shown.
      - C(Host) cannot be given (it comes from the URL), nor the headers the download sets itself (C(Range),
        C(If-Range), C(Content-Length), C(Transfer-Encoding), C(Connection), C(TE), C(Upgrade), C(Expect)).
    type: dict
    default: {}
  headers_on_redirect:
    description:
      - The names of the O(headers) that may still be sent after a redirect to another origin (another scheme,
        host or port; the upgrade from C(http) to C(https) on the same host is not another origin), for example
        V([X-Mirror-Key]) for a mirror network that expects it.
      - By default no header of O(headers) reaches another origin, whatever its name. Credential headers
        (C(Authorization), C(Cookie), C(Proxy-Authorization), C(X-Auth-Token), C(Private-Token), C(X-Api-Key),
        C(Api-Key), C(X-Amz-Security-Token)) and the user name and password of the URL are never sent there, and
        cannot be named here.
    type: list
    elements: str
    default: []
  ca_path:
    description:
      - A PEM file, or a directory of PEM files, with CA certificates to trust in addition to the system CAs and
        O(trust_dir).
    type: path
  trust_dir:
    description:
      - The directory of CA certificates uploaded with M(directdownload.kvm.certificate). Trusted in addition to
        the system CAs.
      - Default from the agent settings file C(/etc/directdownload/agent.json), else C(/etc/directdownload/trust.d).
    type: path
  validate_certs:
    description:
      - Verify the server certificate and host name. Only turn this off for tests.
      - When false, M(directdownload.kvm.download) warns, and the installed image's record says so (its
        C(validate_certs) key is V(false)).
    type: bool
    default: true
  client_cert:
    description:
      - A PEM client certificate (with the key in it, or in O(client_key)) for servers that require one.
    type: path
  client_key:
    description:
      - The PEM private key of O(client_cert).
    type: path
  connect_timeout:
    description:
      - Seconds to wait for a connection. Default from the agent settings file, else 10.
    type: float
  read_timeout:
    description:
      - Seconds without receiving a byte before the transfer counts as stalled (an idle timeout, not a total one).
        Default from the agent settings file, else 60.
    type: float
  follow_redirects:
    description:
      - Follow HTTP redirects (at most 10). A redirect from https to http is always refused. After a redirect to
        another origin no header of O(headers) is sent, except those O(headers_on_redirect) names.
    type: bool
    default: true
  use_proxy:
    description:
      - Use the proxy from the environment (C(https_proxy), C(http_proxy), C(no_proxy)) or O(proxy).
    type: bool
    default: true
  proxy:
    description:
      - A proxy URL to use instead of the environment's, for example C(http://proxy.example.com:3128).
      - It may carry credentials (C(http://user:password@proxy:3128)). It is never logged on the host, and its
        password is masked in results (the echoed module arguments included).
    type: str
  nfs_transport:
    description:
      - How to read C(nfs://) URLs. V(mount) mounts the export read-only on a private temporary directory (root and a
        kernel NFS client needed); V(libnfs) reads in userspace with C(libnfs-utils); V(auto) picks C(mount) when it
        can, else C(libnfs).
    type: str
    default: auto
    choices: [auto, mount, libnfs]
  metalink_name:
    description:
      - Which C(<file>) of a Metalink document with several files to use.
    type: str
  metalink_locations:
    description:
      - Preferred mirror locations (ISO 3166-1 country codes as in the Metalink C(location) attribute), after
        priority.
    type: list
    elements: str
    default: []
  url_username:
    description:
      - The user name for HTTP Basic authentication, as in M(ansible.builtin.get_url). It wins over a user name in
        the URL.
      - Sent only to the host of the URL (and its https upgrade), never to another host after a redirect. The
        mirrors a Metalink lists count as URLs given, as for O(headers).
      - Also used to read a checksum file given to M(directdownload.kvm.download) as C(checksum=sha256:<URL>).
    type: str
    aliases: [username]
  url_password:
    description:
      - The password for HTTP Basic authentication. A secret, never shown.
    type: str
    aliases: [password]
  force_basic_auth:
    description:
      - Send the O(url_username) and O(url_password) credentials with the first request. When V(false) they are
        sent only after the server answers C(401 Unauthorized), as M(ansible.builtin.get_url) does; requests that
        follow to the same server send them at once.
      - An C(Authorization) header in O(headers) is sent as given and wins over these options.
    type: bool
    default: false
attributes:
  action_group:
    description:
      - Use C(group/directdownload.kvm.transfer) in C(module_defaults) to set defaults for this module and the other
        module that reaches image URLs (the transport options, for example O(headers), O(ca_path) or O(proxy)).
    support: full
    membership:
      - directdownload.kvm.transfer
"""
