# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The image formats the collection installs and the one place where a ``format`` value is read; the compression
names, suffixes and magic numbers; the signatures of the formats. One table each, used by probing (``_probe``),
installing (``_install``) and the safety gate (``_gate``).

CloudStack writes formats in upper case (``QCOW2``, ``RAW``, ``ISO``); Ansible users write ``qcow2``. Every module,
role and playbook accepts both: a module passes its ``format`` option through :func:`canonical_format` (the
argument specs take ``format`` without ``choices``, because Ansible compares choices case-sensitively) and the
engine, the registry and the safety gate only ever see the lower-case name.
"""

from __future__ import annotations

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput

# The formats that direct download to KVM installs (the safety gate refuses every other one).
FORMATS = ("qcow2", "raw", "iso")

# Signatures of the formats: the qcow2 magic at byte 0; an ISO 9660 primary/supplementary/terminator volume
# descriptor sits at sectors 16-18 ("CD001" at byte 1 of each).
QCOW2_MAGIC = b"QFI\xfb"
ISO_MAGIC = b"CD001"
ISO_OFFSETS = (32769, 34817, 36865)

# Compressions, detected by content (never by name), and the URL suffixes that name them.
COMPRESSIONS = ("gzip", "bzip2", "xz", "zip", "zstd")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COMPRESSION_MAGICS = (
    ((b"\x1f\x8b", "gzip"),)
    + tuple((b"BZh%d" % level, "bzip2") for level in range(1, 10))
    + (
        (b"\xfd7zXZ\x00", "xz"),
        (b"PK\x03\x04", "zip"),
        (b"PK\x05\x06", "zip"),  # an empty archive: extraction then says it has no file member
        (ZSTD_MAGIC, "zstd"),
    )
)
# The magic each member of a concatenated stream starts with (gzip, bzip2 and xz allow several members).
STREAM_MAGICS = {kind: tuple(magic for magic, name in COMPRESSION_MAGICS if name == kind)
                 for kind in ("gzip", "bzip2", "xz")}


def compression_from_head(head: bytes) -> str | None:
    """``gzip|bzip2|xz|zip|zstd`` from the first bytes of a stream, or None. ``url_check`` uses it on the head of a
    remote file, ``_install.detect_compression`` on a file."""
    return next((name for magic, name in COMPRESSION_MAGICS if head.startswith(magic)), None)


def canonical_format(value: str | None, name: str = "format") -> str | None:
    """``QCOW2``, `` Qcow2 ``, ``qcow2`` -> ``qcow2``; None or an empty string -> None (no format given).

    Raises InvalidInput for a value that is not one of :data:`FORMATS` in any case."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("%s must be one of %s, got %r" % (name, ", ".join(FORMATS), value))
    text = value.strip().lower()
    if not text:
        return None
    if text not in FORMATS:
        raise InvalidInput("%s must be one of %s (in any case), got %r" % (name, ", ".join(FORMATS), value))
    return text


__all__ = ["COMPRESSIONS", "COMPRESSION_MAGICS", "COMPRESSION_SUFFIXES", "FORMATS", "ISO_MAGIC", "ISO_OFFSETS",
           "QCOW2_MAGIC", "STREAM_MAGICS", "ZSTD_MAGIC", "canonical_format", "compression_from_head"]
