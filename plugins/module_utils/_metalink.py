# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Metalink (RFC 5854 version 4, and version 3): parse a document into one file's mirrors and hashes, fetch it
from the mirrors with failover, or fetch it from several mirrors at once in verified pieces.

What CloudStack gets wrong and this module does not: a random ``<hash>`` (sometimes a piece hash) as the file
checksum; Metalink 3 ``preference`` and ``location`` ignored; an empty metalink failing with an index error; a
corrupt download retried from the same mirror. What aria2 users asked for (aria2 #1257): a corrupt piece is
fetched again from another mirror, never the whole file.

Three entry points:

- :func:`parse_metalink` turns the document into a :class:`MetalinkFile` (name, size, file-level hashes, piece
  hashes, mirrors in the order to try, notes for the operator).
- :class:`MetalinkSource` implements the Source contract of ``docs/architecture.md`` over the mirrors: the engine
  streams from it as from one HTTP source and it fails over between mirrors underneath.
- :func:`segmented_download` fills a ``.part`` file from several mirrors in parallel with exact ranges, verifying
  each piece, resumable through a sidecar bitmap.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import threading
import time
import unicodedata
from urllib.parse import urljoin, urlsplit, urlunsplit, uses_netloc, uses_relative

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import (
    Checksum,
    STRENGTH,
    canonical_algorithm,
    new_hash,
    strongest,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    ChecksumMismatch,
    DirectDownloadError,
    InvalidInput,
    NotEnoughSpace,
    SourceError,
)
from ansible_collections.directdownload.kvm.plugins.module_utils import _fs
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import SparseWriter, read_bounded
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import (
    METALINK_SUFFIXES,
    SUPPORTED_SCHEMES,
    redact_url,
    url_path_lower,
    url_scheme,
)

try:
    from lxml import etree
except ImportError:  # pragma: no cover - lxml is a documented requirement; the module reports it
    etree = None
    HAS_LXML = False
else:
    HAS_LXML = True

NS_V4 = "urn:ietf:params:xml:ns:metalink"
NS_V3 = "http://www.metalinker.org/"
# A metalink for one image is a few KiB; 1 MiB leaves room for thousands of mirrors and piece hashes while a
# hostile or mistaken URL (an image served as application/metalink+xml) is refused before it is parsed.
DEFAULT_MAX_DOCUMENT_SIZE = 1024 * 1024
ALLOWED_SCHEMES = SUPPORTED_SCHEMES  # the one table, _urls.py

# Declarations are what billion-laughs and XXE documents need; no metalink has a use for them.
_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)
_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
_XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
# XML Schema integers: ASCII digits only (str.isdigit and int() also take "²", "١٢" or "1_000").
_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def _shorten(text, limit=120):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------------------------------------------
# The parsed document


class Pieces:
    """Piece hashes: ``hashes[i]`` is the hex digest of bytes ``[i*length, (i+1)*length)`` of the file."""

    __slots__ = ("length", "algorithm", "hashes")

    def __init__(self, length, algorithm, hashes):
        self.length = length
        self.algorithm = algorithm
        self.hashes = hashes

    def count_for(self, size):
        return (size + self.length - 1) // self.length

    def __repr__(self):
        return "Pieces(%d x %d B, %s)" % (len(self.hashes), self.length, self.algorithm)


class Mirror:
    """One ``<url>`` of the file. ``rank`` is its position in the order to try (0 first)."""

    __slots__ = ("url", "rank", "priority", "preference", "location", "type", "max_connections")

    def __init__(self, url, rank=0, priority=None, preference=None, location=None, type=None, max_connections=None):
        self.url = url
        self.rank = rank
        self.priority = priority
        self.preference = preference
        self.location = location
        self.type = type
        self.max_connections = max_connections

    @property
    def redacted(self):
        return redact_url(self.url)

    def as_dict(self):
        return dict(url=self.redacted, rank=self.rank, priority=self.priority, preference=self.preference,
                    location=self.location, type=self.type, max_connections=self.max_connections)

    def __repr__(self):
        return "Mirror(%s, rank=%d)" % (self.redacted, self.rank)


class MetalinkFile:
    """One ``<file>`` of a metalink: what to fetch, from where (``mirrors`` in try order), and how to verify it.

    ``hashes`` holds file-level hashes only (piece hashes are in ``pieces``); ``notes`` are operator warnings
    about what was skipped (unknown hash types, other schemes, torrents, unusable piece lists).
    ``max_connections`` is the cap of Metalink 3 ``<resources maxconnections>`` on the connections of the whole
    file (None: no cap); ``unusable_hashes`` describes the hashes and piece lists that could not be used (no type,
    unknown type, malformed), for the refusal in :meth:`expected_checksums`.
    """

    max_connections = None
    unusable_hashes = ()

    def __init__(self, name, size, hashes, pieces, mirrors, notes, version):
        self.name = name
        self.size = size
        self.hashes = hashes
        self.pieces = pieces
        self.mirrors = mirrors
        self.notes = notes
        self.version = version

    @property
    def checksum(self):
        """The strongest file-level hash (SHA-512 > SHA-384 > SHA-256 > SHA-224 > SHA-1 > MD5), or None."""
        return strongest(self.hashes)

    @property
    def verifiable(self):
        """True when the bytes can be checked against the document (a file hash or a full piece list)."""
        return bool(self.hashes or self.pieces)

    def expected_checksums(self, user_checksum=None):
        """The digests the downloaded file must match: the strongest file-level hash, and the user's checksum
        when one was given (both must match). Refuses at once a user checksum that contradicts the document, and
        a document whose hashes are all unusable (no type, unknown type, malformed) when the user gave no checksum:
        its image would otherwise be installed unverified."""
        if user_checksum is None and not self.verifiable and self.unusable_hashes:
            found = list(self.unusable_hashes)
            raise InvalidInput(
                "the metalink gives no usable hash for %s (found: %s): refused, since the image could not be "
                "verified; give the checksum option to download it anyway"
                % (self.name, "; ".join(found[:10]) + ("; ..." if len(found) > 10 else "")),
                unusable_hashes=found[:100], metalink_notes=list(self.notes))
        expected = []
        if user_checksum is not None:
            for declared in self.hashes:
                if declared.algorithm == user_checksum.algorithm and declared != user_checksum:
                    raise InvalidInput(
                        "the checksum %s contradicts the metalink, which says %s for %s"
                        % (user_checksum.cloudstack, declared.cloudstack, self.name),
                        expected=user_checksum.cloudstack, metalink=declared.cloudstack,
                    )
            expected.append(user_checksum)
        best = self.checksum
        if best is not None and best not in expected:
            expected.append(best)
        return expected

    def as_dict(self):
        """A summary for module results (URLs redacted)."""
        return dict(
            name=self.name, size=self.size, version=self.version,
            hashes=[c.cloudstack for c in self.hashes],
            checksum=self.checksum.cloudstack if self.checksum else None,
            pieces=dict(length=self.pieces.length, algorithm=self.pieces.algorithm, count=len(self.pieces.hashes))
            if self.pieces else None,
            mirrors=[m.as_dict() for m in self.mirrors], notes=list(self.notes),
            max_connections=self.max_connections,
        )

    def __repr__(self):
        return "MetalinkFile(%r, size=%r, %d mirrors)" % (self.name, self.size, len(self.mirrors))


# --------------------------------------------------------------------------------------------------------------
# Parsing


def _local(element):
    return etree.QName(element).localname if isinstance(element.tag, str) else None


def _children(element, namespace, name):
    return element.findall("{%s}%s" % (namespace, name))


def _child(element, namespace, name):
    return element.find("{%s}%s" % (namespace, name))


def _text(element):
    return "".join(element.itertext()).strip() if element is not None else ""


def _int_attribute(element, attribute, notes, low=None, high=None):
    """An integer attribute, or None (missing or malformed: noted, treated as missing)."""
    raw = element.get(attribute)
    if raw is None:
        return None
    try:
        if not _INTEGER.match(raw.strip()):
            raise ValueError(raw)
        value = int(raw.strip())
    except ValueError:
        notes.append("ignored the %s attribute %r of a <%s>: not an integer"
                     % (attribute, _shorten(raw, 40), _local(element)))
        return None
    if (low is not None and value < low) or (high is not None and value > high):
        notes.append("ignored the %s attribute %d of a <%s>: out of range" % (attribute, value, _local(element)))
        return None
    return value


