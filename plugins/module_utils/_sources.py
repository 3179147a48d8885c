# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Pick the source for a URL: http(s), nfs, or a metalink document that lists mirrors of those."""

from __future__ import annotations

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import is_metalink_url, redact_url, url_scheme


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
