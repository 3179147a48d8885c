# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""URL helpers shared by every source: redaction, scheme and metalink detection, file names."""

from __future__ import annotations

import posixpath
import re
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

SUPPORTED_SCHEMES = ("http", "https", "nfs")
METALINK_SUFFIXES = (".metalink", ".meta4")
METALINK_CONTENT_TYPES = ("application/metalink4+xml", "application/metalink+xml")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")


def redact_url(url):
    """Return ``url`` with any user:password part and query string values hidden.

    Query strings often carry signatures or tokens (pre-signed object store URLs), so their values go too.
    """
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    # nfs:// URLs carry no secrets in their query (only ?version=3|4 is accepted): keep it readable.
    if query and parts.scheme.lower() != "nfs":
        query = "&".join(
            (item.split("=", 1)[0] + "=***") if "=" in item else item for item in query.split("&")
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# Query string values shorter than this are not treated as secrets (``?version=4``); signatures and tokens are long.
MIN_SECRET_QUERY_VALUE = 8


def url_secret_values(url):
    """The parts of ``url`` that are secrets: the password of its user info, and long query string values
    (pre-signed URLs carry signatures there). Modules add them to ``no_log_values`` so that Ansible masks them
    everywhere, including the echoed module arguments."""
    secrets = set()
    if not isinstance(url, str):
        return secrets
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return secrets
    if password:
        secrets.update((password, unquote(password)))
    for _name, value in parse_qsl(parts.query, keep_blank_values=False):
        if len(value) >= MIN_SECRET_QUERY_VALUE:
            secrets.add(value)
    return secrets


def url_scheme(url):
    return urlsplit(url).scheme.lower()


def url_path_lower(url):
    """The lower-cased path of ``url``, without query string or fragment (what suffix rules look at)."""
    return urlsplit(url).path.lower()


def is_metalink_url(url, content_type=None):
    """A metalink is recognised by the path suffix or by the Content-Type the server sent."""
    if url_path_lower(url).endswith(METALINK_SUFFIXES):
        return True
    if content_type:
        return content_type.split(";", 1)[0].strip().lower() in METALINK_CONTENT_TYPES
    return False


def safe_file_name(name):
    """Return ``name`` if it is a plain file name that cannot escape a directory, else raise ValueError.

    Names from URLs and metalink documents are never used as paths: no separators, no ``..``, no drive letters,
    no leading dot (hidden names are ours: ``.name.part``).
    """
    if not name or not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError("unsafe file name %r: use letters, digits, '.', '_', '+', '-' and no leading dot" % (name,))
    return name


def file_name_from_url(url):
    """The last path segment of the URL (query string ignored), checked with :func:`safe_file_name`."""
    return safe_file_name(posixpath.basename(unquote(urlsplit(url).path)))


def strip_compression_suffix(name):
    """``disk.qcow2.gz`` -> ``disk.qcow2``: the name an extracted image is installed under."""
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name
