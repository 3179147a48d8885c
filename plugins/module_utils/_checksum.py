# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Checksums: parse the CloudStack ``{SHA-256}hex`` and Ansible ``sha256:hex`` forms, make hashers, compare.

CloudStack rules kept: a bare hex string is MD5 (unless the caller names another default), the six algorithms
MD5, SHA-1, SHA-224, SHA-256, SHA-384, SHA-512, and the length check. CloudStack bugs fixed: upper-case hex is
accepted (it is normalised), common spellings (``sha256``, ``SHA256``, ``sha-256``) are accepted, and the digest must
be hexadecimal.
"""

from __future__ import annotations

import hashlib
import re

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput

# hashlib name -> (CloudStack name, hex length); ordered weakest to strongest.
ALGORITHMS = {
    "md5": ("MD5", 32),
    "sha1": ("SHA-1", 40),
    "sha224": ("SHA-224", 56),
    "sha256": ("SHA-256", 64),
    "sha384": ("SHA-384", 96),
    "sha512": ("SHA-512", 128),
}
STRENGTH = list(ALGORITHMS)

_HEX = re.compile(r"^[0-9a-fA-F]+$")


def canonical_algorithm(name):
    """``SHA-256``, ``sha256``, ``Sha_256`` -> ``sha256``. Raises InvalidInput for anything else."""
    key = re.sub(r"[-_\s]", "", (name or "").strip().lower())
    if key not in ALGORITHMS:
        raise InvalidInput(
            "unknown checksum algorithm %r: use one of %s" % (name, ", ".join(cs_name for cs_name, _length in ALGORITHMS.values()))
        )
    return key


class Checksum:
    """An expected digest: ``algorithm`` is the hashlib name, ``hexdigest`` lower-case hex."""

    __slots__ = ("algorithm", "hexdigest")

    def __init__(self, algorithm, hexdigest):
        self.algorithm = canonical_algorithm(algorithm)
        cs_name, length = ALGORITHMS[self.algorithm]
        digest = (hexdigest or "").strip()
        if not _HEX.match(digest):
            raise InvalidInput("the %s checksum must be hexadecimal, got %r" % (cs_name, digest[:140]))
        if len(digest) != length:
            raise InvalidInput(
                "a %s checksum has %d hex characters, got %d" % (cs_name, length, len(digest)),
                expected_length=length,
            )
        self.hexdigest = digest.lower()

    @property
    def cloudstack(self):
        """CloudStack form, ``{SHA-256}hex``: what results and the registry show."""
        return "{%s}%s" % (ALGORITHMS[self.algorithm][0], self.hexdigest)

    @property
    def ansible(self):
        """Ansible form, ``sha256:hex``."""
        return "%s:%s" % (self.algorithm, self.hexdigest)

    def new_hash(self):
        return new_hash(self.algorithm)

    def matches(self, hexdigest):
        return (hexdigest or "").lower() == self.hexdigest

    def __eq__(self, other):
        return isinstance(other, Checksum) and (self.algorithm, self.hexdigest) == (other.algorithm, other.hexdigest)

    def __hash__(self):
        return hash((self.algorithm, self.hexdigest))

    def __repr__(self):
        return "Checksum(%s)" % self.cloudstack


def parse_checksum(text, default_algorithm="md5"):
    """Parse a checksum option. Returns None for an empty value (no verification).

    Accepted forms: ``{SHA-256}hex`` (CloudStack; ``{}hex`` means the default algorithm), ``sha256:hex``
    (Ansible), and bare ``hex`` (the default algorithm: MD5 as in CloudStack, unless ``default_algorithm`` says
    otherwise).
    """
    if text is None:
        return None
    value = str(text).strip()
    if not value:
        return None
    if value.startswith("{") and "}" in value:
        algorithm, digest = value[1:].split("}", 1)
        return Checksum(algorithm.strip() or default_algorithm, digest)
    if ":" in value:
        algorithm, digest = value.split(":", 1)
        if "://" in digest:
            raise InvalidInput("checksum files given by URL are not supported: give the digest itself")
        return Checksum(algorithm, digest)
    return Checksum(default_algorithm, value)


def new_hash(algorithm):
    """A hashlib object for a canonical or CloudStack algorithm name.

    ``usedforsecurity=False`` keeps MD5 usable on FIPS hosts, where it only checks integrity here.
    """
    name = canonical_algorithm(algorithm)
    try:
        return hashlib.new(name, usedforsecurity=False)
    except TypeError:  # Python builds without the keyword
        return hashlib.new(name)


def strongest(checksums):
    """The strongest of several Checksum objects (SHA-512 > ... > MD5), or None for an empty list."""
    ranked = sorted(checksums, key=lambda c: STRENGTH.index(c.algorithm))
    return ranked[-1] if ranked else None


def file_digest(path, algorithm, block_size=1024 * 1024):
    """Hash a whole file. Used only where a re-read is unavoidable (resuming a ``.part``; multi-stream metalink)."""
    digest = new_hash(algorithm)
    buf = bytearray(block_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buf)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()
