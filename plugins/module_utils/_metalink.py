# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Metalink (RFC 5854 version 4, and version 3): parse a document into one file's mirrors and hashes. The parser
is pure and knows nothing of transfers: the engine converts a :class:`MetalinkFile` into a generic description
(``_description.from_metalink``) and fetches it with ``_transfer``.

What CloudStack gets wrong and this module does not: a random ``<hash>`` (sometimes a piece hash) as the file
checksum; Metalink 3 ``preference`` and ``location`` ignored; an empty metalink failing with an index error; a
corrupt download retried from the same mirror. What aria2 users asked for (aria2 #1257): a corrupt piece is
fetched again from another mirror, never the whole file.

:func:`parse_metalink` turns the document into a :class:`MetalinkFile` (name, size, file-level hashes, piece
hashes, mirrors in the order to try, the file's connection cap, notes for the operator); :func:`load_metalink`
fetches the document first.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urljoin, urlsplit, urlunsplit, uses_netloc, uses_relative

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import (
    Checksum,
    STRENGTH,
    canonical_algorithm,
    strongest,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._description import FileDescription, SourceRef
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import read_bounded
from ansible_collections.directdownload.kvm.plugins.module_utils._source import Source
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

    def count_for(self, size: int) -> int:
        return (size + self.length - 1) // self.length

    def __repr__(self):
        return "Pieces(%d x %d B, %s)" % (len(self.hashes), self.length, self.algorithm)


class Mirror(SourceRef):
    """One ``<url>`` of the file: a :class:`_description.SourceRef`. ``rank`` is its position in the order to try
    (0 first)."""

    __slots__ = ()

    def __repr__(self):
        return "Mirror(%s, rank=%d)" % (self.redacted, self.rank)


class MetalinkFile(FileDescription):
    """One ``<file>`` of a metalink: what to fetch, from where (``mirrors`` in try order), and how to verify it; a
    :class:`_description.FileDescription` (which holds the checksum rules common to every description) with the
    Metalink's own refusal.

    ``hashes`` holds file-level hashes only (piece hashes are in ``pieces``); ``notes`` are operator warnings
    about what was skipped (unknown hash types, other schemes, torrents, unusable piece lists).
    ``max_connections`` is the cap of Metalink 3 ``<resources maxconnections>`` on the connections of the whole
    file (None: no cap); ``unusable_hashes`` describes the hashes and piece lists that could not be used (no type,
    unknown type, malformed), for the refusal in :meth:`expected_checksums`.
    """

    unusable_hashes = ()

    def __init__(self, name, size, hashes, pieces, mirrors, notes, version, max_connections=None):
        super().__init__(name, size, hashes, pieces, mirrors, max_connections=max_connections, notes=notes,
                         version=version)

    def expected_checksums(self, user_checksum: Optional[Checksum] = None) -> list[Checksum]:
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
        return super().expected_checksums(user_checksum)

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


def parse_metalink(data: bytes, name: Optional[str] = None, location_preference: Iterable[str] = (),
                   max_size: int = DEFAULT_MAX_DOCUMENT_SIZE, base_url: Optional[str] = None) -> MetalinkFile:
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


def read_document(body: Any, max_size: int = DEFAULT_MAX_DOCUMENT_SIZE) -> bytes:
    """Read a metalink document from a Source body (see docs/architecture.md), refusing one above ``max_size``
    bytes before it is all in memory."""
    return read_bounded(body, max_size, lambda: InvalidInput(
        "the metalink document at %s is larger than %d bytes: refused" % (redact_url(getattr(body, "url", None)), max_size),
        max_size=max_size))


def load_metalink(url: str, open_source: Callable[[str], Source], name: Optional[str] = None,
                  location_preference: Iterable[str] = (), max_size: int = DEFAULT_MAX_DOCUMENT_SIZE) -> MetalinkFile:
    """Fetch the metalink document at ``url`` with ``open_source(url)`` (an http/https/nfs Source) and parse it."""
    body = open_source(url).open(offset=0)
    try:
        data = read_document(body, max_size)
    finally:
        body.close()
    # The base of relative references is the URL the document came from, after redirects (RFC 3986 5.1.3).
    return parse_metalink(data, name=name, location_preference=location_preference, max_size=max_size,
                          base_url=getattr(body, "url", None) or url)
