# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Pick the source for a URL: http(s), nfs, or several sources of one file (a Metalink document, converted into a
description, or a URL with ``mirrors``), resolved before any transfer starts."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from ansible_collections.directdownload.kvm.plugins.module_utils import _description, _transfer
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._http import SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import read_bounded
from ansible_collections.directdownload.kvm.plugins.module_utils._source import Source
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


def source_options_from_params(params: Mapping[str, Any], settings: Optional[Mapping[str, Any]]) -> SourceOptions:
    """SourceOptions from the transport options of a module; agent settings fill what the user left out.
    ``use_proxy: false`` means "no proxy", even when the environment names one."""
    return SourceOptions.from_params(dict(params, proxy=params["proxy"] if params["use_proxy"] else ""), settings)


def read_small_file(url: str, request: Any, limit: int) -> bytes:
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


def open_source(url: str, request: Any) -> Source:
    """Return a Source (see docs/architecture.md) for ``url`` with the request's transport options: a
    :class:`_transfer.MultiSource` for a Metalink URL or a URL with ``mirrors``, else the plain source."""
    if is_metalink_url(url):
        source = open_metalink_source(url, request)
        if getattr(request, "mirrors", ()):
            source.file.notes.append("ignored the mirrors option: the Metalink document lists the sources of the file")
        return source
    mirrors = getattr(request, "mirrors", ())
    if mirrors:
        description = _description.from_urls(url, getattr(request, "name", None) or url, mirrors,
                                             getattr(request, "metalink_locations", ()))
        return _transfer.MultiSource(description, mirror_source_factory(request, description),
                                     connections=getattr(request, "connections", 1))
    return open_plain_source(url, request)


def mirror_source_factory(request: Any, description: _description.FileDescription) -> Callable[[str], Source]:
    """``open_source(url)`` for the sources of a URL with ``mirrors``: each source with its own options. A fan-out
    peer (``peer: true``) gets ``SourceOptions.for_peer`` with the deployment's token and its own fingerprint (or
    the request's ``peer_source_options``); every other source the origin's options, never the token. A peer
    without a token or a fingerprint is refused (InvalidInput) before any connection."""
    options = {}
    for ref in description.sources:
        options[ref.url] = source_options_for(ref, request)

    def open_mirror(url):
        return open_plain_source(url, request, options.get(url))
    return open_mirror


def source_options_for(ref: _description.SourceRef, request: Any) -> Optional[SourceOptions]:
    """The SourceOptions of one source of a URL with ``mirrors`` (see :func:`mirror_source_factory`)."""
    own = getattr(request, "source_options", None)
    origin = getattr(request, "origin_source_options", None) or own
    if not ref.peer:
        # The URL itself keeps the request's options (a peer when url_is_peer); other mirrors the origin's.
        return own if ref.url == getattr(request, "url", None) else origin
    token = getattr(request, "peer_token", None)
    if not token:
        raise InvalidInput("the mirror %s is a peer: it needs peer_token" % ref.redacted)
    if ref.fingerprint:
        return SourceOptions.for_peer(origin, token, ref.fingerprint)
    shared = getattr(request, "peer_source_options", None)
    if shared is None:
        raise InvalidInput("the peer mirror %s needs a fingerprint (its own, or peer_fingerprint)" % ref.redacted)
    return shared


def plain_source_factory(request: Any) -> Callable[[str], Source]:
    """``open_source(url)`` for source and document URLs: the http/https or nfs Source with the request's options,
    never a metalink (a metalink inside a metalink is not followed)."""

    def open_plain(url):
        return open_plain_source(url, request)
    return open_plain


def open_metalink_source(url: str, request: Any, document: Optional[bytes] = None,
                         base_url: Optional[str] = None) -> _transfer.MultiSource:
    """Fetch and parse the Metalink document at ``url`` (or parse ``document``, bytes already read) with the
    request's ``metalink_name`` and ``metalink_locations``, convert it into a description and return the
    :class:`_transfer.MultiSource` over its mirrors (``connections`` of the request)."""
    # lxml costs ~30 ms to import: only a Metalink pays for it, never a plain download.
    from ansible_collections.directdownload.kvm.plugins.module_utils import _metalink  # pylint: disable=import-outside-toplevel
    open_plain = plain_source_factory(request)
    name = getattr(request, "metalink_name", None)
    locations = getattr(request, "metalink_locations", ()) or ()
    if document is None:
        metalink_file = _metalink.load_metalink(url, open_plain, name=name, location_preference=locations)
    else:
        # Relative <url> references resolve against the URL the document came from (RFC 3986 5.1.3).
        metalink_file = _metalink.parse_metalink(document, name=name, location_preference=locations,
                                                 base_url=base_url or url)
    description = _description.from_metalink(metalink_file, document_url=url)
    return _transfer.MultiSource(description, open_plain, connections=getattr(request, "connections", 1),
                                 document_url=url)


def open_metalink_answer(body: Any, url: str, request: Any, max_size: Optional[int] = None) -> _transfer.MultiSource:
    """A plain URL answered with a Metalink (``_urls.is_metalink_answer``): read the document from ``body``
    (bounded by ``max_size``, default the parser's 1 MiB), close it, and return the :class:`_transfer.MultiSource`
    over its mirrors."""
    from ansible_collections.directdownload.kvm.plugins.module_utils import _metalink  # pylint: disable=import-outside-toplevel
    if max_size is None:
        max_size = _metalink.DEFAULT_MAX_DOCUMENT_SIZE
    base_url = body.url or url
    try:
        document = _metalink.read_document(body, max_size)
    finally:
        body.close()
    return open_metalink_source(url, request, document=document, base_url=base_url)


def open_plain_source(url: str, request: Any, options: Optional[SourceOptions] = None) -> Source:
    """The http(s) or nfs Source for ``url``, never a metalink (a metalink's mirrors and its own document are
    always read as plain files). ``options``: SourceOptions other than the request's (a peer's)."""
    scheme = url_scheme(url)
    options = options if options is not None else request.source_options
    if scheme in ("http", "https"):
        from ansible_collections.directdownload.kvm.plugins.module_utils import _http  # pylint: disable=import-outside-toplevel
        return _http.HttpSource(url, options)
    if scheme == "nfs":
        from ansible_collections.directdownload.kvm.plugins.module_utils import _nfs  # pylint: disable=import-outside-toplevel
        return _nfs.NfsSource(url, options, transport=request.nfs_transport)
    raise InvalidInput("unsupported URL scheme %r in %s" % (scheme, redact_url(url)))
