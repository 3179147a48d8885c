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

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import (
    Checksum,
    STRENGTH,
    canonical_algorithm,
    strongest,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import read_bounded
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import (
    METALINK_SUFFIXES,
    redact_url,
    safe_file_name,
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
ALLOWED_SCHEMES = ("http", "https", "nfs")

# Declarations are what billion-laughs and XXE documents need; no metalink has a use for them.
_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)
_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


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
    """

    def __init__(self, name, size, hashes, pieces, mirrors, notes, version, max_connections=None):
        self.max_connections = max_connections
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
        when one was given (both must match). Refuses at once a user checksum that contradicts the document."""
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
        value = int(raw.strip())
    except ValueError:
        notes.append("ignored the %s attribute %r of a <%s>: not an integer"
                     % (attribute, _shorten(raw, 40), _local(element)))
        return None
    if (low is not None and value < low) or (high is not None and value > high):
        notes.append("ignored the %s attribute %d of a <%s>: out of range" % (attribute, value, _local(element)))
        return None
    return value


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


def parse_metalink(data, name=None, location_preference=(), max_size=DEFAULT_MAX_DOCUMENT_SIZE):
    """Parse a Metalink 4 or 3 document (detected by its namespace) and return the :class:`MetalinkFile` to fetch.

    ``name`` picks one ``<file>`` of a document that lists several; with one file it may be omitted (given, it
    must match). ``location_preference`` (e.g. ``["de", "fr"]``) orders mirrors of equal priority. Raises
    :class:`InvalidInput` with a clear message for anything unusable.
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
    file_name = element.get("name")
    try:
        safe_file_name(file_name)
    except ValueError as exc:
        raise InvalidInput("the metalink file name is refused: %s" % exc, name=_shorten(file_name or "", 80)) from exc
    parse = _parse_v4_file if version == 4 else _parse_v3_file
    size, hashes, pieces, urls = parse(element, notes)
    mirrors = _order_mirrors(urls, version, location_preference, notes)
    if not mirrors:
        raise InvalidInput("the metalink lists no usable URL for %s (allowed schemes: %s)%s"
                           % (file_name, ", ".join(ALLOWED_SCHEMES), "; " + "; ".join(notes) if notes else ""),
                           notes=notes)
    if pieces is not None and size is not None and len(pieces.hashes) != pieces.count_for(size):
        notes.append("ignored the piece hashes: %d listed, %d needed for %d bytes in pieces of %d"
                     % (len(pieces.hashes), pieces.count_for(size), size, pieces.length))
        pieces = None
    if pieces is not None and size is None:
        notes.append("ignored the piece hashes: the metalink gives no <size>")
        pieces = None
    return MetalinkFile(file_name, size, hashes, pieces, mirrors, notes, version)


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
    if not text.isdigit():
        raise InvalidInput("the metalink <size> %r is not a byte count" % _shorten(text, 40))
    size = int(text)
    if size == 0:
        raise InvalidInput("the metalink says the file is 0 bytes long: refused (an image is never empty)")
    return size


def _checksum(type_name, text, notes, what="hash"):
    """A Checksum for a ``<hash type=...>``, or None (unknown algorithm: noted)."""
    try:
        algorithm = canonical_algorithm(type_name)
    except InvalidInput:
        notes.append("ignored a %s of unsupported type %r" % (what, _shorten(type_name or "", 40)))
        return None
    try:
        return Checksum(algorithm, "".join(text.split()))
    except InvalidInput as exc:
        raise InvalidInput("the metalink has a malformed %s %s: %s" % (type_name, what, exc.msg)) from exc


def _file_hashes(elements, notes):
    hashes = []
    for element in elements:
        checksum = _checksum(element.get("type"), _text(element), notes)
        if checksum is None:
            continue
        for other in hashes:
            if other.algorithm == checksum.algorithm and other != checksum:
                raise InvalidInput("the metalink gives two different %s hashes for the file"
                                   % checksum.cloudstack.split("}")[0][1:])
        if checksum not in hashes:
            hashes.append(checksum)
    return hashes


def _pieces(elements, namespace, notes):
    """The usable ``<pieces>`` with the strongest known algorithm, or None."""
    best = None
    for element in elements:
        length = _int_attribute(element, "length", notes, low=1)
        try:
            algorithm = canonical_algorithm(element.get("type"))
        except InvalidInput:
            notes.append("ignored piece hashes of unsupported type %r" % _shorten(element.get("type") or "", 40))
            continue
        if length is None:
            notes.append("ignored %s piece hashes without a valid length" % algorithm)
            continue
        hash_elements = _children(element, namespace, "hash")
        if namespace == NS_V3 and any(h.get("piece") is not None for h in hash_elements):
            try:
                hash_elements = sorted(hash_elements, key=lambda h: int(h.get("piece")))
            except (TypeError, ValueError):
                notes.append("ignored %s piece hashes with a bad piece number" % algorithm)
                continue
        hashes = []
        for hash_element in hash_elements:
            checksum = _checksum(algorithm, _text(hash_element), notes, what="piece hash")
            hashes.append(checksum.hexdigest)
        if not hashes:
            notes.append("ignored an empty %s piece list" % algorithm)
            continue
        candidate = Pieces(length, algorithm, hashes)
        if best is None or STRENGTH.index(algorithm) > STRENGTH.index(best.algorithm):
            best = candidate
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


def _parse_v4_file(element, notes):
    size = _size(_child(element, NS_V4, "size"))
    hashes = _file_hashes(_children(element, NS_V4, "hash"), notes)
    pieces = _pieces(_children(element, NS_V4, "pieces"), NS_V4, notes)
    urls = []
    for index, url in enumerate(_children(element, NS_V4, "url")):
        urls.append(_Url(_text(url), index, priority=_int_attribute(url, "priority", notes, low=1, high=999999),
                         location=(url.get("location") or "").strip().lower() or None))
    metaurls = _children(element, NS_V4, "metaurl")
    if metaurls:
        notes.append("ignored %d <metaurl> (%s): only http, https and nfs mirrors are used"
                     % (len(metaurls), ", ".join(sorted({m.get("mediatype") or "?" for m in metaurls}))))
    return size, hashes, pieces, urls


def _parse_v3_file(element, notes):
    size = _size(_child(element, NS_V3, "size"))
    verification = _child(element, NS_V3, "verification")
    hashes, pieces = [], None
    if verification is not None:
        hashes = _file_hashes(_children(verification, NS_V3, "hash"), notes)
        pieces = _pieces(_children(verification, NS_V3, "pieces"), NS_V3, notes)
    urls = []
    index = 0
    for resources in _children(element, NS_V3, "resources"):
        group_connections = _int_attribute(resources, "maxconnections", notes, low=1)
        for url in _children(resources, NS_V3, "url"):
            connections = _int_attribute(url, "maxconnections", notes, low=1) or group_connections
            urls.append(_Url(_text(url), index, preference=_int_attribute(url, "preference", notes, low=0, high=100),
                             location=(url.get("location") or "").strip().lower() or None,
                             type=(url.get("type") or "").strip().lower() or None, max_connections=connections))
            index += 1
    return size, hashes, pieces, urls


def _order_mirrors(urls, version, location_preference, notes):
    """Keep the usable URLs and sort them: priority (v4, lower first) or preference (v3, higher first), missing
    last; then the caller's location preference; then document order."""
    locations = [str(loc).strip().lower() for loc in location_preference or () if str(loc).strip()]
    usable = []
    skipped = {}
    torrents = 0
    nested = 0
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
    return parse_metalink(data, name=name, location_preference=location_preference, max_size=max_size)
