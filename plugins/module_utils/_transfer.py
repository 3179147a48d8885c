# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The multi-source transfer of one file (a ``_description.FileDescription``: a Metalink's, or a URL with
``mirrors``).

- :class:`MultiSource` is a Source (docs/architecture.md) over the description's sources: the engine streams from
  it as from one URL (``_download._Transfer``, the ``_sink.stream_to_file`` pipeline) and it fails over between
  sources underneath, in the order of :class:`_selector.SourceSelector`.
- :func:`segmented_download` fills the ``.part`` from several sources at once with exact ranges: a scheduler gives
  ranges of the piece map (``_pieces``) to connections, spread over the sources, idle connections take over half of
  the largest range left (so fast sources do more), each piece is checked against its hash as it arrives (a bad
  one is fetched again alone, from another source, and its source quarantined), and the whole-file hash follows the
  finished prefix (the hash frontier). It writes through ``_sink.SparseWriter``; its resume state is the
  ``segments`` key of the same ``.part.json`` sidecar as a single stream, written with the same progress figures.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from operator import attrgetter
from typing import Any, Callable, Iterable, Mapping, Optional

from ansible_collections.directdownload.kvm.plugins.module_utils import _fs
from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import (
    Checksum,
    STRENGTH,
    canonical_algorithm,
    new_hash,
    strongest,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._description import FileDescription, SourceRef
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    ChecksumMismatch,
    DirectDownloadError,
    InvalidInput,
    NotEnoughSpace,
    SourceError,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._pieces import (
    PieceMap,
    Range,
    plan_ranges,
    unit_size_for,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._rate import Limits
from ansible_collections.directdownload.kvm.plugins.module_utils._selector import SourceSelector, error_text, is_busy
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import SparseWriter, punch_hole
from ansible_collections.directdownload.kvm.plugins.module_utils._source import Source
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import redact_url

# Hashing reads back what was written, from page cache (~10 GB/s with 1 MiB reads).
HASH_READ_SIZE = 1024 * 1024


def sidecar_path(part_path: str) -> str:
    """The one sidecar of a ``.part`` (``_sink.PartFile.sidecar_path``): progress figures and resume state."""
    return part_path + ".json"


def mirror_key(url: str) -> str:
    """What the ``.part`` sidecar stores to name the source that served it: a digest, since source URLs may carry
    credentials or signed query strings and sidecars are files."""
    return "sha256:" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]


_error_text = error_text


# --------------------------------------------------------------------------------------------------------------
# One source at a time, with failover: the Source contract over the description's sources


class MultiSource(Source):
    """A Source (docs/architecture.md) that serves the description's file from its sources, in order.

    ``open()`` tries the sources until one answers with a usable body (a refused connection, a timeout, a non-2xx,
    a size other than the description's move to the next). While streaming, a timeout or a truncated body
    continues from the same byte on the next source when there is a hash to check the joined bytes against;
    without one a transfer is never stitched from two sources (the engine retries, from byte 0 on another
    source). ``next_mirror_after_mismatch()`` quarantines the sources whose bytes failed the checksum.

    ``open_source(url)`` returns the Source of one URL (the engine's factory with its options bound).
    ``mirror_errors`` lists ``{"url": redacted, "error": message}`` for each failure; ``bytes_per_mirror`` maps
    redacted source URLs to the bytes they delivered; :meth:`source_report` is the ``sources`` result.
    """

    def __init__(self, description: FileDescription, open_source: Callable[[str], Source],
                 connections: Optional[int] = 1, document_url: Optional[str] = None) -> None:
        self.file = description
        self.document_url = document_url or description.document_url
        cap = description.max_connections
        self.connections = max(1, min(int(connections or 1), cap or int(connections or 1)))
        self.bytes_per_mirror = {}
        self.selector = SourceSelector(description.sources)
        self._open_source = open_source
        self._sources = {}
        self._user_checksum = False
        self.served_by = []

    # -- what the engine asks before and after a transfer

    mirror_errors = property(attrgetter("selector.errors"))
    notes = property(attrgetter("file.notes"))
    size = property(attrgetter("file.size"))

    def expected_checksums(self, user_checksum: Optional[Checksum] = None) -> list[Checksum]:
        """See :meth:`FileDescription.expected_checksums`: every digest in the list must match."""
        expected = self.file.expected_checksums(user_checksum)
        self._user_checksum = self._user_checksum or user_checksum is not None
        return expected

    @property
    def verifiable(self) -> bool:
        """True when joined bytes of several sources will be checked: the description or the user gave a hash."""
        return self.file.verifiable or self._user_checksum

    @property
    def segmented(self) -> bool:
        """True when :meth:`download_segmented` should be used rather than one stream: several connections were
        asked for, or there are piece hashes (each piece verified, a bad one re-fetched alone). The size must be
        known, or asked of the sources (a URL with mirrors)."""
        if self.file.size is None and not (self.file.probe_size and len(self.file.sources) > 1):
            return False
        return self.connections > 1 or self.file.pieces is not None

    def mirrors(self) -> list[SourceRef]:
        """The sources still worth trying, in order (those set aside as too slow last)."""
        return self.selector.candidates()

    def set_aside_slow_mirror(self, served_url: Optional[str] = None) -> None:
        """The ``lowest_speed`` watchdog closed the connection: try the other sources first from now on. Only when
        joined bytes are verifiable (else the next source would start again from byte 0, which costs more than a
        slow source)."""
        if not self.verifiable:
            return
        for url in self.served_by or ([served_url] if served_url else []):
            self.selector.set_aside_slow(url)

    def source_report(self, bytes_served: Optional[int] = None) -> list[dict[str, Any]]:
        return self.selector.report()

    # -- Source contract

    def open(self, offset: int = 0, validators: Optional[Mapping[str, Optional[str]]] = None,
             end: Optional[int] = None) -> _FailoverBody:
        """Open the first source that answers. ``validators`` saved from an earlier body carry the source that
        served it (key ``mirror``): that source is tried first with them. Others resume at ``offset`` without
        validators when there is a hash to check the result, else they start again from byte 0."""
        validators = dict(validators or {})
        saved_mirror = validators.pop("mirror", None)
        candidates = self.mirrors()
        if offset and saved_mirror:
            slow = {m.url for m in candidates if self.selector.state(m.url).slow}
            candidates.sort(key=lambda m: (m.url in slow, mirror_key(m.url) != saved_mirror))
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
                return _FailoverBody(self, mirror, body, end, attempted)
        raise self.failure("every mirror failed", since=errors_before)

    def probe(self) -> dict[str, Any]:
        """``url_check``: the first source that answers a probe, with the size of the image (the description's
        size when it has one; never the size of a Metalink document)."""
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

    def discover_size(self) -> Optional[int]:
        """The size of the file when the description has none (a URL with mirrors): the first source that announces
        one. It becomes the description's size: every source must then serve that many bytes."""
        if self.file.size is None:
            for mirror in self.mirrors():
                try:
                    size = self._source(mirror).probe().get("size")
                except (SourceError, InvalidInput, OSError) as exc:
                    self.record_error(mirror, exc)
                    continue
                if size:
                    self.file.size = size
                    break
        return self.file.size

    def read_head(self, count: int) -> bytes:
        """The first ``count`` bytes of the file, from the first source that serves them."""
        errors_before = len(self.mirror_errors)
        for mirror in self.mirrors():
            try:
                return self._source(mirror).read_head(count)
            except (SourceError, InvalidInput, OSError) as exc:
                self.record_error(mirror, exc)
        raise self.failure("no mirror served the first bytes", since=errors_before)

    def next_mirror_after_mismatch(self, served_url: Optional[str] = None, expected: Optional[str] = None,
                                   actual: Optional[str] = None) -> bool:
        """The bytes just downloaded failed the checksum: quarantine the source(s) that served them. Returns True
        when another source is left (the caller discards the ``.part`` and opens again from byte 0), False when
        none is (the caller reports the mismatch)."""
        bad = list(self.served_by) or ([served_url] if served_url else [])
        peers = [m.url for m in self.file.sources if m.peer and m.url in bad]
        if peers and len(peers) < len(bad):
            # Bytes of the origin and of peers, joined, failed: the peers are the ones to doubt (the origin is
            # where every copy comes from); the next attempt goes without them.
            bad = peers
        detail = "checksum mismatch"
        if expected and actual:
            detail += " (expected %s, got %s)" % (expected, actual)
        for url in bad:
            self.selector.quarantine(url, detail)
        self.served_by = []
        return bool(self.mirrors())

    def download_segmented(self, part_path: str, checksums: Optional[Iterable[Checksum]] = None,
                           block_size: int = 64 * 1024, progress: Optional[Callable[[int, int], None]] = None,
                           log: Optional[Callable[[str], None]] = None, resume: bool = True,
                           **kwargs: Any) -> SegmentedResult:
        """Fill ``part_path`` from several sources at once: see :func:`segmented_download`."""
        options = dict(per_mirror_connections=None, unit_size=None, max_mirror_failures=3, save_interval=2.0,
                       algorithms=("sha256",), sparse=True, limits=None, state_writer=None)
        unknown = set(kwargs) - set(options)
        if unknown:
            raise TypeError("unknown arguments: %s" % ", ".join(sorted(unknown)))
        options.update(kwargs)
        job = _SegmentedDownload(self.file, self._open_source, part_path, self.connections, block_size, progress,
                                 checksums, log, resume, options["sparse"], self.mirrors(),
                                 options["per_mirror_connections"], options["unit_size"],
                                 options["max_mirror_failures"], options["save_interval"], options["algorithms"],
                                 options["limits"], options["state_writer"])
        try:
            return job.run()
        finally:
            # Also after a failure: the engine reports the errors, and a mismatch quarantines who served the bytes.
            self.selector.merge(job.selector)
            for url, count in job.received.items():
                key = redact_url(url)
                self.bytes_per_mirror[key] = self.bytes_per_mirror.get(key, 0) + count
            self.served_by = list(job.served)

    def close(self) -> None:
        for source in self._sources.values():
            source.close()
        self._sources.clear()

    # -- internals

    def _source(self, mirror):
        source = self._sources.get(mirror.url)
        if source is None:
            source = self._sources[mirror.url] = self._open_source(mirror.url)
        return source

    def record_error(self, mirror: SourceRef, exc: BaseException) -> None:
        self.selector.record_error(mirror, exc)

    def open_mirror(self, mirror: SourceRef, start: int, validators: Optional[Mapping[str, Optional[str]]],
                    end: Optional[int]) -> Any:
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

    def failure(self, what: str, since: int = 0) -> SourceError:
        errors = self.mirror_errors[since:] or self.mirror_errors
        summary = "; ".join("%s: %s" % (e["url"], e["error"]) for e in errors[-10:])
        error = SourceError("metalink %s: %s%s" % (self.file.name, what, " (%s)" % summary if summary else ""),
                            mirror_errors=list(errors))
        # Retryable here (elsewhere) when one of the failures was: when every source failed for good (404s, refused
        # ranges), retries only waste time.
        scopes = self.selector.scopes[since:] or self.selector.scopes
        if scopes:
            here, elsewhere = zip(*scopes)
            error.retry_scope(any(here), any(elsewhere))
        return error

    def count_bytes(self, mirror: SourceRef, count: int) -> None:
        key = mirror.redacted
        self.bytes_per_mirror[key] = self.bytes_per_mirror.get(key, 0) + count
        self.selector.count_bytes(mirror.url, count)


class _FailoverBody:
    """A body that moves to the next mirror when the current one fails mid-stream (see MultiSource)."""

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


# --------------------------------------------------------------------------------------------------------------
# Several sources at once: the scheduler over the piece map, into a pre-allocated sparse .part


class SegmentedResult(dict):
    """What :func:`segmented_download` did: ``size``, ``elapsed``, ``bytes_downloaded``, ``resumed_bytes``,
    ``bytes_per_mirror`` (redacted URL -> bytes), ``mirror_errors``, ``sources`` (SourceSelector.report), ``digests`` (algorithm -> hex of the whole
    file), ``checksum`` (``{ALG}hex`` verified or computed), ``refetched_pieces``, ``connections``, ``unit_size``,
    ``pieces_verified``. ``served_urls`` (attribute, not a key: URLs may hold credentials) lists the mirrors that
    delivered verified bytes."""

    served_urls = ()


class _Aborted(Exception):
    """Raised inside a worker when another part of the download failed first."""


class _Unusable(SourceError):
    """The mirror cannot take part at all in this download (no exact ranges, other size)."""


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


def segmented_download(description: FileDescription, open_source: Callable[[str], Source], part_path: str,
                       connections: Optional[int] = 2, block_size: int = 64 * 1024,
                       progress: Optional[Callable[[int, int], None]] = None,
                       checksums: Optional[Iterable[Checksum]] = None, log: Optional[Callable[[str], None]] = None,
                       resume: bool = True, sparse: bool = True, mirrors: Optional[Iterable[SourceRef]] = None,
                       per_mirror_connections: Optional[int] = None, unit_size: Optional[int] = None,
                       max_mirror_failures: int = 3, save_interval: float = 2.0,
                       algorithms: Optional[Iterable[str]] = ("sha256",), limits: Optional[Limits] = None,
                       state_writer: Optional[Callable[[int, int, dict[str, Any]], None]] = None) -> SegmentedResult:
    """Download the described file (``_description.FileDescription``) into ``part_path`` from several sources in
    parallel.

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
    Resume state is the ``segments`` key of the part's one sidecar (:func:`sidecar_path`, the ``.part.json`` of
    ``_sink.PartFile``): done units, rewritten every ``save_interval`` seconds after an ``fdatasync`` by
    ``state_writer(bytes_done, total, segments)`` (the engine's progress writer: bytes, rate, ETA and the same
    progress line as one stream), or without one as a minimal sidecar; done pieces are hashed again before they are
    trusted. The description's ``max_connections`` caps ``connections``. ``progress(bytes_done, total)`` is
    called from the calling thread.
    ``limits`` (``_rate.Limits``): ``max_rate`` is one bucket shared by every connection; a connection below
    ``lowest_speed`` is closed (its range goes back to the queue, another mirror first); past the ``timeout`` the
    download stops (resumable).
    """
    return _SegmentedDownload(description, open_source, part_path, connections, block_size, progress, checksums,
                              log, resume, sparse, mirrors, per_mirror_connections, unit_size, max_mirror_failures,
                              save_interval, algorithms, limits, state_writer).run()


class _SegmentedDownload:
    """One transfer in ranges of a description into a part (see :func:`segmented_download`)."""

    def __init__(self, description, open_source, part_path, connections, block_size, progress, checksums, log,
                 resume, sparse, mirrors, per_mirror_connections, unit_size, max_mirror_failures, save_interval,
                 algorithms, limits=None, state_writer=None):
        self.file = description
        self.open_source = open_source
        self.part_path = part_path
        self.sidecar_path = sidecar_path(part_path)
        self.state_writer = state_writer
        self.connections = max(1, int(connections or 1))
        if description.max_connections:
            self.connections = min(self.connections, description.max_connections)
        self.block_size = int(block_size)
        self.progress = progress
        self.checksums = list(checksums or [])
        self.log = log or (lambda message: None)
        self.resume = resume
        self.sparse = sparse
        self.mirrors = list(mirrors if mirrors is not None else description.sources)
        self.per_mirror = per_mirror_connections
        self.selector = SourceSelector(self.mirrors, max_mirror_failures)
        self.save_interval = save_interval
        self.algorithms = sorted({c.algorithm for c in self.checksums} | {canonical_algorithm(a) for a in algorithms or ()}
                                 or {"sha256"},
                                 key=STRENGTH.index)
        if not self.mirrors:
            raise SourceError("metalink %s: no mirror is left to try" % description.name)
        self.pieces = description.pieces
        self.unit_size = unit_size
        self.size = None
        self.unit = None
        self.units = 0
        self.quarantined = []
        self.fd = None
        self.cond = threading.Condition()
        self.map = None
        self.pending = []
        self.active = []
        self.no_range = set()  # mirrors that answered a ranged request with the whole file
        self.refused = set()  # mirrors that could not be reached at all
        self.fatal = None
        self.received = {}
        self.served = []
        self.refetched = []
        self.resumed_bytes = 0
        self.digests = None
        self.limits = limits if limits is not None and (limits.paced or limits.watched) else None

    # -- the piece map (read under self.cond)

    done = property(attrgetter("map.done"))
    done_count = property(attrgetter("map.done_count"))
    errors = property(attrgetter("selector.errors"))

    @property
    def done_bytes(self):
        return self.map.done_bytes if self.map is not None else 0

    # -- setup

    def _plan_units(self):
        self.size = self.file.size if self.file.size is not None else self._discover_size()
        self.unit = unit_size_for(self.size, self.block_size, self.pieces.length if self.pieces is not None else None,
                                  self.unit_size)
        self.map = PieceMap(self.size, self.unit)
        self.units = self.map.count

    def _discover_size(self):
        for mirror in self.mirrors:
            try:
                size = self.open_source(mirror.url).probe().get("size")
            except (SourceError, InvalidInput, OSError) as exc:
                self.selector.record_error(mirror, exc)
                continue
            if size:
                return size
        raise SourceError("metalink %s gives no <size> and no mirror told it: a segmented download needs it"
                          % self.file.name, mirror_errors=list(self.errors))

    def _unit_span(self, unit):
        return self.map.span(unit)

    def _identity(self):
        pieces = None
        if self.pieces is not None:
            digest = new_hash("sha256")
            digest.update(("%s:%d:" % (self.pieces.algorithm, self.pieces.length)).encode("ascii"))
            digest.update(",".join(self.pieces.hashes).encode("ascii"))
            pieces = digest.hexdigest()
        return dict(name=self.file.name, size=self.size, pieces=pieces,
                    hashes=sorted(c.cloudstack for c in self.file.hashes),
                    checksums=sorted(c.cloudstack for c in self.checksums))

    def _open_part(self):
        state = _fs.read_json(self.sidecar_path) if self.resume else None
        segments = state.get("segments") if isinstance(state, dict) else None
        # Without any hash, bytes kept from an earlier run could never be checked: start again.
        resumable = bool(self.pieces or self.file.hashes or self.checksums)
        if segments and resumable and self.map.load(segments, self._identity()):
            try:
                self.fd = _fs.open_regular(self.part_path, os.O_RDWR)
            except OSError:
                self.fd = None
            if self.fd is not None and os.fstat(self.fd).st_size == self.size:
                self._check_done()
                return
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self.map = PieceMap(self.size, self.unit)
        # A sidecar of another transfer (a single stream, another file): it does not describe this part.
        _fs.unlink_if_present(self.sidecar_path)
        self.fd = _fs.open_regular(self.part_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, self.size)

    def _check_done(self):
        """The map says which units were done: hash the pieces again, make the rest read as zeros."""
        if self.pieces is not None:
            bad = [unit for unit in range(self.units) if self.done[unit] and not self._piece_on_disk_ok(unit)]
            for unit in bad:
                self.map.mark_pending(unit)
            if bad:
                self.log("%d finished piece(s) of the part failed their hash on resume: fetching them again" % len(bad))
        # What is not done may hold bytes of an unfinished earlier write: make it read as zeros again.
        for start, stop in self.map.pending_runs():
            byte_start, byte_stop = start * self.unit, min(stop * self.unit, self.size)
            clean = punch_hole(self.fd, byte_start, byte_stop - byte_start)
            self.pending.append(Range(start, stop, clean=clean))
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
            self.pending = [Range(start, stop) for start, stop in self.map.pending_runs()]
        plan_ranges(self.pending, self.connections, self.unit)

    # -- the run

    def run(self):
        started = time.monotonic()
        self._plan_units()
        self._open_part()
        try:
            self._plan_pending()
            self._save()  # the sidecar at once: what a kill -9 leaves says which part this is
            workers = [threading.Thread(target=self._worker, name="dd-range-%d" % i)
                       for i in range(min(self.connections, max(1, self.units - self.done_count)))]
            hasher = threading.Thread(target=self._hash_frontier, name="dd-frontier")
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
            try:
                self._save()
            except DirectDownloadError:  # the writer's lease check (the controller is gone): the state was written
                pass
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
            pieces_verified=self.pieces is not None, sources=self.selector.report(),
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
            segments = self.map.state(self._identity())
            done = self.done_bytes
        try:
            # The map must never claim bytes that a crash could lose.
            os.fdatasync(self.fd)
            if self.state_writer is not None:
                self.state_writer(done, self.size, segments)
            else:
                _fs.write_json_atomic(self.sidecar_path, dict(
                    bytes_done=done, total=self.size, segments=segments, updated_at=int(time.time()), pid=os.getpid()))
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

    def _pick_mirror(self, avoid):
        return self.selector.pick(self.connections, avoid, self.per_mirror)

    def _start(self, mirror, start, stop, avoid, clean):
        task = _Task(mirror, start, stop, avoid, clean)
        self.active.append(task)
        self.selector.started(mirror)
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
            if self.selector.failed(mirror, exc, fatal_for_mirror):
                self.log("mirror %s dropped: %s" % (mirror.redacted, _error_text(exc)))
            self.cond.notify_all()

    def _release(self, task):
        punched = True
        if task.dirty and task.next < task.stop:
            start, stop = self._unit_span(task.next)
            punched = punch_hole(self.fd, start, stop - start)
        with self.cond:
            self.active.remove(task)
            self.selector.stopped(task.mirror)
            if task.received:
                self.received[task.mirror.url] = self.received.get(task.mirror.url, 0) + task.received
                self.selector.count_bytes(task.mirror.url, task.received)
            if task.next < task.stop and self.fatal is None:
                avoid = task.avoid | {task.mirror.url} if task.failed else task.avoid
                if task.dirty and not punched:
                    self.pending.append(Range(task.next, task.next + 1, avoid, clean=False))
                    if task.next + 1 < task.stop:
                        self.pending.append(Range(task.next + 1, task.stop, avoid, clean=task.clean))
                else:
                    self.pending.append(Range(task.next, task.stop, avoid, clean=task.clean))
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
                source.close()

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
            details = exc.details if isinstance(exc, DirectDownloadError) else {}
            with self.cond:
                if details.get("reason") == "no_range":
                    self.no_range.add(mirror.url)
                elif "status" not in details:
                    self.refused.add(mirror.url)
            # A busy source (503, 429) is asked again after its Retry-After (SourceSelector.failed).
            self._mirror_failed(mirror, exc, fatal_for_mirror=not is_busy(exc))
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
                    if self.fatal is not None or task.next >= task.stop or not self.selector.usable(mirror.url):
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
            with self.cond:
                self.selector.piece_rejected(mirror, "piece %d (bytes %d-%d) failed its %s check"
                                             % (unit, start, stop - 1, self.pieces.algorithm))
            self.log("piece %d from %s is corrupt: fetching it again from another mirror; %s is not used again "
                     "for this download" % (unit, mirror.redacted, mirror.redacted))
        with self.cond:
            task.dirty = False
            task.next = unit + 1
            if good:
                self.map.mark_done(unit)
                if mirror.url not in self.served:
                    self.served.append(mirror.url)
            else:
                self.refetched.append(unit)
                self.pending.append(Range(unit, unit + 1, task.avoid | {mirror.url}, clean=clean))
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