def _check_file_name(name):
    """Refuse a ``file@name`` that breaks RFC 5854 section 4.1.2.1: empty, absolute, a ``.`` or ``..`` segment, a
    control character, a backslash, a drive letter, or no file name after the last ``/``. A relative path such as
    ``dir/image.qcow2`` is fine: the name is only matched against ``metalink_name`` and shown, never used as a path
    (the pool file name comes from the ``name`` option or the URL)."""
    if not name:
        raise InvalidInput("the metalink <file> has no name (RFC 5854 requires one)")
    shown = name if len(name) <= 80 else name[:80] + "..."
    problem = None
    if any(unicodedata.category(char) == "Cc" for char in name):
        problem = "it contains a control character"
    elif "\\" in name:
        problem = "it contains a backslash"
    elif _DRIVE_LETTER.match(name):
        problem = "it starts with a drive letter"
    elif name.startswith("/"):
        problem = "it is an absolute path"
    elif any(segment in (".", "..") for segment in name.split("/")):
        problem = "it has a %r segment" % ("." if "." in name.split("/") else "..")
    elif name.endswith("/"):
        problem = "it names a directory, not a file"
    if problem is not None:
        raise InvalidInput("unsafe file name %r in the metalink: %s (RFC 5854 section 4.1.2.1 forbids directory "
                           "traversal)" % (shown, problem), name=shown)
    return name


def _resolve_reference(reference, base):
    """``reference`` resolved against the absolute URL ``base`` (RFC 3986 section 5.2), for any scheme: urljoin
    joins only the schemes it knows (not nfs), so others are joined as http and given their scheme back. A
    reference with a scheme of its own, or no usable base, is returned as it is."""
    if not base or not reference:
        return reference
    try:
        if urlsplit(reference).scheme:
            return reference
        parts = urlsplit(base)
    except ValueError:
        return reference
    scheme = parts.scheme
    if not scheme:
        return reference
    if scheme.lower() in uses_relative and scheme.lower() in uses_netloc:
        return urljoin(base, reference)
    joined = urljoin(urlunsplit(("http",) + tuple(parts[1:])), reference)
    return scheme + joined[len("http"):]


def _base_of(element, document_url):
    """The base URL of ``element`` (RFC 3986 section 5.1): the ``xml:base`` attributes of the element and its
    ancestors, outermost first, each resolved against the one above it, starting from the document's own URL."""
    chain = []
    node = element
    while node is not None:
        value = node.get(_XML_BASE)
        if value is not None and value.strip():
            chain.append(value.strip())
        node = node.getparent()
    base = document_url or None
    for value in reversed(chain):
        base = _resolve_reference(value, base) if base else value
    return base


def _percent_encode_non_ascii(text):
    return "".join(char if char.isascii() else "".join("%%%02X" % byte for byte in char.encode("utf-8"))
                   for char in text)


def _iri_to_uri(iri):
    """An IRI as a URI (RFC 3987 section 3.1; RFC 5854 ``<url>`` holds IRIs): a non-ASCII host in IDNA form,
    other non-ASCII characters as percent-encoded UTF-8. An ASCII URL is returned unchanged."""
    if iri.isascii():
        return iri
    try:
        parts = urlsplit(iri)
        netloc = parts.netloc
        host = parts.hostname or ""
        if host and not host.isascii():
            where = netloc.lower().rfind(host)
            if where < 0:
                return iri
            netloc = netloc[:where] + host.encode("idna").decode("ascii") + netloc[where + len(host):]
    except (ValueError, UnicodeError):
        return iri  # left as it is: the mirror's Source refuses it with its own message
    return urlunsplit((parts.scheme, _percent_encode_non_ascii(netloc), _percent_encode_non_ascii(parts.path),
                       _percent_encode_non_ascii(parts.query), _percent_encode_non_ascii(parts.fragment)))


def _url_of(element, document_url):
    return _iri_to_uri(_resolve_reference(_text(element), _base_of(element, document_url)))


def _check_no_declarations(data):
    """Refuse DTDs and entity declarations before the parser sees them (billion laughs, XXE)."""
    probes = [data]
    if data.startswith(_UTF16_32_BOMS) or data[:4] in (b"\x00<\x00?", b"<\x00?\x00", b"\x00\x00\x00<", b"<\x00\x00\x00"):
        # An ASCII scan misses a declaration in UTF-16/32: scan the decoded text as well.
        for encoding in ("utf-16", "utf-32", "utf-16-le", "utf-16-be"):
            try:
                probes.append(data.decode(encoding).encode("utf-8"))
            except UnicodeDecodeError:
                continue
    for probe in probes:
        if _DECLARATION.search(probe):
            raise InvalidInput("the metalink document has a DOCTYPE or ENTITY declaration: refused "
                               "(metalinks need none; such documents are used for entity expansion and XXE attacks)")


def _parse_xml(data, max_size):
    if not HAS_LXML:
        raise InvalidInput("reading a metalink needs the Python library lxml on the host")
    if not isinstance(data, bytes):
        raise InvalidInput("the metalink document must be bytes")
    if len(data) > max_size:
        raise InvalidInput("the metalink document is %d bytes, more than the %d allowed" % (len(data), max_size),
                           size=len(data), max_size=max_size)
    if not data.strip():
        raise InvalidInput("the metalink document is empty")
    _check_no_declarations(data)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                             huge_tree=False, remove_comments=True, remove_pis=True, recover=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise InvalidInput("the metalink document is not well-formed XML: %s" % _shorten(exc, 200)) from exc
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise InvalidInput("the metalink document has a DOCTYPE declaration: refused")
    return root


def parse_metalink(data, name=None, location_preference=(), max_size=DEFAULT_MAX_DOCUMENT_SIZE, base_url=None):
    """Parse a Metalink 4 or 3 document (detected by its namespace) and return the :class:`MetalinkFile` to fetch.

    ``name`` picks one ``<file>`` of a document that lists several; with one file it may be omitted (given, it
    must match). ``location_preference`` (e.g. ``["de", "fr"]``) orders mirrors of equal priority. ``base_url`` is
    the URL the document was fetched from: relative ``<url>`` references are resolved against ``xml:base`` or it.
    Raises :class:`InvalidInput` with a clear message for anything unusable.
    """
    root = _parse_xml(data, max_size)
    namespace = etree.QName(root).namespace
    if _local(root) != "metalink" or namespace not in (NS_V4, NS_V3):
        raise InvalidInput("not a metalink document: the root element is <%s> in namespace %r (expected <metalink> "
                           "in %s or %s)" % (_local(root), namespace, NS_V4, NS_V3))
    version = 4 if namespace == NS_V4 else 3
    if version == 4:
        files = _children(root, NS_V4, "file")
    else:
        files = [f for group in _children(root, NS_V3, "files") for f in _children(group, NS_V3, "file")]
    if not files:
        raise InvalidInput("the metalink document lists no <file>")
    element = _choose_file(files, name)
    notes = []
    unusable = []
    file_name = _check_file_name(element.get("name"))
    parse = _parse_v4_file if version == 4 else _parse_v3_file
    size, hashes, pieces, urls, max_connections = parse(element, notes, unusable, base_url)
    mirrors = _order_mirrors(urls, version, location_preference, notes)
    if not mirrors:
        raise InvalidInput("the metalink lists no usable URL for %s (allowed schemes: %s)%s"
                           % (file_name, ", ".join(ALLOWED_SCHEMES), "; " + "; ".join(notes) if notes else ""),
                           notes=notes)
    if pieces is not None and size is not None and len(pieces.hashes) != pieces.count_for(size):
        notes.append("ignored the piece hashes: %d listed, %d needed for %d bytes in pieces of %d"
                     % (len(pieces.hashes), pieces.count_for(size), size, pieces.length))
        unusable.append("%s piece hashes of the wrong count" % pieces.algorithm)
        pieces = None
    if pieces is not None and size is None:
        notes.append("ignored the piece hashes: the metalink gives no <size>")
        unusable.append("%s piece hashes without a <size>" % pieces.algorithm)
        pieces = None
    if not hashes and pieces is None and not unusable:
        notes.append("the metalink gives no hash for %s: its bytes are checked only against the checksum option, "
                     "when given" % _shorten(file_name, 80))
    metalink_file = MetalinkFile(file_name, size, hashes, pieces, mirrors, notes, version)
    metalink_file.max_connections = max_connections
    metalink_file.unusable_hashes = tuple(unusable)
    return metalink_file


def _choose_file(files, name):
    names = [f.get("name") or "" for f in files]
    if name is not None:
        matches = [f for f in files if f.get("name") == name]
        if len(matches) == 1:
            return matches[0]
        raise InvalidInput("the metalink has %s named %r; it lists: %s"
                           % ("no file" if not matches else "several files", name,
                              ", ".join(repr(_shorten(n, 80)) for n in names[:20])), files=names[:100])
    if len(files) == 1:
        return files[0]
    raise InvalidInput("the metalink lists %d files; choose one by name: %s"
                       % (len(files), ", ".join(repr(_shorten(n, 80)) for n in names[:20])), files=names[:100])


