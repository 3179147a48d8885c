# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""A generic description of one file to fetch: its size, checksums, piece hashes, the ordered sources that serve
it and a file-level connection cap. The transfer (_transfer) works from a description and nothing else; a Metalink
(_metalink, the pure parser) is converted into one by :func:`from_metalink`, a URL and its ``mirrors`` option by
:func:`from_urls`. The parser's ``MetalinkFile`` and ``Mirror`` are a :class:`FileDescription` and a
:class:`SourceRef` themselves, so the checksum rules (``checksum``, ``verifiable``, ``expected_checksums``) and the
result summary have this one home; the Metalink adds only its own refusal.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import Checksum, strongest
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import (
    SUPPORTED_SCHEMES,
    redact_url,
    url_scheme,
    url_secret_values,
)


class SourceRef:
    """One source of the file. ``rank`` is its position in the order to try (0 first); ``max_connections`` caps the
    connections to that server (Metalink 3 ``url@maxconnections``). ``peer`` marks a fan-out peer (another host
    of the deployment running ``peer_server``), ``fingerprint`` its certificate pin (None: the request's)."""

    __slots__ = ("url", "rank", "priority", "preference", "location", "type", "max_connections", "peer",
                 "fingerprint")

    def __init__(self, url, rank=0, priority=None, preference=None, location=None, type=None,  # pylint: disable=redefined-builtin
                 max_connections=None, peer=False, fingerprint=None):
        self.url = url
        self.rank = rank
        self.priority = priority
        self.preference = preference
        self.location = location
        self.type = type
        self.max_connections = max_connections
        self.peer = bool(peer)
        self.fingerprint = fingerprint

    @property
    def redacted(self) -> str:
        return redact_url(self.url)

    def as_dict(self) -> dict[str, Any]:
        return dict(url=self.redacted, rank=self.rank, priority=self.priority, preference=self.preference,
                    location=self.location, type=self.type, max_connections=self.max_connections, peer=self.peer)

    def __repr__(self):
        return "SourceRef(%s, rank=%d)" % (self.redacted, self.rank)


@dataclasses.dataclass(eq=False, repr=False)
class FileDescription:
    """What to fetch (``name``, ``size`` or None), how to verify it (``hashes``: file-level checksums; ``pieces``:
    a ``_metalink.Pieces``-like object with ``length``, ``algorithm``, ``hashes`` or None) and from where
    (``sources``, in the order to try). ``max_connections`` caps the connections of the whole file (None: no cap);
    ``notes`` are operator warnings from the conversion; ``document_url`` names the description's origin."""

    name: str
    size: int | None = None
    hashes: list = ()
    pieces: object = None
    sources: list = ()
    max_connections: int | None = None
    notes: list = ()
    version: str | None = None
    document_url: str | None = None
    # No size is known before the transfer: a segmented transfer asks the sources (a URL with mirrors).
    probe_size: bool = False
    # What decides the expected checksums when the description comes from a document with rules of its own (a
    # MetalinkFile: e.g. a document whose hashes are all unusable is refused without a user checksum).
    verification: object = None

    def __post_init__(self):
        # Each description owns its lists (the conversions append notes and reorder sources).
        self.hashes = list(self.hashes)
        self.sources = list(self.sources)
        self.notes = list(self.notes)

    @property
    def mirrors(self) -> list[SourceRef]:
        """The sources (the name a Metalink gives them)."""
        return self.sources

    @property
    def checksum(self) -> Checksum | None:
        """The strongest file-level hash (SHA-512 > SHA-384 > SHA-256 > SHA-224 > SHA-1 > MD5), or None."""
        return strongest(self.hashes)

    @property
    def verifiable(self) -> bool:
        """True when the bytes can be checked against the description (a file hash or a full piece list)."""
        return bool(self.hashes or self.pieces)

    def expected_checksums(self, user_checksum: Checksum | None = None) -> list[Checksum]:
        """The digests the file must match: the user's checksum when given and the strongest file-level hash (both
        must match). Refuses at once a user checksum that contradicts the description. A description converted from
        a Metalink asks the parsed document (its rules stay in one place, the parser)."""
        if self.verification is not None:
            return list(self.verification.expected_checksums(user_checksum))
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

    def as_dict(self) -> dict[str, Any]:
        """A summary for module results (URLs redacted)."""
        return dict(
            name=self.name, size=self.size, version=self.version,
            hashes=[c.cloudstack for c in self.hashes],
            checksum=self.checksum.cloudstack if self.checksum else None,
            pieces=dict(length=self.pieces.length, algorithm=self.pieces.algorithm, count=len(self.pieces.hashes))
            if self.pieces else None,
            mirrors=[m.as_dict() for m in self.sources], notes=list(self.notes),
            max_connections=self.max_connections,
        )

    def __repr__(self):
        return "FileDescription(%r, size=%r, %d sources)" % (self.name, self.size, len(self.sources))


def from_metalink(metalink_file: FileDescription, document_url: str | None = None) -> FileDescription:
    """The description of a parsed ``_metalink.MetalinkFile`` (its mirrors in the parser's order)."""
    sources = [SourceRef(m.url, m.rank, priority=m.priority, preference=m.preference, location=m.location,
                         type=m.type, max_connections=m.max_connections) for m in metalink_file.mirrors]
    return FileDescription(metalink_file.name, metalink_file.size, metalink_file.hashes, metalink_file.pieces,
                           sources, max_connections=getattr(metalink_file, "max_connections", None),
                           notes=metalink_file.notes, version=metalink_file.version, document_url=document_url,
                           verification=metalink_file)


