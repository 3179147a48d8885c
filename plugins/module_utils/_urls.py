# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""URL helpers shared by every source: redaction, scheme and metalink detection, file names."""

from __future__ import annotations

import posixpath
import re
from typing import Any, Iterable
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._formats import COMPRESSION_SUFFIXES

SUPPORTED_SCHEMES = ("http", "https", "nfs")
METALINK_SUFFIXES = (".metalink", ".meta4")
METALINK_CONTENT_TYPES = ("application/metalink4+xml", "application/metalink+xml")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")


def redact_url(url: str) -> str:
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


# Which query parameters are secrets (pre-signed object store URLs, tokens, API keys): a parameter whose name,
# compared case-insensitively, ends with one of these. That covers sig (Azure SAS, Swift temp_url_sig), Signature
# (CloudFront, AWS v2), X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, X-Goog-Signature,
# X-Goog-Credential, token, access_token, key, api_key, apikey, auth, oauth, password, secret, client_secret.
# Not secrets: Expires, X-Amz-Date, Key-Pair-Id, Policy, version, limit, ... (kept in url_id, never masked).
SECRET_QUERY_KEY_SUFFIXES = ("sig", "signature", "token", "secret", "password", "passwd", "pwd", "credential",
                             "credentials", "key", "apikey", "auth")
# Secret values shorter than this are not added to ``no_log_values`` (Ansible would mask every occurrence of them
# in every result string); plain numbers never are (results carry sizes: ``?limit=3221225472`` must not turn
# ``size`` into VALUE_SPECIFIED_IN_NO_LOG_PARAMETER). Shown URLs hide every query value anyway (redact_url).
MIN_SECRET_QUERY_VALUE = 6


def is_secret_query_key(name: str) -> bool:
    """True when the query parameter ``name`` carries a secret (see SECRET_QUERY_KEY_SUFFIXES)."""
    return unquote(name or "").strip().lower().endswith(SECRET_QUERY_KEY_SUFFIXES)


def url_secret_values(url: str) -> set:
    """The parts of ``url`` that are secrets: the password of its user info, and the values of secret query
    parameters (:func:`is_secret_query_key`), except short ones and plain numbers. Modules add them to
    ``no_log_values`` so that Ansible masks them in results, including the echoed module arguments."""
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
    if parts.scheme.lower() == "nfs":
        return secrets
    for item in parts.query.split("&"):
        name, sep, raw = item.partition("=")
        if not sep or not is_secret_query_key(name):
            continue
        for value in (raw, unquote(raw.replace("+", " "))):
            if len(value) >= MIN_SECRET_QUERY_VALUE and not value.isdigit():
                secrets.add(value)
    return secrets


def url_without_secrets(url: str) -> str:
    """``url`` without its secrets: the password of the user info and the values of secret query parameters are
    removed, everything else is kept byte for byte (so two URLs naming different files stay different). The
    identity of a download (``url_id``) is taken from this: a rotated password or a fresh signature names the
    same image, and nothing a world-readable record holds can be brute-forced back into a credential."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except (ValueError, TypeError):
        return url
    netloc = parts.netloc
    if password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = userinfo.split(":", 1)[0] + "@" + host
    query = parts.query
    if query and parts.scheme.lower() != "nfs":
        query = "&".join(item.partition("=")[0] + "=" if "=" in item and is_secret_query_key(item.partition("=")[0])
                         else item for item in query.split("&"))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def protect_url_options(module: Any, names: Iterable[str]) -> None:
    """For URL options declared ``no_log=True`` (so that Ansible never logs them to syslog/journal when it logs
    the module invocation): Ansible would also mask the whole URL in every result, a result ``url`` equal to it
    included. Swap the whole URL in ``module.no_log_values`` for its secret parts only (password, signatures)."""
    for name in names:
        value = module.params.get(name)
        if not value:
            continue
        module.no_log_values.discard(value)
        module.no_log_values.update(url_secret_values(value))


def split_url(url: str, message: str = "the URL %s cannot be parsed: %s", check_port: bool = False) -> SplitResult:
    """``urlsplit(url)`` for a URL given by the user: its host (and its port when ``check_port``: a malformed one
    raises only when read) checked, or InvalidInput with ``message % (redacted URL, reason)``."""
    try:
        parts = urlsplit(url)
        parts.hostname  # pylint: disable=pointless-statement
        if check_port:
            parts.port  # pylint: disable=pointless-statement
    except ValueError as exc:
        raise InvalidInput(message % (redact_url(url), exc)) from exc
    return parts


def url_scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def url_path_lower(url: str) -> str:
    """The lower-cased path of ``url``, without query string or fragment (what suffix rules look at)."""
    return urlsplit(url).path.lower()


def is_metalink_url(url: str, content_type: str | None = None) -> bool:
    """A metalink is recognised by the path suffix or by the Content-Type the server sent."""
    if url_path_lower(url).endswith(METALINK_SUFFIXES):
        return True
    if content_type:
        return content_type.split(";", 1)[0].strip().lower() in METALINK_CONTENT_TYPES
    return False


def is_metalink_answer(final_url: str, content_type: str | None) -> bool:
    """Is this answer a metalink document? The one decision ``download`` and ``url_check`` share, made on the
    answer: the FINAL URL (after redirects: ``/latest`` -> ``image.meta4`` served as application/octet-stream, as
    nginx does by default, is a metalink) and the Content-Type it came with."""
    return is_metalink_url(final_url, content_type)


def safe_file_name(name: str) -> str:
    """Return ``name`` if it is a plain file name that cannot escape a directory, else raise InvalidInput.

    Names from URLs and metalink documents are never used as paths: no separators, no ``..``, no drive letters,
    no leading dot (hidden names are ours: ``.name.part``).
    """
    if not name or not _SAFE_NAME.match(name) or ".." in name:
        raise InvalidInput("unsafe file name %r: use letters, digits, '.', '_', '+', '-' and no leading dot" % (name,))
    return name


def file_name_from_url(url: str) -> str:
    """The last path segment of the URL (query string ignored), checked with :func:`safe_file_name`."""
    return safe_file_name(posixpath.basename(unquote(urlsplit(url).path)))


def strip_compression_suffix(name: str) -> str:
    """``disk.qcow2.gz`` -> ``disk.qcow2``: the name an extracted image is installed under."""
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name