def _size(element):
    if element is None:
        return None
    text = _text(element)
    if not _INTEGER.match(text) or text[0] in "+-":
        raise InvalidInput("the metalink <size> %r is not a byte count" % _shorten(text, 40))
    size = int(text)
    if size == 0:
        raise InvalidInput("the metalink says the file is 0 bytes long: refused (an image is never empty)")
    return size


def _type_description(type_name, what):
    type_name = (type_name or "").strip()
    return "a %s without a type" % what if not type_name else "a %s of unknown type %r" % (what, _shorten(type_name, 40))


def _checksum(type_name, text, notes, what="hash", unusable=None):
    """A Checksum for a ``<hash type=...>``, or None when its type is missing or unknown (noted, and described in
    ``unusable``). Raises InvalidInput for a malformed digest of a known type."""
    try:
        algorithm = canonical_algorithm(type_name)
    except InvalidInput:
        description = _type_description(type_name, what)
        notes.append("ignored %s" % description)
        if unusable is not None:
            unusable.append(description)
        return None
    try:
        return Checksum(algorithm, "".join(text.split()))
    except InvalidInput as exc:
        raise InvalidInput("the metalink has a malformed %s %s: %s" % (type_name, what, exc.msg)) from exc


def _file_hashes(elements, notes, unusable=None):
    """The file-level hashes. A malformed digest is ignored with a note when a valid hash of a stronger algorithm
    is there to verify the file (aria2 does the same; its own test document has a 31-digit MD5 beside a valid
    SHA-1); otherwise it is an error, as are two different digests for one algorithm."""
    unusable = [] if unusable is None else unusable
    hashes = []
    malformed = []
    for element in elements:
        try:
            checksum = _checksum(element.get("type"), _text(element), notes, unusable=unusable)
        except InvalidInput as exc:
            malformed.append((canonical_algorithm(element.get("type")), exc))
            continue
        if checksum is None:
            continue
        for other in hashes:
            if other.algorithm == checksum.algorithm and other != checksum:
                raise InvalidInput("the metalink gives two different %s hashes for the file"
                                   % checksum.cloudstack.split("}")[0][1:])
        if checksum not in hashes:
            hashes.append(checksum)
    best = strongest(hashes)
    for algorithm, exc in malformed:
        if best is None or STRENGTH.index(algorithm) >= STRENGTH.index(best.algorithm):
            raise exc
        notes.append("ignored a malformed %s hash (%s): the file is verified with its %s hash"
                     % (algorithm, exc.msg.split(": ", 1)[-1], best.cloudstack.split("}")[0][1:]))
    return hashes


def _piece_hash_elements(element, namespace, algorithm, notes):
    """The ``<hash>`` children of a ``<pieces>`` in piece order, or None (noted). Metalink 3 numbers them with
    ``piece``: the numbers must be exactly 0 to n-1, else a hash would check the wrong bytes."""
    hash_elements = _children(element, namespace, "hash")
    if namespace != NS_V3 or all(h.get("piece") is None for h in hash_elements):
        return hash_elements
    try:
        numbered = sorted(((int(h.get("piece")), h) for h in hash_elements), key=lambda item: item[0])
    except (TypeError, ValueError):
        notes.append("ignored %s piece hashes with a bad piece number" % algorithm)
        return None
    if [number for number, _h in numbered] != list(range(len(numbered))):
        notes.append("ignored %s piece hashes: their piece numbers are not 0 to %d, each once"
                     % (algorithm, len(numbered) - 1))
        return None
    return [h for _number, h in numbered]


def _pieces(elements, namespace, notes, unusable=None, file_hashes=()):
    """The usable ``<pieces>`` with the strongest known algorithm, or None. A list with a malformed piece hash is
    ignored with a note when something valid and stronger verifies the bytes (another piece list, or a file hash at
    least as strong); otherwise it is an error. Unusable lists are described in ``unusable``."""
    unusable = [] if unusable is None else unusable
    best = None
    malformed = []
    for element in elements:
        length = _int_attribute(element, "length", notes, low=1)
        try:
            algorithm = canonical_algorithm(element.get("type"))
        except InvalidInput:
            description = _type_description(element.get("type"), "piece list")
            notes.append("ignored %s" % description)
            unusable.append(description)
            continue
        if length is None:
            notes.append("ignored %s piece hashes without a valid length" % algorithm)
            unusable.append("%s piece hashes without a valid length" % algorithm)
            continue
        hash_elements = _piece_hash_elements(element, namespace, algorithm, notes)
        if hash_elements is None:
            unusable.append("%s piece hashes with bad piece numbers" % algorithm)
            continue
        try:
            hashes = [_checksum(element.get("type"), _text(h), notes, what="piece hash").hexdigest
                      for h in hash_elements]
        except InvalidInput as exc:
            malformed.append((algorithm, exc))
            continue
        if not hashes:
            notes.append("ignored an empty %s piece list" % algorithm)
            unusable.append("an empty %s piece list" % algorithm)
            continue
        candidate = Pieces(length, algorithm, hashes)
        if best is None or STRENGTH.index(algorithm) > STRENGTH.index(best.algorithm):
            best = candidate
    file_best = strongest(list(file_hashes))
    for algorithm, exc in malformed:
        stronger_pieces = best is not None and STRENGTH.index(best.algorithm) > STRENGTH.index(algorithm)
        file_as_strong = file_best is not None and STRENGTH.index(file_best.algorithm) >= STRENGTH.index(algorithm)
        if not (stronger_pieces or file_as_strong):
            raise exc
        notes.append("ignored %s piece hashes with a malformed one (%s)" % (algorithm, exc.msg.split(": ", 1)[-1]))
        unusable.append("malformed %s piece hashes" % algorithm)
    return best


class _Url:
    __slots__ = ("url", "index", "priority", "preference", "location", "type", "max_connections")

    def __init__(self, url, index, priority=None, preference=None, location=None, type=None, max_connections=None):
        self.url = url
        self.index = index
        self.priority = priority
        self.preference = preference
        self.location = location
        self.type = type
        self.max_connections = max_connections


def _parse_v4_file(element, notes, unusable, base_url=None):
    size = _size(_child(element, NS_V4, "size"))
    hashes = _file_hashes(_children(element, NS_V4, "hash"), notes, unusable)
    pieces = _pieces(_children(element, NS_V4, "pieces"), NS_V4, notes, unusable, hashes)
    urls = []
    for index, url in enumerate(_children(element, NS_V4, "url")):
        # RFC 5854 defines no maxconnections: only priority and location.
        urls.append(_Url(_url_of(url, base_url), index,
                         priority=_int_attribute(url, "priority", notes, low=1, high=999999),
                         location=(url.get("location") or "").strip().lower() or None))
    metaurls = _children(element, NS_V4, "metaurl")
    if metaurls:
        notes.append("ignored %d <metaurl> (%s): only http, https and nfs mirrors are used"
                     % (len(metaurls), ", ".join(sorted({m.get("mediatype") or "?" for m in metaurls}))))
    return size, hashes, pieces, urls, None


def _parse_v3_file(element, notes, unusable, base_url=None):
    """Metalink 3.0: ``<resources maxconnections>`` caps the connections of the whole file (the smallest, when
    several ``<resources>`` give one), ``<url maxconnections>`` those to one server; neither is inherited by the
    other (each is a cap of its own, the engine applies both)."""
    size = _size(_child(element, NS_V3, "size"))
    verification = _child(element, NS_V3, "verification")
    hashes, pieces = [], None
    if verification is not None:
        hashes = _file_hashes(_children(verification, NS_V3, "hash"), notes, unusable)
        pieces = _pieces(_children(verification, NS_V3, "pieces"), NS_V3, notes, unusable, hashes)
    urls = []
    index = 0
    file_connections = None
    for resources in _children(element, NS_V3, "resources"):
        group_connections = _int_attribute(resources, "maxconnections", notes, low=1)
        if group_connections is not None:
            file_connections = min(group_connections, file_connections or group_connections)
        for url in _children(resources, NS_V3, "url"):
            urls.append(_Url(_url_of(url, base_url), index,
                             preference=_int_attribute(url, "preference", notes, low=0, high=100),
                             location=(url.get("location") or "").strip().lower() or None,
                             type=(url.get("type") or "").strip().lower() or None,
                             max_connections=_int_attribute(url, "maxconnections", notes, low=1)))
            index += 1
    return size, hashes, pieces, urls, file_connections


