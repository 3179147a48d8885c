# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Exceptions raised by the direct download engine.

Every error carries a message fit for an operator (no secrets: URLs are redacted by whoever raises) and a
``retryable`` flag that answers one question: could another attempt - another mirror, another host - succeed
where this one failed?  CloudStack calls this ``retryOnOtherHosts``; a checksum mismatch or an image refused by
policy is not retryable, a refused connection is.
"""

from __future__ import annotations

# Text longer than this, from an image or a server, is cut in messages (a backing-file name is at most 1023 bytes).
PRINTABLE_LIMIT = 1024


def printable(text, limit=None):
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

    retryable = True

    def __init__(self, msg, **details):
        msg = printable(msg)
        details = {key: _printable_value(value) for key, value in details.items()}
        super().__init__(msg)
        self.msg = msg
        self.details = details


def human_size(count):
    """``1536`` -> ``1.5 KiB``: sizes in messages."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return ("%d B" % count) if unit == "B" else ("%.1f %s" % (value, unit))
        value /= 1024
    return "%.1f TiB" % value


class InvalidInput(DirectDownloadError):
    """A bad option value (checksum form, URL scheme, alias ...). Never retryable."""

    retryable = False


class SourceError(DirectDownloadError):
    """The source could not deliver the bytes: connection refused, timeout, truncated body, TLS failure."""


class HTTPStatusError(SourceError):
    """The server answered with a status we cannot use."""

    def __init__(self, msg, status, **details):
        super().__init__(msg, status=status, **details)
        self.status = status


class ChecksumMismatch(DirectDownloadError):
    """The bytes do not match the expected digest. Another host would fetch the same bytes: not retryable."""

    retryable = False

    def __init__(self, msg, expected, actual, **details):
        super().__init__(msg, expected=expected, actual=actual, **details)
        self.expected = expected
        self.actual = actual


class ImageRejected(DirectDownloadError):
    """The image is refused by policy (backing file, wrong format, archive with several members)."""

    retryable = False


class NotEnoughSpace(DirectDownloadError):
    """The pool has not enough free space, or the disk filled up during the write."""
