# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Pick the source for a URL: http(s), nfs, or a metalink document that lists mirrors of those."""

from __future__ import annotations

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._http import SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import read_bounded
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import is_metalink_url, redact_url, url_scheme


# The options of the modules that reach image URLs (download, url_check); documented by the doc fragment
# directdownload.kvm._transport.
TRANSPORT_ARGUMENT_SPEC = dict(
    headers=dict(type="dict", default={}, no_log=True),
    headers_on_redirect=dict(type="list", elements="str", default=[]),
    ca_path=dict(type="path"),
    trust_dir=dict(type="path"),
    validate_certs=dict(type="bool", default=True),
    client_cert=dict(type="path"),
    client_key=dict(type="path", no_log=False),
    connect_timeout=dict(type="float"),
    read_timeout=dict(type="float"),
    follow_redirects=dict(type="bool", default=True),
    use_proxy=dict(type="bool", default=True),
    # no_log: a proxy URL may carry credentials; modules call _urls.protect_url_options to mask only those.
    proxy=dict(type="str", no_log=True),
    nfs_transport=dict(type="str", default="auto", choices=["auto", "mount", "libnfs"]),
    metalink_name=dict(type="str"),
    metalink_locations=dict(type="list", elements="str", default=[]),
)

# HTTP credentials, named as ansible.builtin.get_url and uri name them (the url doc fragment).
TRANSPORT_ARGUMENT_SPEC.update(
    url_username=dict(type="str", aliases=["username"]),
    url_password=dict(type="str", no_log=True, aliases=["password"]),
    force_basic_auth=dict(type="bool", default=False),
)


def source_options_from_params(params, settings):
    """SourceOptions from the transport options of a module; agent settings fill what the user left out.
    ``use_proxy: false`` means "no proxy", even when the environment names one."""
    return SourceOptions.from_params(dict(params, proxy=params["proxy"] if params["use_proxy"] else ""), settings)


def read_small_file(url, request, limit):
    """The whole body of a small file (a checksum list) at an http(s) or nfs ``url``, read with the request's
    transport options. Raises InvalidInput when it is larger than ``limit`` bytes: it is held in memory."""
    source = open_plain_source(url, request)
    body = source.open(0)
    try:
        if body.size is not None and body.size > limit:
            raise InvalidInput("%s is %d bytes, more than the %d a checksum file may have"
                               % (redact_url(url), body.size, limit))
        return read_bounded(body, limit, lambda: InvalidInput(
            "%s has more than the %d bytes a checksum file may have" % (redact_url(url), limit)))
    finally:
        body.close()


def open_source(url, request):
    """Return a Source (see docs/architecture.md) for ``url`` with the request's transport options."""
    if is_metalink_url(url):
        from ansible_collections.directdownload.kvm.plugins.module_utils import _metalink  # pylint: disable=import-outside-toplevel
        return _metalink.open_metalink_source(url, request, open_source)
    return open_plain_source(url, request)


def open_plain_source(url, request):
    """The http(s) or nfs Source for ``url``, never a metalink (a metalink's mirrors and its own document are
    always read as plain files)."""
    scheme = url_scheme(url)
    if scheme in ("http", "https"):
        from ansible_collections.directdownload.kvm.plugins.module_utils import _http  # pylint: disable=import-outside-toplevel
        return _http.HttpSource(url, request.source_options)
    if scheme == "nfs":
        from ansible_collections.directdownload.kvm.plugins.module_utils import _nfs  # pylint: disable=import-outside-toplevel
        return _nfs.NfsSource(url, request.source_options, transport=request.nfs_transport)
    raise InvalidInput("unsupported URL scheme %r in %s" % (scheme, redact_url(url)))
