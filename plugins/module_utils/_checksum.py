# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Checksums: parse the CloudStack ``{SHA-256}hex`` and Ansible ``sha256:hex`` forms, make hashers, compare;
read checksum files (``SHA256SUMS``, ``*.sha256``) in GNU and BSD format.

CloudStack rules kept: a bare hex string is MD5 (unless the caller names another default), the six algorithms
MD5, SHA-1, SHA-224, SHA-256, SHA-384, SHA-512, and the length check. CloudStack bugs fixed: upper-case hex is
accepted (it is normalised), common spellings (``sha256``, ``SHA256``, ``sha-256``) are accepted, and the digest must
be hexadecimal. A bare digest whose length fits another algorithm than the default gets a message that names that
algorithm and the form to write; a pasted ``sha256sum`` line (``<hex>  file``) or BSD line (``SHA256 (file) = hex``)
is understood.

Pure functions: fetching a checksum file is the caller's business (``_sources.read_small_file``).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from typing import Any, Iterable, Optional

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
# GNU coreutils ``sha256sum`` output: ``<hex>  name`` (text mode) or ``<hex> *name`` (binary mode).
_GNU_LINE = re.compile(r"^\\?([0-9a-fA-F]+) [ *](.+)$")
# BSD ``sha256`` / ``shasum --tag`` output: ``SHA256 (name) = <hex>``.
_BSD_LINE = re.compile(r"^\\?([A-Za-z0-9_-]+) ?\((.*)\) ?= ?([0-9a-fA-F]+)$")
# What the checksum option accepts, for messages.
FORMS = "{SHA-256}<hex> (CloudStack), sha256:<hex> (Ansible), sha256:<URL of a checksum file>, or a bare <hex> digest"
# A checksum file (SHA256SUMS, *.sha256) larger than this is refused: it is read into memory.
MAX_CHECKSUM_FILE_SIZE = 1024 * 1024


def algorithms_of_length(length: int) -> list[str]:
    """The canonical names of the algorithms whose hex digest has ``length`` characters (at most one here)."""
    return [name for name, (_cs_name, hex_length) in ALGORITHMS.items() if hex_length == length]


def _length_hint(length):
    """``; 64 hex characters fit SHA-256: write sha256:<hex> ...``, or the list of lengths when none fits."""
    fitting = algorithms_of_length(length)
    if fitting:
        return "; %d hex characters fit %s: write %s:<hex> or {%s}<hex>" % (
            length, " or ".join(ALGORITHMS[name][0] for name in fitting), fitting[0], ALGORITHMS[fitting[0]][0])
    return "; no algorithm has %d (%s)" % (length, ", ".join(
        "%s %d" % (cs_name, hex_length) for cs_name, hex_length in ALGORITHMS.values()))


def canonical_algorithm(name: str) -> str:
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
                "%s %s checksum has %d hex characters, got %d%s" % (
                    "an" if cs_name.startswith("MD") else "a", cs_name, length, len(digest), _length_hint(len(digest))),
                expected_length=length,
            )
        self.hexdigest = digest.lower()

    @property
    def cloudstack(self) -> str:
        """CloudStack form, ``{SHA-256}hex``: what results and the registry show."""
        return "{%s}%s" % (ALGORITHMS[self.algorithm][0], self.hexdigest)

    @property
    def ansible(self) -> str:
        """Ansible form, ``sha256:hex``."""
        return "%s:%s" % (self.algorithm, self.hexdigest)

    def new_hash(self) -> Any:
        return new_hash(self.algorithm)

    def matches(self, hexdigest: Optional[str]) -> bool:
        return (hexdigest or "").lower() == self.hexdigest

    def __eq__(self, other):
        return isinstance(other, Checksum) and (self.algorithm, self.hexdigest) == (other.algorithm, other.hexdigest)

    def __hash__(self):
        return hash((self.algorithm, self.hexdigest))

    def __repr__(self):
        return "Checksum(%s)" % self.cloudstack


def split_checksum_url(text: Optional[str]) -> Optional[tuple[str, str]]:
    """``(algorithm, url)`` for the get_url form ``sha256:https://host/SHA256SUMS``, else None."""
    value = str(text or "").strip()
    algorithm, sep, rest = value.partition(":")
    if sep and "://" in rest and not value.startswith("{"):
        return canonical_algorithm(algorithm), rest.strip()
    return None


def _bare(value, default_algorithm, pasted=False):
    """A bare digest (or the digest of a pasted ``sha256sum`` line): ``default_algorithm`` decides, and a length
    that fits another algorithm says so instead of blaming the hex."""
    default = canonical_algorithm(default_algorithm)
    if not _HEX.match(value):
        raise InvalidInput("cannot read the checksum %r: give %s" % (value[:140], FORMS))
    cs_name, length = ALGORITHMS[default]
    if len(value) != length:
        raise InvalidInput(
            "the %s has %d hex characters, not the %d of %s (a bare digest is %s, as in CloudStack, unless "
            "checksum_algorithm says otherwise)%s, or set checksum_algorithm"
            % ("digest in the pasted checksum line" if pasted else "bare checksum", len(value), length, cs_name,
               "read with checksum_algorithm" if default != "md5" else "MD5", _length_hint(len(value))),
            expected_length=length,
        )
    return Checksum(default, value)