def _order_mirrors(urls, version, location_preference, notes):
    """Keep the usable URLs and sort them: priority (v4, lower first) or preference (v3, higher first), missing
    last; then the caller's location preference; then document order."""
    locations = [str(loc).strip().lower() for loc in location_preference or () if str(loc).strip()]
    usable = []
    skipped = {}
    torrents = 0
    nested = 0
    relative = 0
    for url in urls:
        if not url.url:
            continue
        if url.type in ("bittorrent", "torrent") or url.url.lower().split("?", 1)[0].endswith(".torrent"):
            torrents += 1
            continue
        try:
            scheme = url_scheme(url.url)
        except ValueError:
            scheme = "unparsable"
        if not scheme:
            relative += 1
            continue
        if scheme not in ALLOWED_SCHEMES:
            skipped[scheme or "none"] = skipped.get(scheme or "none", 0) + 1
            continue
        if url_path_lower(url.url).endswith(METALINK_SUFFIXES):
            nested += 1
            continue
        if any(m.url == url.url for m in usable):
            notes.append("ignored a duplicate URL %s" % redact_url(url.url))
            continue
        usable.append(url)
    if torrents:
        notes.append("ignored %d BitTorrent URL(s)" % torrents)
    if nested:
        notes.append("ignored %d URL(s) of other metalink documents (metalinks are not followed inside metalinks)"
                     % nested)
    if relative:
        notes.append("ignored %d relative URL(s): neither an xml:base nor the document's own URL gives a base to "
                     "resolve them against" % relative)
    for scheme, count in sorted(skipped.items()):
        notes.append("skipped %d URL(s) with scheme %r: only %s are allowed inside a metalink"
                     % (count, scheme, ", ".join(ALLOWED_SCHEMES)))

    def key(url):
        if version == 4:
            first = url.priority if url.priority is not None else math.inf
        else:
            first = -url.preference if url.preference is not None else math.inf
        where = locations.index(url.location) if url.location in locations else len(locations)
        return (first, where, url.index)

    ordered = sorted(usable, key=key)
    return [Mirror(u.url, rank, priority=u.priority, preference=u.preference, location=u.location,
                   type=u.type or url_scheme(u.url), max_connections=u.max_connections)
            for rank, u in enumerate(ordered)]


def read_document(body, max_size=DEFAULT_MAX_DOCUMENT_SIZE):
    """Read a metalink document from a Source body (see docs/architecture.md), refusing one above ``max_size``
    bytes before it is all in memory."""
    return read_bounded(body, max_size, lambda: InvalidInput(
        "the metalink document at %s is larger than %d bytes: refused" % (redact_url(getattr(body, "url", None)), max_size),
        max_size=max_size))


def load_metalink(url, open_source, name=None, location_preference=(), max_size=DEFAULT_MAX_DOCUMENT_SIZE):
    """Fetch the metalink document at ``url`` with ``open_source(url)`` (an http/https/nfs Source) and parse it."""
    body = open_source(url).open(offset=0)
    try:
        data = read_document(body, max_size)
    finally:
        body.close()
    # The base of relative references is the URL the document came from, after redirects (RFC 3986 5.1.3).
    return parse_metalink(data, name=name, location_preference=location_preference, max_size=max_size,
                          base_url=getattr(body, "url", None) or url)


# --------------------------------------------------------------------------------------------------------------
# One mirror at a time, with failover: the Source contract over the mirror list


def mirror_key(url):
    """What the ``.part`` sidecar stores to name the mirror that served it: a digest, since mirror URLs may carry
    credentials or signed query strings and sidecars are files."""
    return "sha256:" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]


def _error_text(exc):
    return getattr(exc, "msg", None) or str(exc) or exc.__class__.__name__


class MetalinkSource:
    """A Source (docs/architecture.md) that serves the metalink's file from its mirrors, in order.

    ``open()`` tries the mirrors until one answers with a usable body (a refused connection, a timeout, a non-2xx,
    a size other than the metalink's ``<size>`` move to the next). While streaming, a timeout or a truncated body
    continues from the same byte on the next mirror when the document carries a hash to check the joined bytes
    against; without one a transfer is never stitched from two mirrors (the engine retries, from byte 0 on another
    mirror). ``next_mirror_after_mismatch()`` sets aside the mirrors whose bytes failed the checksum.

    ``open_source(url)`` returns the Source of one mirror URL (the engine's factory with its options bound).
    ``mirror_errors`` lists ``{"url": redacted, "error": message}`` for each failure; ``bytes_per_mirror`` maps
    redacted mirror URLs to the bytes they delivered.
    """

    def __init__(self, metalink_file, open_source, connections=1, document_url=None):
        self.file = metalink_file
        self.document_url = document_url
        self.connections = max(1, int(connections or 1))
        self.mirror_errors = []
        self.bytes_per_mirror = {}
        self._retryable = []  # parallel to mirror_errors: could another attempt succeed?
        self._open_source = open_source
        self._sources = {}
        self._rejected = set()
        self._slow = set()
        self._user_checksum = False
        self.served_by = []

    # -- what the engine asks before and after a transfer

    @property
    def notes(self):
        return self.file.notes

    @property
    def size(self):
        return self.file.size

    def expected_checksums(self, user_checksum=None):
        """See :meth:`MetalinkFile.expected_checksums`: every digest in the list must match."""
        expected = self.file.expected_checksums(user_checksum)
        self._user_checksum = self._user_checksum or user_checksum is not None
        return expected

    @property
    def verifiable(self):
        """True when joined bytes of several mirrors will be checked: the document or the user gave a hash."""
        return self.file.verifiable or self._user_checksum

    @property
    def segmented(self):
        """True when :meth:`download_segmented` should be used rather than one stream: several connections were
        asked for, or the metalink has piece hashes (each piece verified, a bad one re-fetched alone)."""
        return self.file.size is not None and (self.connections > 1 or self.file.pieces is not None)

    def mirrors(self):
        """The mirrors still worth trying, in order (mirrors set aside as too slow last)."""
        mirrors = [m for m in self.file.mirrors if m.url not in self._rejected]
        if self._slow:
            mirrors.sort(key=lambda m: m.url in self._slow)
        return mirrors

    def set_aside_slow_mirror(self, served_url=None):
        """The ``lowest_speed`` watchdog closed the connection: try the other mirrors first from now on. Only when
        joined bytes are verifiable (else the next mirror would start again from byte 0, which costs more than a
        slow mirror)."""
        if not self.verifiable:
            return
        for url in self.served_by or ([served_url] if served_url else []):
            self._slow.add(url)

    # -- Source contract

    def open(self, offset=0, validators=None, end=None):
        """Open the first mirror that answers. ``validators`` saved from an earlier body carry the mirror that
        served it (key ``mirror``): that mirror is tried first with them. Others resume at ``offset`` without
        validators when the metalink has a hash to check the result, else they start again from byte 0."""
        validators = dict(validators or {})
        saved_mirror = validators.pop("mirror", None)
        candidates = self.mirrors()
        if offset and saved_mirror:
            candidates.sort(key=lambda m: (m.url in self._slow, mirror_key(m.url) != saved_mirror))
        if not candidates:
            raise self.failure("no mirror is left to try")
        errors_before = len(self.mirror_errors)
        attempted = set()
        for mirror in candidates:
            attempted.add(mirror.url)
            if not offset or mirror_key(mirror.url) == saved_mirror:
                start, inner_validators = offset, (validators or None) if offset else None
            elif self.verifiable:
                start, inner_validators = offset, None
            else:
                start, inner_validators = 0, None
            body = self.open_mirror(mirror, start, inner_validators, end)
            if body is not None:
                self.served_by = [mirror.url]
                return _MetalinkBody(self, mirror, body, end, attempted)
        raise self.failure("every mirror failed", since=errors_before)

    def probe(self):
        """``url_check``: the first mirror that answers a probe, with the size of the image (the metalink's
        ``<size>`` when it has one; never the size of the XML document)."""
        errors_before = len(self.mirror_errors)
        for mirror in self.mirrors():
            try:
                info = dict(self._source(mirror).probe())
            except (SourceError, InvalidInput, OSError) as exc:
                self.record_error(mirror, exc)
                continue
            status = info.get("status")
            if isinstance(status, int) and not 200 <= status < 300:
                self.record_error(mirror, SourceError("HTTP status %s" % status))
                continue
            if self.file.size is not None and info.get("size") not in (None, self.file.size):
                self.record_error(mirror, SourceError(
                    "the mirror's file is %s bytes, the metalink says %d" % (info.get("size"), self.file.size)))
                continue
            if self.file.size is not None:
                info["size"] = self.file.size
            info["mirror"] = mirror.redacted
            info["mirror_errors"] = list(self.mirror_errors[errors_before:])
            info["metalink"] = self.file.as_dict()
            return info
        raise self.failure("no mirror answered the probe", since=errors_before)

    def read_head(self, count):
        """The first ``count`` bytes of the file, from the first mirror that serves them."""
        errors_before = len(self.mirror_errors)
        for mirror in self.mirrors():
            try:
                return self._source(mirror).read_head(count)
            except (SourceError, InvalidInput, OSError) as exc:
                self.record_error(mirror, exc)
        raise self.failure("no mirror served the first bytes", since=errors_before)

    def next_mirror_after_mismatch(self, served_url=None, expected=None, actual=None):
        """The bytes just downloaded failed the checksum: set aside the mirror(s) that served them. Returns True
        when another mirror is left (the caller discards the ``.part`` and opens again from byte 0), False when
        none is (the caller reports the mismatch)."""
        bad = list(self.served_by) or ([served_url] if served_url else [])
        detail = "checksum mismatch"
        if expected and actual:
            detail += " (expected %s, got %s)" % (expected, actual)
        for url in bad:
            if url in self._rejected:
                continue
            self._rejected.add(url)
            self.mirror_errors.append(dict(url=redact_url(url), error=detail))
            self._retryable.append(False)
        self.served_by = []
        return bool(self.mirrors())

    def download_segmented(self, part_path, checksums=None, block_size=64 * 1024, progress=None, log=None,
                           resume=True, **kwargs):
        """Fill ``part_path`` from several mirrors at once: see :func:`segmented_download`."""
        options = dict(per_mirror_connections=None, unit_size=None, max_mirror_failures=3, save_interval=2.0,
                       algorithms=("sha256",), sparse=True, limits=None)
        unknown = set(kwargs) - set(options)
        if unknown:
            raise TypeError("unknown arguments: %s" % ", ".join(sorted(unknown)))
        options.update(kwargs)
        job = _SegmentedDownload(self.file, self._open_source, part_path, self.connections, block_size, progress,
                                 checksums, log, resume, options["sparse"], self.mirrors(),
                                 options["per_mirror_connections"], options["unit_size"],
                                 options["max_mirror_failures"], options["save_interval"], options["algorithms"],
                                 options["limits"])
        try:
            return job.run()
        finally:
            # Also after a failure: the engine reports the errors, and a mismatch sets aside who served the bytes.
            self.mirror_errors.extend(job.errors)
            self._retryable.extend([True] * len(job.errors))
            for url, count in job.received.items():
                self.count_bytes(Mirror(url), count)
            self.served_by = list(job.served)

    def close(self):
        for source in self._sources.values():
            close = getattr(source, "close", None)
            if close:
                close()
        self._sources.clear()

    # -- internals

    def _source(self, mirror):
        source = self._sources.get(mirror.url)
        if source is None:
            source = self._sources[mirror.url] = self._open_source(mirror.url)
        return source

    def record_error(self, mirror, exc):
        self.mirror_errors.append(dict(url=mirror.redacted, error=_error_text(exc)))
        self._retryable.append(getattr(exc, "retryable", True))

    def open_mirror(self, mirror, start, validators, end):
        """A body from ``mirror`` at ``start``, or None (the failure is recorded)."""
        try:
            body = self._source(mirror).open(offset=start, validators=validators, end=end)
        except (SourceError, InvalidInput, OSError) as exc:
            self.record_error(mirror, exc)
            return None
        if self.file.size is not None and body.size is not None and body.size != self.file.size:
            body.close()
            self.record_error(mirror, SourceError(
                "the mirror's file is %d bytes, the metalink says %d" % (body.size, self.file.size)))
            return None
        return body

    def failure(self, what, since=0):
        errors = self.mirror_errors[since:] or self.mirror_errors
        summary = "; ".join("%s: %s" % (e["url"], e["error"]) for e in errors[-10:])
        error = SourceError("metalink %s: %s%s" % (self.file.name, what, " (%s)" % summary if summary else ""),
                            mirror_errors=list(errors))
        # Retryable unless every mirror failed for good (404s, refused ranges): then retries only waste time.
        flags = self._retryable[since:] or self._retryable
        error.retryable = any(flags) if flags else True
        return error

    def count_bytes(self, mirror, count):
        key = mirror.redacted
        self.bytes_per_mirror[key] = self.bytes_per_mirror.get(key, 0) + count


