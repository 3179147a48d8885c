# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Exceptions raised by the direct download engine.

Every error carries a message fit for an operator (no secrets: URLs are redacted by whoever raises) and its
retry scope, two booleans that the error class sets (an instance may narrow them):

* ``retry_here``: could another attempt on this host, a little later, succeed? (a 503, a timeout: yes; a 404, a
  TLS verification failure, a checksum mismatch: no). ``_retry.classify`` reads it.
* ``retry_elsewhere``: could another host or mirror succeed? CloudStack calls this ``retryOnOtherHosts``. A TLS
  verification failure is retryable elsewhere (that host may hold the uploaded CA) though not here; a checksum
  mismatch or an image refused by policy is retryable nowhere (every host fetches the same bytes).

Whoever raises an error that does not fit its class default says so with ``retry_scope(here, elsewhere)``; there
is no single "retryable" flag, because "not here" and "nowhere" are different answers.
Modules turn these errors into ``fail_json`` in one place, ``_module.failures``.
"""

from __future__ import annotations

# Text longer than this, from an image or a server, is cut in messages (a backing-file name is at most 1023 bytes).
PRINTABLE_LIMIT = 1024


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every non-printable character escaped (``\\n``, ``\\x1b``, ``\\u2028``, ...), so that bytes
    from an image header or a server answer cannot forge lines or terminal sequences in a message; cut to
    ``limit`` characters when given. Printable text, spaces included, is returned unchanged."""
    if not isinstance(text, str):
        return text
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def _printable_value(value, depth=0):
    if isinstance(value, str):
        return printable(value)
    if depth < 3 and isinstance(value, (list, tuple)):
        return type(value)(_printable_value(item, depth + 1) for item in value)
    if depth < 3 and isinstance(value, dict):
        return {key: _printable_value(item, depth + 1) for key, item in value.items()}
    return value


class DirectDownloadError(Exception):
    """Base class. ``details`` holds structured context that modules pass to ``fail_json``.

    The message and the text in ``details`` are escaped by :func:`printable` here, once for every error: they often
    carry text from images and servers (a backing-file name, an HTTP reason, qemu-img's stderr).
    """

    retry_here = True
    retry_elsewhere = True

    def __init__(self, msg: str, **details) -> None:
        msg = printable(msg)
        details = {key: _printable_value(value) for key, value in details.items()}
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def retry_scope(self, here: bool, elsewhere: bool) -> "DirectDownloadError":
        """Set this error's retry scope (where the class default does not fit); returns the error, to raise it."""
        self.retry_here = bool(here)
        self.retry_elsewhere = bool(elsewhere)
        return self


def human_size(count: int) -> str:
    """``1536`` -> ``1.5 KiB``: sizes in messages."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return ("%d B" % count) if unit == "B" else ("%.1f %s" % (value, unit))
        value /= 1024
    return "%.1f TiB" % value


class InvalidInput(DirectDownloadError):
    """A bad option value (checksum form, URL scheme, alias, file name, agent settings file ...). Retryable nowhere."""

    retry_here = False
    retry_elsewhere = False


class SourceError(DirectDownloadError):
    """The source could not deliver the bytes: connection refused, timeout, truncated body, TLS failure."""


class TLSVerificationError(SourceError):
    """The server's certificate was not trusted, or its name did not match: asking this host again gives the same
    answer, another host may trust the CA (it may hold the certificate that ``certificate`` uploaded)."""

    retry_here = False
    retry_elsewhere = True


class HTTPStatusError(SourceError):
    """The server answered with a status we cannot use."""

    def __init__(self, msg: str, status: int, **details) -> None:
        super().__init__(msg, status=status, **details)
        self.status = status


class ChecksumMismatch(DirectDownloadError):
    """The bytes do not match the expected digest. Another host would fetch the same bytes: retryable nowhere
    (the engine has its own budget for it, ``mismatch_retries``)."""

    retry_here = False
    retry_elsewhere = False

    def __init__(self, msg: str, expected: str, actual: str, **details) -> None:
        super().__init__(msg, expected=expected, actual=actual, **details)
        self.expected = expected
        self.actual = actual


class ImageRejected(DirectDownloadError):
    """The image is refused by policy (backing file, wrong format, archive with several members)."""

    retry_here = False
    retry_elsewhere = False


class NotEnoughSpace(DirectDownloadError):
    """The pool has not enough free space, or the disk filled up during the write."""