def parse_checksum(text: Optional[str], default_algorithm: str = "md5") -> Optional[Checksum]:
    """Parse a checksum option. Returns None for an empty value (no verification).

    Accepted forms: ``{SHA-256}hex`` (CloudStack; ``{}hex`` means the default algorithm), ``sha256:hex``
    (Ansible), ``sha256=hex``, bare ``hex`` (the default algorithm: MD5 as in CloudStack, unless
    ``default_algorithm`` says otherwise), and a pasted line of ``sha256sum`` output (``hex  file``: its digest
    counts as bare) or of BSD ``sha256`` output (``SHA256 (file) = hex``). ``sha256:<URL>`` is refused here: the
    caller reads the file (:func:`split_checksum_url`, :func:`checksum_from_file`).
    """
    if text is None:
        return None
    value = str(text).strip()
    if not value:
        return None
    if value.startswith("{") and "}" in value:
        algorithm, digest = value[1:].split("}", 1)
        if not algorithm.strip():
            return _bare(digest.strip(), default_algorithm)
        return Checksum(algorithm.strip(), digest)
    bsd = _BSD_LINE.match(value)
    if bsd:
        return Checksum(bsd.group(1), bsd.group(3))
    gnu = _GNU_LINE.match(value)
    if gnu:
        return _bare(gnu.group(1), default_algorithm, pasted=True)
    for separator in (":", "="):
        algorithm, sep, digest = value.partition(separator)
        if sep and re.match(r"^[A-Za-z][A-Za-z0-9_ -]*$", algorithm):
            if "://" in digest:
                raise InvalidInput("a checksum file URL (%s) is read by directdownload.kvm.download only: give the "
                                   "digest itself here" % value[:140])
            return Checksum(algorithm, digest)
    return _bare(value, default_algorithm)


def _listed_name(name):
    name = name.strip()
    while name.startswith("./"):
        name = name[2:]
    return name


def checksum_from_file(text: str, file_name: str, algorithm: Optional[str],
                       source: str = "the checksum file") -> Checksum:
    """The Checksum of ``file_name`` in the text of a checksum file, read as get_url reads one.

    Lines in GNU format (``<hex>  name``, ``<hex> *name``; ``./`` prefixes ignored) or BSD format
    (``SHA256 (name) = <hex>``); other lines (comments, a PGP signature around the list) are skipped. The line
    whose name is ``file_name`` wins, else the line whose base name is (when the digests agree); a file that holds
    a single bare digest (``image.qcow2.sha256``) also works. Raises InvalidInput saying what the file lists when
    nothing fits.
    """
    algorithm = canonical_algorithm(algorithm)
    cs_name, length = ALGORITHMS[algorithm]
    entries = []  # (name, hexdigest)
    other_algorithms = set()
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        lines.append(line)
        bsd = _BSD_LINE.match(line)
        if bsd:
            try:
                listed = canonical_algorithm(bsd.group(1))
            except InvalidInput:
                continue
            if listed != algorithm:
                other_algorithms.add(listed)
                continue
            entries.append((_listed_name(bsd.group(2)), bsd.group(3)))
            continue
        gnu = _GNU_LINE.match(line)
        if gnu:
            entries.append((_listed_name(gnu.group(2)), gnu.group(1)))
    exact = [digest for name, digest in entries if name == file_name]
    by_base = {digest.lower() for name, digest in entries if posixpath.basename(name) == file_name}
    if not entries and not other_algorithms and len(lines) == 1 and _HEX.match(lines[0].split()[0]):
        digest = lines[0].split()[0]  # a file with one bare digest (image.qcow2.sha256)
    elif exact:
        digest = exact[0]
    elif len(by_base) == 1:
        digest = by_base.pop()
    elif by_base:
        raise InvalidInput("%s lists %s in several directories with different digests: name it in the URL as the "
                           "checksum file does" % (source, file_name))
    else:
        hint = ""
        if other_algorithms and not entries:
            hint = " (it lists %s digests: write %s:<URL>)" % (
                ", ".join(ALGORITHMS[name][0] for name in sorted(other_algorithms, key=STRENGTH.index)),
                sorted(other_algorithms, key=STRENGTH.index)[-1])
        elif entries:
            hint = " (it lists %s%s)" % (", ".join(name for name, _digest in entries[:5]),
                                         ", ..." if len(entries) > 5 else "")
        raise InvalidInput("no %s checksum for %s in %s%s" % (cs_name, file_name, source, hint))
    if len(digest) != length:
        raise InvalidInput("%s gives %s a digest of %d hex characters, not a %s one%s"
                           % (source, file_name, len(digest), cs_name, _length_hint(len(digest))))
    return Checksum(algorithm, digest)


def as_given(text: str, checksum: Checksum) -> str:
    """``checksum`` written in the form the user wrote ``text``: ``{SHA-256}hex`` for the CloudStack form,
    ``sha256:hex`` for the Ansible form (also for ``sha256:<URL>`` and a BSD line), bare ``hex`` for a bare digest
    or a pasted ``sha256sum`` line. Hex is lower case. So ``result.checksum == my_checksum`` holds for a
    lower-case digest written as the docs show."""
    value = str(text or "").strip()
    if value.startswith("{"):
        return checksum.cloudstack
    if _GNU_LINE.match(value) or _HEX.match(value):
        return checksum.hexdigest
    return checksum.ansible


def new_hash(algorithm: str) -> Any:
    """A hashlib object for a canonical or CloudStack algorithm name.

    ``usedforsecurity=False`` keeps MD5 usable on FIPS hosts, where it only checks integrity here.
    """
    name = canonical_algorithm(algorithm)
    try:
        return hashlib.new(name, usedforsecurity=False)
    except TypeError:  # Python builds without the keyword
        return hashlib.new(name)


def strongest(checksums: Iterable[Checksum]) -> Optional[Checksum]:
    """The strongest of several Checksum objects (SHA-512 > ... > MD5), or None for an empty list."""
    ranked = sorted(checksums, key=lambda c: STRENGTH.index(c.algorithm))
    return ranked[-1] if ranked else None


def file_digest(path: str, algorithm: str, block_size: int = 1024 * 1024) -> str:
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
