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


class DirectDownloadError(Exception):
    """Base class. ``details`` holds structured context that modules pass to ``fail_json``."""

    retryable = True

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details


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