class _MetalinkBody:
    """A body that moves to the next mirror when the current one fails mid-stream (see MetalinkSource)."""

    def __init__(self, source, mirror, body, end, tried):
        self._source = source
        self._mirror = mirror
        self._body = body
        self._end = end
        self._tried = set(tried)  # mirrors that failed moments ago are not asked again within this body
        self.offset = body.offset
        self._position = body.offset
        self.size = source.file.size if source.file.size is not None else body.size
        self.content_type = getattr(body, "content_type", None)
        self.accept_ranges = getattr(body, "accept_ranges", False)
        self._closed = False  # closed by the caller (a watchdog, an interruption): no failover then

    @property
    def url(self):
        return getattr(self._body, "url", None) or self._mirror.url

    @property
    def validators(self):
        """The serving mirror's validators, with the mirror itself: only that mirror can use them to resume."""
        inner = dict(getattr(self._body, "validators", None) or {})
        inner["mirror"] = mirror_key(self._mirror.url)
        return inner

    def readinto(self, buf):
        while True:
            try:
                count = self._body.readinto(buf)
            except (SourceError, OSError) as exc:
                if self._closed:
                    raise
                self._failover(exc)
                continue
            if not count:
                target = self._end if self._end is not None else self.size
                if target is not None and self._position < target:
                    self._failover(SourceError("the body ended at byte %d of %d" % (self._position, target)))
                    continue
            self._position += count
            self._source.count_bytes(self._mirror, count)
            return count

    def _failover(self, exc):
        """Continue at the current byte on the next mirror, or raise when that is unsafe or none is left."""
        self._source.record_error(self._mirror, exc)
        self._body.close()
        if not self._source.verifiable:
            raise exc if isinstance(exc, SourceError) else SourceError(_error_text(exc))
        for mirror in self._source.mirrors():
            if mirror.url in self._tried:
                continue
            self._tried.add(mirror.url)
            body = self._source.open_mirror(mirror, self._position, None, self._end)
            if body is None:
                continue
            if body.offset != self._position:
                body.close()
                self._source.record_error(mirror, SourceError(
                    "cannot continue at byte %d: no range support" % self._position))
                continue
            self._mirror, self._body = mirror, body
            if mirror.url not in self._source.served_by:
                self._source.served_by.append(mirror.url)
            return
        raise self._source.failure("no mirror could continue at byte %d" % self._position)

    def close(self):
        self._closed = True
        self._body.close()


def plain_source_factory(request):
    """``open_source(url)`` for mirror and document URLs: the http/https or nfs Source with the request's options,
    never a metalink (a metalink inside a metalink is not followed)."""
    from ansible_collections.directdownload.kvm.plugins.module_utils._sources import open_plain_source  # pylint: disable=import-outside-toplevel

    def open_plain(url):
        return open_plain_source(url, request)
    return open_plain


def open_metalink_body(body, url, request, max_size=DEFAULT_MAX_DOCUMENT_SIZE):
    """The engine opened a plain URL and the answer says it is a metalink (``is_metalink_answer(body.url,
    body.content_type)``): read the document from ``body`` (bounded by ``max_size``), close it, and return the
    :class:`MetalinkSource` over its mirrors."""
    try:
        document = read_document(body, max_size)
    finally:
        body.close()
    return open_metalink_source(url, request, document=document)


def open_metalink_source(url, request, open_source=None, document=None):
    """The engine's entry point (``_sources.open_source`` for a metalink URL): fetch and parse the document at
    ``url`` (or use ``document``, bytes already read, e.g. after a Content-Type told a plain URL is a metalink) and
    return a :class:`MetalinkSource` over its mirrors.

    Uses the request's ``metalink_name``, ``metalink_locations`` and ``connections``. ``open_source`` is accepted
    for the factory's signature; mirrors always get plain sources (see :func:`plain_source_factory`).
    """
    del open_source  # mirrors must never be read as metalinks themselves, whatever their suffix
    open_plain = plain_source_factory(request)
    name = getattr(request, "metalink_name", None)
    locations = getattr(request, "metalink_locations", ()) or ()
    if document is None:
        metalink_file = load_metalink(url, open_plain, name=name, location_preference=locations)
    else:
        metalink_file = parse_metalink(document, name=name, location_preference=locations)
    return MetalinkSource(metalink_file, open_plain, connections=getattr(request, "connections", 1), document_url=url)


# --------------------------------------------------------------------------------------------------------------
# Several mirrors at once: segmented download into a pre-allocated sparse .part

DEFAULT_UNIT_SIZE = 1024 * 1024
# Bounds the resume bitmap for very large files without piece hashes (units grow instead).
MAX_UNITS = 1 << 16
# Hashing reads back what was written, from page cache (~10 GB/s with 1 MiB reads).
HASH_READ_SIZE = 1024 * 1024
SEGMENTS_SIDECAR_VERSION = 1
RUNS_PER_CONNECTION = 4
MIN_RUN_BYTES = 16 * 1024 * 1024
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def segments_sidecar_path(part_path):
    """Where the resume state of a segmented download lives: ``<pool>/.<name>.part.segments.json``."""
    return part_path + ".segments.json"


