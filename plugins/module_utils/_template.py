# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Registration of a direct-download template or ISO: input validation and the record the registry stores.

Pure functions, no I/O. CloudStack's registration rules (research §1.2) are kept where they are right and fixed
where users were hurt:

- hypervisor: KVM only; ``direct_download`` must be true (this collection does nothing else);
- URL scheme ``http``, ``https`` or ``nfs`` (CloudStack refuses ``nfs://`` although its agent has an NFS
  downloader; ``file://`` is refused here: a KVM host's local file is not a mirror);
- URL suffix per format on the lower-cased path, query string ignored: qcow2 ``.qcow2``/``.img``, raw
  ``.raw``/``.img``, iso ``.iso``, each image suffix optionally followed by ``.gz``/``.bz2``/``.xz``/``.zip``/``.zst``
  (not for ISOs: an ISO is never decompressed, so a compressed ISO could never be attached), and ``.metalink`` or
  ``.meta4`` for every format;
- checksum through :func:`_checksum.parse_checksum` (upper-case hex and ``sha256:`` spellings accepted);
- HTTP headers: valid names, values without line breaks, and none of the headers the engine sets itself;
- size: 0 or unknown is refused unless the caller allows it (CloudStack registers it and then never deploys it,
  #8037/#9860).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import parse_checksum
from ansible_collections.directdownload.kvm.plugins.module_utils._description import parse_mirrors
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
# The HTTP source's header rules, so that registration refuses exactly what a download would refuse.
from ansible_collections.directdownload.kvm.plugins.module_utils._http import _check_headers as check_headers
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import (
    COMPRESSION_SUFFIXES,
    METALINK_SUFFIXES,
    SUPPORTED_SCHEMES,
    redact_url,
)

FORMATS = ("qcow2", "raw", "iso")
TYPES = ("template", "iso")
HYPERVISORS = ("kvm",)

# What listTemplates shows for a direct-download template (template_store_ref of a bypassed registration).
STATE = "Ready"
DOWNLOAD_STATE = "BYPASSED"
STATUS = "Bypassed Secondary Storage"

IMAGE_SUFFIXES = {
    "qcow2": (".qcow2", ".img"),
    "raw": (".raw", ".img"),
    "iso": (".iso",),
}

# The fields that make a registration; changing one of them is a change of the template. Probe facts (size,
# virtual_size, checked_on, checked_at) are kept apart so that probing again from another host changes nothing.
CONTENT_FIELDS = ("name", "display_text", "url", "format", "type", "checksum", "hypervisor", "zone", "os_type",
                  "http_headers", "direct_download", "mirrors")
PROBE_FIELDS = ("size", "virtual_size", "checked_on", "checked_at")
# A change of these invalidates an earlier probe: the bytes (or the way to get them) may differ.
PROBED_BY = ("url", "format", "http_headers")

_CLOUDSTACK_HEADER_PREFIX = "HTTP_HEADER:"


def validate_name(name):
    text = (name or "").strip() if isinstance(name, str) else ""
    if not text:
        raise InvalidInput("a template needs a non-empty name")
    if len(text) > 255:
        raise InvalidInput("the template name is longer than 255 characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise InvalidInput("the template name contains control characters")
    return text


def validate_hypervisor(hypervisor, direct_download=True):
    if not direct_download:
        raise InvalidInput("only direct download templates are supported: direct_download must be true (this collection "
                           "registers templates that bypass secondary storage)")
    value = (hypervisor or "kvm").strip().lower()
    if value not in HYPERVISORS:
        raise InvalidInput("direct download is only allowed for KVM templates, got hypervisor %r" % hypervisor)
    return value


def validate_format_and_type(image_format, template_type=None):
    """Returns ``(format, type)``. An ISO is registered with type ``iso`` and format ``iso`` (registerIso); a disk
    image with type ``template``. ``type`` defaults from the format."""
    fmt = (image_format or "").strip().lower()
    if fmt not in FORMATS:
        raise InvalidInput("format must be one of %s, got %r" % (", ".join(FORMATS), image_format))
    kind = (template_type or ("iso" if fmt == "iso" else "template")).strip().lower()
    if kind not in TYPES:
        raise InvalidInput("type must be one of %s, got %r" % (", ".join(TYPES), template_type))
    if (kind == "iso") != (fmt == "iso"):
        raise InvalidInput("type %s does not go with format %s: an ISO has type iso and format iso, a disk image type "
                           "template and format qcow2 or raw" % (kind, fmt))
    return fmt, kind


def _suffix_of(path):
    """The image suffix of a lower-cased path, after removing one compression suffix: ``(image, compression)``."""
    compression = None
    for suffix in COMPRESSION_SUFFIXES:
        if path.endswith(suffix):
            compression = suffix
            path = path[: -len(suffix)]
            break
    for suffixes in IMAGE_SUFFIXES.values():
        for suffix in suffixes:
            if path.endswith(suffix):
                return suffix, compression
    return None, compression


def validate_url(url, image_format):
    """Check the scheme and the suffix of ``url`` for ``image_format``. Returns the URL unchanged.

    Messages show the URL redacted (credentials and query values hidden)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("a template needs a url")
    url = url.strip()
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:
        raise InvalidInput("the URL %s cannot be parsed: %s" % (shown, exc)) from exc
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise InvalidInput("unsupported scheme for url %s: use %s" % (shown, ", ".join(SUPPORTED_SCHEMES)),
                           url=shown)
    if not hostname:
        raise InvalidInput("the URL %s has no host" % shown, url=shown)
    if any(ch.isspace() for ch in url):
        raise InvalidInput("the URL %s contains white space: percent-encode it" % shown, url=shown)
    path = parts.path.lower()
    if path.endswith(METALINK_SUFFIXES):
        return url
    image_suffix, compression = _suffix_of(path)
    allowed = IMAGE_SUFFIXES[image_format]
    if image_suffix in allowed:
        if compression and image_format == "iso":
            raise InvalidInput(
                "the URL %s is a compressed ISO (%s): ISOs are never decompressed, so it could not be attached; give "
                "the URL of the .iso itself" % (shown, compression), url=shown)
        return url
    expected = ", ".join(allowed) + (" (optionally + %s)" % "/".join(COMPRESSION_SUFFIXES) if image_format != "iso" else "")
    expected += ", or a metalink (%s)" % "/".join(METALINK_SUFFIXES)
    if image_suffix is not None:
        raise InvalidInput("the URL %s is invalid for the format %s: its path ends in %s; a %s URL ends in %s"
                           % (shown, image_format, image_suffix + (compression or ""), image_format, expected),
                           url=shown)
    raise InvalidInput("please specify a valid %s URL: the path of %s ends in none of %s (the query string does not "
                       "count)" % (image_format, shown, expected), url=shown)


def validate_checksum(checksum, default_algorithm="md5"):
    """The canonical ``{ALG}hex`` form, or None for no checksum."""
    parsed = parse_checksum(checksum, default_algorithm)
    return parsed.cloudstack if parsed is not None else None


def validate_headers(headers):
    """Check and normalise the template's HTTP headers. CloudStack detail keys (``HTTP_HEADER:Authorization``)
    are accepted and stripped to the header name. The per-header rules (token names, no line breaks, none of the
    headers the engine sets, no ``Host``) are the HTTP source's own; registration adds: no name given twice.
    Messages name the header, never its value."""
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise InvalidInput("http_headers must be a dictionary of header name to value")
    clean = {}
    seen = {}
    for raw_name, value in headers.items():
        name = str(raw_name).strip()
        if name.upper().startswith(_CLOUDSTACK_HEADER_PREFIX):
            name = name[len(_CLOUDSTACK_HEADER_PREFIX):].strip()
        if name.lower() in seen:
            raise InvalidInput("the HTTP header %s is given twice (as %s and %s)" % (name, seen[name.lower()], name))
        seen[name.lower()] = name
        if isinstance(value, (dict, list)):
            raise InvalidInput("the value of the HTTP header %s must be a string" % name)
        clean[name] = value
    return check_headers(clean)


def validate_size(size, virtual_size, allow_unknown_size):
    """Sizes are non-negative integers or None. A template whose size is 0 or unknown is refused unless
    ``allow_unknown_size``. Returns ``(size, virtual_size)`` with 0 turned into None."""
    values = []
    for label, value in (("size", size), ("virtual_size", virtual_size)):
        if value is None:
            values.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput("%s must be an integer number of bytes, got %r" % (label, value))
        if value < 0:
            raise InvalidInput("%s must not be negative, got %d" % (label, value))
        values.append(value or None)
    size, virtual_size = values
    if not size and not virtual_size and not allow_unknown_size:
        raise InvalidInput(
            "the template size is 0 or unknown: CloudStack registers such a template and then never deploys it "
            "(#8037). Probe the URL with directdownload.kvm.url_check and pass its size (the register_template "
            "playbook does), or set allow_unknown_size: true")
    return size, virtual_size


def validate_mirrors(mirrors, image_format):
    """The ``mirrors`` of a template (further URLs of the same file, passed on to ``download``): each a URL or a dict
    with ``url``, optional ``priority`` and ``location``; stored as ``{url, priority, location}`` dicts, every URL
    checked as the template URL is."""
    stored = []
    for url, priority, location in parse_mirrors(mirrors):
        stored.append({"url": validate_url(url, image_format), "priority": priority, "location": location})
    return stored


def build_template(params, existing=None, now_stamp=None):
    """The record to store for the ``template`` module options ``params`` (validated here).

    ``existing`` is the stored record of that name, if any. Probe facts (size, virtual_size, checked_on,
    checked_at) are taken from ``existing`` when ``params`` has no size and nothing that a probe depends on
    (url, format, headers) changed, or when the sizes given equal the stored ones: re-running a registration
    that probes from another random host changes nothing. Raises InvalidInput.
    """
    name = validate_name(params.get("name"))
    validate_hypervisor(params.get("hypervisor"), params.get("direct_download", True))
    fmt, kind = validate_format_and_type(params.get("format"), params.get("type"))
    record = {
        "name": name,
        "display_text": params.get("display_text") or name,
        "url": validate_url(params.get("url"), fmt),
        "format": fmt,
        "type": kind,
        "checksum": validate_checksum(params.get("checksum"), params.get("checksum_algorithm") or "md5"),
        "hypervisor": "kvm",
        "zone": params.get("zone") or None,
        "os_type": params.get("os_type") or None,
        "http_headers": validate_headers(params.get("http_headers")),
        "direct_download": True,
        "state": STATE,
        "download_state": DOWNLOAD_STATE,
        "status": STATUS,
        "is_ready": True,
    }
    given_size, given_virtual = params.get("size"), params.get("virtual_size")
    same_source = existing is not None and all(existing.get(f) == record[f] for f in PROBED_BY)
    sizes_given = given_size is not None or given_virtual is not None
    reuse_probe = same_source and (
        not sizes_given or ((given_size or None) == existing.get("size") and (given_virtual or None)
                            == existing.get("virtual_size")))
    if reuse_probe:
        size, virtual_size = validate_size(existing.get("size"), existing.get("virtual_size"),
                                           params.get("allow_unknown_size", False))
        record.update({f: existing.get(f) for f in PROBE_FIELDS})
        record["size"], record["virtual_size"] = size, virtual_size
    else:
        size, virtual_size = validate_size(given_size, given_virtual, params.get("allow_unknown_size", False))
        record.update(size=size, virtual_size=virtual_size, checked_on=params.get("checked_on") or None,
                      checked_at=now_stamp if params.get("checked_on") else None)
    mirrors = validate_mirrors(params.get("mirrors"), fmt)
    if mirrors:  # only when given: records written before the field existed stay unchanged
        record["mirrors"] = mirrors
    if existing is not None:
        # Keep the stored id, creation time and any field written by a newer version of this collection.
        for key, value in existing.items():
            record.setdefault(key, value)
        if not mirrors:
            record.pop("mirrors", None)
    return record


def changed_fields(before, after):
    """Names of the fields that differ (timestamps ignored), sorted; for messages and diffs."""
    ignore = ("created_at", "updated_at")
    keys = set(before or {}) | set(after or {})
    return sorted(k for k in keys if k not in ignore and (before or {}).get(k) != (after or {}).get(k))