MIRROR_KEYS = ("url", "priority", "location", "peer", "fingerprint")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "")


def parse_mirrors(mirrors: Iterable[str | dict[str, Any]] | None, peers: bool = False) -> list[tuple[Any, ...]]:
    """The ``mirrors`` option: strings or ``{url, priority, location, peer, fingerprint}`` dicts, as
    ``[(url, priority, location)]``, or with ``peers=True`` as ``[(url, priority, location, peer, fingerprint)]``.
    Raises InvalidInput for anything else (the URL is never shown unredacted)."""
    parsed = []
    for index, entry in enumerate(mirrors or ()):
        peer, fingerprint = False, None
        if isinstance(entry, str):
            url, priority, location = entry, None, None
        elif isinstance(entry, dict):
            unknown = set(entry) - set(MIRROR_KEYS)
            if unknown:
                raise InvalidInput("mirrors[%d] has unknown keys: %s (allowed: %s)"
                                   % (index, ", ".join(sorted(str(k) for k in unknown)), ", ".join(MIRROR_KEYS)))
            url, priority, location = entry.get("url"), entry.get("priority"), entry.get("location")
            if priority is not None:
                try:
                    priority = int(priority)
                except (TypeError, ValueError):
                    raise InvalidInput("mirrors[%d].priority must be a whole number" % index) from None
                if not 1 <= priority <= 999999:
                    raise InvalidInput("mirrors[%d].priority must be from 1 to 999999" % index)
            location = str(location).strip().lower() or None if location is not None else None
            peer = _boolean(entry.get("peer", False), "mirrors[%d].peer" % index)
            fingerprint = entry.get("fingerprint")
            if fingerprint is not None:
                if not peer:
                    raise InvalidInput("mirrors[%d].fingerprint is only for a peer (peer: true)" % index)
                fingerprint = str(fingerprint).strip() or None
        else:
            raise InvalidInput("mirrors[%d] must be a URL or a dict with url, priority, location" % index)
        if not isinstance(url, str) or not url:
            raise InvalidInput("mirrors[%d] has no url" % index)
        try:
            scheme = url_scheme(url)
        except ValueError:
            scheme = None
        if scheme not in SUPPORTED_SCHEMES:
            raise InvalidInput("mirrors[%d] %s: unsupported scheme %r (use %s)"
                               % (index, redact_url(url), scheme, ", ".join(SUPPORTED_SCHEMES)))
        if peer and scheme != "https":
            raise InvalidInput("mirrors[%d] %s: a peer is reached over https only" % (index, redact_url(url)))
        parsed.append((url, priority, location, peer, fingerprint) if peers else (url, priority, location))
    return parsed


def _boolean(value, what):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise InvalidInput("%s must be true or false" % what)


def protect_mirrors(module: Any) -> None:
    """For the modules with a ``mirrors`` option (download, template): ``mirrors`` is no_log like ``url``: Ansible
    would mask every string in it (locations and priorities too) in every result. Keep only the secret parts of
    each mirror URL masked (``_urls.url_secret_values``)."""
    for entry in module.params.get("mirrors") or ():
        if isinstance(entry, dict):
            leaves, url = [str(value) for value in entry.values()], entry.get("url")
        else:
            leaves, url = [str(entry)], entry
        for leaf in leaves:
            module.no_log_values.discard(leaf)
        if isinstance(url, str) and url:
            module.no_log_values.update(url_secret_values(url))


def from_urls(url: str, name: str, mirrors: Iterable[str | dict[str, Any]] | None = (),
              location_preference: Iterable[str] | None = ()) -> FileDescription:
    """The description of ``url`` and its further ``mirrors`` (see :func:`parse_mirrors`): the URL first, then the
    mirrors by priority (lower first, none last), then the caller's location preference, then the order given.
    Size and hashes are unknown (the user's checksum verifies the file)."""
    entries = [(url, None, None, False, None)] + parse_mirrors(mirrors, peers=True)
    locations = [str(loc).strip().lower() for loc in location_preference or () if str(loc).strip()]
    notes, unique = [], []
    for index, (entry_url, priority, location, peer, fingerprint) in enumerate(entries):
        if any(entry_url == item[0] for item in unique):
            notes.append("ignored a duplicate mirror %s" % redact_url(entry_url))
            continue
        unique.append((entry_url, priority, location, index, peer, fingerprint))

    def key(item):
        _url, priority, location, index = item[:4]
        first = priority if priority is not None else (0 if index == 0 else math.inf)
        where = locations.index(location) if location in locations else len(locations)
        return (first, where, index)

    ordered = sorted(unique, key=key)
    sources = [SourceRef(u, rank, priority=p, location=loc, type=url_scheme(u), peer=peer, fingerprint=fp)
               for rank, (u, p, loc, _i, peer, fp) in enumerate(ordered)]
    return FileDescription(name, sources=sources, notes=notes, document_url=url, probe_size=True)