def _fallocate_function():
    """libc ``fallocate`` (Linux), or None. ctypes is imported here: only a failure or a resume needs it."""
    import ctypes  # pylint: disable=import-outside-toplevel
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_FALLOCATE = []


def punch_hole(fd, offset, length):
    """Deallocate ``[offset, offset+length)`` so it reads as zeros again without changing the file size. Returns
    False where the system or file system cannot (the caller then writes that range densely instead)."""
    if length <= 0:
        return True
    if not _FALLOCATE:
        _FALLOCATE.append(_fallocate_function())
    function = _FALLOCATE[0]
    if function is None:
        return False
    return function(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0


def _runs(flags, value=1):
    """``[[start, stop], ...]`` of the runs of ``flags`` equal to ``value``."""
    runs, start = [], None
    for index, flag in enumerate(flags):
        if (flag == value) and start is None:
            start = index
        elif flag != value and start is not None:
            runs.append([start, index])
            start = None
    if start is not None:
        runs.append([start, len(flags)])
    return runs


class SegmentedResult(dict):
    """What :func:`segmented_download` did: ``size``, ``elapsed``, ``bytes_downloaded``, ``resumed_bytes``,
    ``bytes_per_mirror`` (redacted URL -> bytes), ``mirror_errors``, ``digests`` (algorithm -> hex of the whole
    file), ``checksum`` (``{ALG}hex`` verified or computed), ``refetched_pieces``, ``connections``, ``unit_size``,
    ``pieces_verified``. ``served_urls`` (attribute, not a key: URLs may hold credentials) lists the mirrors that
    delivered verified bytes."""

    served_urls = ()


class _Aborted(Exception):
    """Raised inside a worker when another part of the download failed first."""


class _Unusable(SourceError):
    """The mirror cannot take part at all in this download (no exact ranges, other size)."""


class _Range:
    __slots__ = ("start", "stop", "avoid", "clean")

    def __init__(self, start, stop, avoid=frozenset(), clean=True):
        self.start = start
        self.stop = stop
        self.avoid = avoid
        self.clean = clean


class _Task:
    """Units ``[next, stop)`` being fetched from ``mirror`` by one worker. ``stop`` shrinks when an idle worker
    takes over the second half; ``dirty`` means unit ``next`` is partly written."""

    __slots__ = ("mirror", "next", "stop", "avoid", "clean", "dirty", "failed", "received", "body", "limit", "slow")

    def __init__(self, mirror, start, stop, avoid, clean):
        self.mirror = mirror
        self.next = start
        self.stop = stop
        self.avoid = avoid
        self.clean = clean
        self.dirty = False
        self.failed = False
        self.received = 0
        self.body = None  # the open body, for the watcher (lowest_speed, timeout)
        self.limit = None
        self.slow = None


def segmented_download(metalink_file, open_source, part_path, connections=2, block_size=64 * 1024, progress=None,
                       checksums=None, log=None, resume=True, sparse=True, mirrors=None, per_mirror_connections=None,
                       unit_size=None, max_mirror_failures=3, save_interval=2.0, algorithms=("sha256",),
                       limits=None):
    """Download the metalink's file into ``part_path`` from several mirrors in parallel.

    The part is created at its full size as a sparse file; the file is cut into units (the piece length when the
    metalink has piece hashes, else ``unit_size``, 1 MiB by default) and ``connections`` workers fetch runs of units
    with exact ranges (``open(offset, end=...)``), spread over the mirrors (at most ``per_mirror_connections``
    each, default an even share, capped by a v3 ``maxconnections``), writing with ``pwrite`` through
    :class:`SparseWriter` (all-zero blocks stay holes). A worker that runs out of work takes over the second half
    of the largest run left, so fast mirrors do more. Each piece is checked against its piece hash as it arrives;
    a corrupt piece is fetched again alone, from another mirror. A mirror that cannot serve exact ranges, or
    fails ``max_mirror_failures`` times, is dropped; when none is left the download stops with a SourceError
    (retryable: a later call resumes). The whole file is hashed in order while it is downloaded, reading back
    the contiguous finished prefix from page cache, so little is left to hash at the end; every checksum of
    ``checksums`` must match (else ChecksumMismatch); ``algorithms`` are digests to compute as well (for the record).
    Resume state lives in :func:`segments_sidecar_path`: done
    units, rewritten every ``save_interval`` seconds after an ``fdatasync``; done pieces are hashed again before
    they are trusted. ``progress(bytes_done, total)`` is called from the calling thread.
    ``limits`` (``_rate.Limits``): ``max_rate`` is one bucket shared by every connection; a connection below
    ``lowest_speed`` is closed (its range goes back to the queue, another mirror first); past the ``timeout`` the
    download stops (resumable).
    """
    return _SegmentedDownload(metalink_file, open_source, part_path, connections, block_size, progress, checksums,
                              log, resume, sparse, mirrors, per_mirror_connections, unit_size, max_mirror_failures,
                              save_interval, algorithms, limits).run()


class _SegmentedDownload:
    def __init__(self, metalink_file, open_source, part_path, connections, block_size, progress, checksums, log,
                 resume, sparse, mirrors, per_mirror_connections, unit_size, max_mirror_failures, save_interval,
                 algorithms, limits=None):
        self.file = metalink_file
        self.open_source = open_source
        self.part_path = part_path
        self.sidecar_path = segments_sidecar_path(part_path)
        self.connections = max(1, int(connections or 1))
        self.block_size = int(block_size)
        self.progress = progress
        self.checksums = list(checksums or [])
        self.log = log or (lambda message: None)
        self.resume = resume
        self.sparse = sparse
        self.mirrors = list(mirrors if mirrors is not None else metalink_file.mirrors)
        self.per_mirror = per_mirror_connections
        self.max_failures = max(1, int(max_mirror_failures))
        self.save_interval = save_interval
        self.algorithms = sorted({c.algorithm for c in self.checksums} | {canonical_algorithm(a) for a in algorithms or ()}
                                 or {"sha256"},
                                 key=STRENGTH.index)
        if not self.mirrors:
            raise SourceError("metalink %s: no mirror is left to try" % metalink_file.name)
        self.pieces = metalink_file.pieces
        self.unit_size = unit_size
        self.size = None
        self.unit = None
        self.units = 0
        self.fd = None
        self.cond = threading.Condition()
        self.done = bytearray()
        self.done_count = 0
        self.done_bytes = 0
        self.pending = []
        self.active = []
        self.mirror_active = {m.url: 0 for m in self.mirrors}
        self.mirror_failures = {m.url: 0 for m in self.mirrors}
        self.dead = set()
        self.no_range = set()  # mirrors that answered a ranged request with the whole file
        self.refused = set()  # mirrors that could not be reached at all
        self.fatal = None
        self.errors = []
        self.received = {}
        self.served = []
        self.refetched = []
        self.resumed_bytes = 0
        self.digests = None
        self.limits = limits if limits is not None and (limits.paced or limits.watched) else None

    # -- setup

    def _plan_units(self):
        self.size = self.file.size if self.file.size is not None else self._discover_size()
        if self.pieces is not None:
            self.unit = self.pieces.length
        else:
            unit = max(int(self.unit_size or DEFAULT_UNIT_SIZE), -(-self.size // MAX_UNITS), 1)
            self.unit = -(-unit // self.block_size) * self.block_size
        self.units = -(-self.size // self.unit)
        self.done = bytearray(self.units)

    def _discover_size(self):
        for mirror in self.mirrors:
            try:
                size = self.open_source(mirror.url).probe().get("size")
            except (SourceError, InvalidInput, OSError) as exc:
                self.errors.append(dict(url=mirror.redacted, error=_error_text(exc)))
                continue
            if size:
                return size
        raise SourceError("metalink %s gives no <size> and no mirror told it: a segmented download needs it"
                          % self.file.name, mirror_errors=list(self.errors))

    def _unit_span(self, unit):
        start = unit * self.unit
        return start, min(start + self.unit, self.size)

    def _identity(self):
        pieces = None
        if self.pieces is not None:
            digest = new_hash("sha256")
            digest.update(("%s:%d:" % (self.pieces.algorithm, self.pieces.length)).encode("ascii"))
            digest.update(",".join(self.pieces.hashes).encode("ascii"))
            pieces = digest.hexdigest()
        return dict(name=self.file.name, size=self.size, unit=self.unit, pieces=pieces,
                    hashes=sorted(c.cloudstack for c in self.file.hashes),
                    checksums=sorted(c.cloudstack for c in self.checksums))

    def _open_part(self):
        state = _fs.read_json(self.sidecar_path) if self.resume else None
        # Without any hash, bytes kept from an earlier run could never be checked: start again.
        resumable = bool(self.pieces or self.file.hashes or self.checksums)
        if state and resumable and state.get("version") == SEGMENTS_SIDECAR_VERSION \
                and state.get("identity") == self._identity():
            try:
                self.fd = _fs.open_regular(self.part_path, os.O_RDWR)
            except OSError:
                self.fd = None
            if self.fd is not None and os.fstat(self.fd).st_size == self.size:
                self._load_done(state.get("done"))
                return
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
        _fs.unlink_if_present(self.sidecar_path)
        self.fd = _fs.open_regular(self.part_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, self.size)

    def _load_done(self, runs):
        for run in runs or ():
            try:
                start, stop = int(run[0]), int(run[1])
            except (TypeError, ValueError, IndexError):
                continue
            for unit in range(max(0, start), min(stop, self.units)):
                self.done[unit] = 1
        if self.pieces is not None:
            bad = [unit for unit in range(self.units) if self.done[unit] and not self._piece_on_disk_ok(unit)]
            for unit in bad:
                self.done[unit] = 0
            if bad:
                self.log("%d finished piece(s) of the part failed their hash on resume: fetching them again" % len(bad))
        # What is not done may hold bytes of an unfinished earlier write: make it read as zeros again.
        for start, stop in _runs(self.done, 0):
            byte_start, byte_stop = start * self.unit, min(stop * self.unit, self.size)
            clean = punch_hole(self.fd, byte_start, byte_stop - byte_start)
            self.pending.append(_Range(start, stop, clean=clean))
        self.done_count = sum(self.done)
        self.done_bytes = sum(self._unit_span(u)[1] - self._unit_span(u)[0] for u in range(self.units) if self.done[u])
        self.resumed_bytes = self.done_bytes
        if self.resumed_bytes:
            self.log("resuming the segmented download: %d of %d bytes already done" % (self.done_bytes, self.size))

    def _piece_on_disk_ok(self, unit):
        start, stop = self._unit_span(unit)
        digest = new_hash(self.pieces.algorithm)
        self._hash_file_range([digest], start, stop, bytearray(min(HASH_READ_SIZE, self.unit)))
        return digest.hexdigest() == self.pieces.hashes[unit]

    def _plan_pending(self):
        if not self.pending:
            self.pending = [_Range(start, stop) for start, stop in _runs(self.done, 0)]
        # Cut the largest runs in two until every connection has one, and further (down to MIN_RUN_BYTES) up to
        # RUNS_PER_CONNECTION each: runs are taken from the front, so the finished prefix that the hashing thread
        # follows stays close behind the downloads and little is left to hash at the end.
        while True:
            largest = max(self.pending, key=lambda r: r.stop - r.start, default=None)
            if largest is None or largest.stop - largest.start < 2:
                break
            if len(self.pending) >= self.connections and (
                    len(self.pending) >= self.connections * RUNS_PER_CONNECTION
                    or (largest.stop - largest.start) // 2 * self.unit < MIN_RUN_BYTES):
                break
            middle = (largest.start + largest.stop) // 2
            self.pending.append(_Range(middle, largest.stop, clean=largest.clean))
            largest.stop = middle
        self.pending.sort(key=lambda r: r.start)

    # -- the run

    def run(self):
        started = time.monotonic()
        self._plan_units()
        self._open_part()
        try:
            self._plan_pending()
            workers = [threading.Thread(target=self._worker, name="metalink-segment-%d" % i)
                       for i in range(min(self.connections, max(1, self.units - self.done_count)))]
            hasher = threading.Thread(target=self._hash_frontier, name="metalink-hash")
            for thread in workers + [hasher]:
                thread.daemon = True
                thread.start()
            try:
                self._supervise(workers, hasher)
            except BaseException as exc:
                self._abort(exc if isinstance(exc, DirectDownloadError) else _Aborted())
                for thread in workers + [hasher]:
                    thread.join()
                raise
            if self.fatal is not None:
                raise self.fatal
            return self._finish(started)
        except ChecksumMismatch:
            _fs.unlink_if_present(self.sidecar_path)
            raise
        except BaseException:
            if self.done_count:
                self._save()
            raise
        finally:
            os.close(self.fd)

    def _supervise(self, workers, hasher):
        last = time.monotonic()
        wait = min(self.save_interval, 1.0) if self.limits is None else 0.25
        for thread in workers + [hasher]:
            while thread.is_alive():
                thread.join(timeout=wait)
                if self.limits is not None:
                    self._watch()
                now = time.monotonic()
                if now - last >= self.save_interval:
                    last = now
                    if self.fatal is None and self.done_count < self.units:
                        self._save()
                    if self.progress:
                        self.progress(self.done_bytes, self.size)

    def _finish(self, started):
        if self.done_count != self.units or self.digests is None:
            raise SourceError("the segmented download of %s stopped before the end" % self.file.name)
        if os.fstat(self.fd).st_size != self.size:
            raise SourceError("the part of %s is %d bytes, expected %d"
                              % (self.file.name, os.fstat(self.fd).st_size, self.size))
        if self.progress:
            self.progress(self.done_bytes, self.size)
        per_mirror = {}
        for url, count in self.received.items():
            key = redact_url(url)
            per_mirror[key] = per_mirror.get(key, 0) + count
        result = SegmentedResult(
            size=self.size, elapsed=round(time.monotonic() - started, 3),
            bytes_downloaded=sum(self.received.values()), resumed_bytes=self.resumed_bytes,
            bytes_per_mirror=per_mirror, mirror_errors=list(self.errors), digests=dict(self.digests),
            refetched_pieces=sorted(self.refetched), connections=self.connections, unit_size=self.unit,
            pieces_verified=self.pieces is not None,
        )
        result.served_urls = list(self.served)
        for checksum in self.checksums:
            actual = self.digests[checksum.algorithm]
            if not checksum.matches(actual):
                got = Checksum(checksum.algorithm, actual).cloudstack
                raise ChecksumMismatch(
                    "checksum mismatch for %s downloaded from %d mirror(s): expected %s, got %s"
                    % (self.file.name, len(per_mirror), checksum.cloudstack, got),
                    expected=checksum.cloudstack, actual=got, bytes_per_mirror=per_mirror,
                    mirror_errors=list(self.errors),
                )
        verified = strongest(self.checksums)
        result["checksum"] = (verified or Checksum(self.algorithms[-1], self.digests[self.algorithms[-1]])).cloudstack
        _fs.unlink_if_present(self.sidecar_path)
        return result

    def _save(self):
        with self.cond:
            runs = _runs(self.done, 1)
            received = dict(self.received)
        try:
            # The bitmap must never claim bytes that a crash could lose.
            os.fdatasync(self.fd)
            _fs.write_json_atomic(self.sidecar_path, dict(
                version=SEGMENTS_SIDECAR_VERSION, identity=self._identity(), done=runs, size=self.size,
                unit=self.unit, bytes_done=self.done_bytes,
                bytes_per_mirror={redact_url(url): count for url, count in received.items()},
                updated_at=int(time.time()), pid=os.getpid(),
            ))
        except OSError as exc:
            self.log("could not save the resume state %s: %s" % (self.sidecar_path, exc))

    def _watch(self):
        """lowest_speed and timeout: close the connections that are too slow; stop everything past the timeout."""
        with self.cond:
            tasks = [task for task in self.active if task.body is not None]
        if self.limits.budget.expired():
            self._abort(self.limits.timeout_error(done=self.done_bytes))
            for task in tasks:
                task.body.close()
            return
        for task in tasks:
            error = task.limit.check()
            if error is not None:
                task.slow = error
                self.log("%s: %s" % (task.mirror.redacted, error.msg))
                task.body.close()

    def _abort(self, exc):
        with self.cond:
            if self.fatal is None:
                self.fatal = exc
            self.cond.notify_all()

    # -- scheduling (all under self.cond)

    def _cap(self, mirror):
        alive = max(1, sum(1 for m in self.mirrors if m.url not in self.dead))
        cap = self.per_mirror or -(-self.connections // alive)
        if mirror.max_connections:
            cap = min(cap, mirror.max_connections)
        return max(1, cap)

    def _pick_mirror(self, avoid):
        """The least busy usable mirror (not in ``avoid`` unless nothing else is alive); None when all usable ones
        are at their connection cap; False when no mirror is alive."""
        alive = [m for m in self.mirrors if m.url not in self.dead]
        if not alive:
            return False
        preferred = [m for m in alive if m.url not in avoid] or alive
        free = [m for m in preferred if self.mirror_active[m.url] < self._cap(m)]
        if not free:
            return None
        return min(free, key=lambda m: (self.mirror_active[m.url], m.rank))

    def _start(self, mirror, start, stop, avoid, clean):
        task = _Task(mirror, start, stop, avoid, clean)
        self.active.append(task)
        self.mirror_active[mirror.url] += 1
        return task

    def _take(self):
        with self.cond:
            while True:
                if self.fatal is not None or self.done_count == self.units:
                    return None
                for index, pending in enumerate(self.pending):
                    mirror = self._pick_mirror(pending.avoid)
                    if mirror is False:
                        self.fatal = self._no_mirror_left()
                        self.cond.notify_all()
                        return None
                    if mirror is not None:
                        del self.pending[index]
                        return self._start(mirror, pending.start, pending.stop, pending.avoid, pending.clean)
                task = self._steal()
                if task is not None:
                    return task
                if not self.pending and not self.active:  # pragma: no cover - every unit is done, pending or active
                    self.fatal = SourceError("internal error: %d units of %s have no owner"
                                             % (self.units - self.done_count, self.file.name))
                    return None
                self.cond.wait(1.0)

    def _steal(self):
        """Take over the second half of the largest run still being fetched."""
        victim, best = None, 1
        for task in self.active:
            remaining = task.stop - task.next - 1
            if remaining > best:
                victim, best = task, remaining
        if victim is None:
            return None
        mirror = self._pick_mirror(frozenset())
        if not mirror:
            return None
        middle = victim.stop - best // 2
        task = self._start(mirror, middle, victim.stop, frozenset(), victim.clean)
        victim.stop = middle
        return task

    def _no_mirror_left(self):
        summary = "; ".join("%s: %s" % (e["url"], e["error"]) for e in self.errors[-10:])
        ranges = bool(self.no_range) and self.no_range >= {m.url for m in self.mirrors} - self.refused
        return SourceError("metalink %s: no mirror left for the segmented download, %d of %d bytes done (%s)"
                           % (self.file.name, self.done_bytes, self.size, summary),
                           mirror_errors=list(self.errors), ranges_unsupported=ranges)

    def _mirror_failed(self, mirror, exc, fatal_for_mirror=False):
        with self.cond:
            self.errors.append(dict(url=mirror.redacted, error=_error_text(exc)))
            self.mirror_failures[mirror.url] += 1
            if fatal_for_mirror or self.mirror_failures[mirror.url] >= self.max_failures:
                if mirror.url not in self.dead:
                    self.dead.add(mirror.url)
                    self.log("mirror %s dropped: %s" % (mirror.redacted, _error_text(exc)))
            self.cond.notify_all()

    def _release(self, task):
        punched = True
        if task.dirty and task.next < task.stop:
            start, stop = self._unit_span(task.next)
            punched = punch_hole(self.fd, start, stop - start)
        with self.cond:
            self.active.remove(task)
            self.mirror_active[task.mirror.url] -= 1
            if task.received:
                self.received[task.mirror.url] = self.received.get(task.mirror.url, 0) + task.received
            if task.next < task.stop and self.fatal is None:
                avoid = task.avoid | {task.mirror.url} if task.failed else task.avoid
                if task.dirty and not punched:
                    self.pending.append(_Range(task.next, task.next + 1, avoid, clean=False))
                    if task.next + 1 < task.stop:
                        self.pending.append(_Range(task.next + 1, task.stop, avoid, clean=task.clean))
                else:
                    self.pending.append(_Range(task.next, task.stop, avoid, clean=task.clean))
                self.pending.sort(key=lambda r: r.start)
            self.cond.notify_all()

    # -- workers

    def _worker(self):
        sources = {}
        buf = bytearray(self.block_size)
        try:
            while True:
                task = self._take()
                if task is None:
                    return
                try:
                    self._run_task(task, sources, buf)
                finally:
                    self._release(task)
        except _Aborted:
            return
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            # NotEnoughSpace, a bug: stop every worker, the caller re-raises it.
            self._abort(exc if isinstance(exc, DirectDownloadError) else SourceError(
                "the segmented download failed: %s" % _error_text(exc), error=repr(exc)))
        finally:
            for source in sources.values():
                close = getattr(source, "close", None)
                if close:
                    close()

    def _run_task(self, task, sources, buf):
        mirror = task.mirror
        with self.cond:
            start, end = task.next * self.unit, min(task.stop * self.unit, self.size)
        try:
            source = sources.get(mirror.url)
            if source is None:
                source = sources[mirror.url] = self.open_source(mirror.url)
            body = source.open(offset=start, validators=None, end=end)
        except (SourceError, InvalidInput, OSError) as exc:
            task.failed = True
            details = getattr(exc, "details", {})
            with self.cond:
                if details.get("reason") == "no_range":
                    self.no_range.add(mirror.url)
                elif "status" not in details:
                    self.refused.add(mirror.url)
            self._mirror_failed(mirror, exc, fatal_for_mirror=True)
            return
        if self.limits is not None:
            task.limit = self.limits.connection(mirror.redacted)
            task.body = body
        try:
            if body.offset != start:
                with self.cond:
                    self.no_range.add(mirror.url)
                raise _Unusable("does not serve exact byte ranges (asked byte %d, got %d)" % (start, body.offset))
            if body.size is not None and body.size != self.size:
                raise _Unusable("the mirror's file is %d bytes, expected %d" % (body.size, self.size))
            while True:
                with self.cond:
                    if self.fatal is not None or task.next >= task.stop or mirror.url in self.dead:
                        return
                    unit = task.next
                good = self._fetch_unit(task, body, unit, buf)
                self._unit_fetched(task, unit, good)
        except _Unusable as exc:
            task.failed = True
            self._mirror_failed(mirror, exc, fatal_for_mirror=True)
        except NotEnoughSpace:
            raise
        except (SourceError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NotEnoughSpace("the pool filled up while writing (%s)" % exc.strerror) from exc
            task.failed = True
            self._mirror_failed(mirror, task.slow or exc)
        finally:
            task.body = None
            body.close()

    def _fetch_unit(self, task, body, unit, buf):
        """Receive unit ``unit`` from ``body`` into the part; True when it passed its piece hash (or has none)."""
        start, stop = self._unit_span(unit)
        writer = SparseWriter(self.fd, offset=start, block_size=self.block_size, sparse=self.sparse and task.clean)
        piece = new_hash(self.pieces.algorithm) if self.pieces is not None else None
        left = stop - start
        task.dirty = True
        while left:
            if self.fatal is not None:
                raise _Aborted()
            chunk = buf if left >= len(buf) else bytearray(left)
            count = body.readinto(chunk)
            if not count:
                raise SourceError("the mirror ended the range early, at byte %d" % (stop - left))
            task.received += count
            if task.limit is not None:
                task.limit.received(count)
            if piece is not None:
                piece.update(chunk if count == len(chunk) else memoryview(chunk)[:count])
            writer.write(chunk, count)
            left -= count
        return piece is None or piece.hexdigest() == self.pieces.hashes[unit]

    def _unit_fetched(self, task, unit, good):
        mirror = task.mirror
        if not good:
            start, stop = self._unit_span(unit)
            clean = punch_hole(self.fd, start, stop - start)
            self._mirror_failed(mirror, SourceError("piece %d (bytes %d-%d) failed its %s check"
                                                    % (unit, start, stop - 1, self.pieces.algorithm)))
            self.log("piece %d from %s is corrupt: fetching it again from another mirror" % (unit, mirror.redacted))
        with self.cond:
            task.dirty = False
            task.next = unit + 1
            if good:
                self.done[unit] = 1
                self.done_count += 1
                start, stop = self._unit_span(unit)
                self.done_bytes += stop - start
                if mirror.url not in self.served:
                    self.served.append(mirror.url)
            else:
                self.refetched.append(unit)
                self.pending.append(_Range(unit, unit + 1, task.avoid | {mirror.url}, clean=clean))
                self.pending.sort(key=lambda r: r.start)
            self.cond.notify_all()

    # -- whole-file hash, in order, behind the downloaders

    def _hash_frontier(self):
        hashers = [new_hash(a) for a in self.algorithms]
        buf = bytearray(HASH_READ_SIZE)
        unit = 0
        try:
            while unit < self.units:
                with self.cond:
                    while not self.done[unit] and self.fatal is None:
                        self.cond.wait(1.0)
                    if self.fatal is not None:
                        return
                    stop = unit
                    while stop < self.units and self.done[stop]:
                        stop += 1
                self._hash_file_range(hashers, unit * self.unit, min(stop * self.unit, self.size), buf)
                unit = stop
            self.digests = {a: h.hexdigest() for a, h in zip(self.algorithms, hashers)}
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            self._abort(exc if isinstance(exc, DirectDownloadError) else SourceError(
                "hashing the part failed: %s" % _error_text(exc)))

    def _hash_file_range(self, hashers, start, stop, buf):
        view = memoryview(buf)
        offset = start
        while offset < stop:
            want = min(len(buf), stop - offset)
            count = os.preadv(self.fd, [view[:want]], offset)
            if not count:
                raise SourceError("the part ended at byte %d while hashing" % offset)
            for hasher in hashers:
                hasher.update(view[:count])
            offset += count
