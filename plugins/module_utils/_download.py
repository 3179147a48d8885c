# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The engine call: put one image from a URL into a pool directory, verified, extracted, inspected, atomically.

``plan(request)`` decides what would happen without touching the network (check mode); ``run(request)`` does it.
Everything else lives in the pieces this module wires together: sources (_sources: _http, _nfs, and _transfer for
several sources of one file, described by _description), the sink (_sink), the installer (_install) and checksums
(_checksum).

What is on disk in the pool, per image ``NAME``:
- ``NAME``                  the installed image (only ever appears by an atomic rename of a verified file)
- ``.NAME.ddinfo.json``     the record of the installed image (for O(1) idempotence)
- ``.NAME.part`` + ``.json`` a resumable download in progress and its sidecar (progress figures and resume state,
                            one schema for one stream and for a transfer in ranges)
- ``.NAME.lock``            serialises concurrent runs for the same image (a second run waits, then finds it done)
- ``.NAME.extracting``      an extraction in progress (a leftover of a killed run is removed at the next run)

Every one of these names is ours: anything but a regular file there (a FIFO, a device, a symlink) is refused by
``plan``, and a name whose longest helper file would not fit the file system's name limit is refused up front.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import time
from typing import Any, Callable, Iterable

from ansible_collections.directdownload.kvm.plugins.module_utils import (
    _description, _formats, _fs, _gate, _install, _progress, _rate, _retry, _signals, _sources)
from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import Checksum, file_digest, new_hash
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    ChecksumMismatch,
    DirectDownloadError,
    ImageRejected,
    InvalidInput,
    NotEnoughSpace,
    SourceError,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_READ_SIZE,
    PartFile,
    SparseWriter,
    stream_to_file,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._source import Source
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import (
    METALINK_SUFFIXES,
    SUPPORTED_SCHEMES,
    file_name_from_url,
    is_metalink_answer,
    redact_url,
    safe_file_name,
    strip_compression_suffix,
    url_scheme,
    url_without_secrets,
)

# The checksum we compute when the user gave none, so every installed image has a digest on record.
DEFAULT_COMPUTED_ALGORITHM = "sha256"
# A checksum mismatch earns this many more downloads by default (CloudStack downloads 3 times in all), then fails.
DEFAULT_MISMATCH_RETRIES = 1
FORMATS = _formats.FORMATS
MAX_RETRIES = 100
MAX_RETRY_DELAY = 3600
MAX_CONNECTIONS = 16
# The mode of a newly installed image, downloaded or extracted alike (the download module's mode option).
DEFAULT_IMAGE_MODE = 0o644


class DownloadRequest:
    """Everything the engine needs for one image. Plain attributes; modules fill them from their options."""

    def __init__(self, url, pool_path, name=None, checksum=None, image_format=None, extract=True,
                 source_options=None, retries=3, retry_delay=1.0, resume=True, force=False,
                 block_size=DEFAULT_BLOCK_SIZE, progress_interval=2.0, qemu_img="qemu-img",
                 connections=1, metalink_name=None, metalink_locations=(), nfs_transport="auto",
                 max_size=None, max_virtual_size=None, max_expansion=None, allow_encrypted=False, mode=None,
                 progress_group=None, lease=None,
                 max_rate=None, lowest_speed=None, lowest_speed_time=None, mismatch_retries=DEFAULT_MISMATCH_RETRIES,
                 timeout=None, mirrors=()):
        if not url:
            raise InvalidInput("url is required")
        scheme = url_scheme(url)
        if scheme not in SUPPORTED_SCHEMES:
            raise InvalidInput("unsupported URL scheme %r in %s: use %s"
                               % (scheme, redact_url(url), ", ".join(SUPPORTED_SCHEMES)))
        if checksum is not None and not isinstance(checksum, Checksum):
            raise InvalidInput("checksum must be parsed with _checksum.parse_checksum")
        if image_format not in (None,) + FORMATS:
            raise InvalidInput("format must be one of %s, got %r" % (", ".join(FORMATS), image_format))
        # Bounds that keep one task bounded (one clear message each): retries and their delay, and the threads and
        # connections a segmented download opens against one mirror.
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise InvalidInput("retries must be a whole number from 0 to %d, got %r" % (MAX_RETRIES, retries))
        if isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float)) \
                or not 0 <= retry_delay <= MAX_RETRY_DELAY:
            raise InvalidInput("retry_delay must be from 0 to %d seconds, got %r" % (MAX_RETRY_DELAY, retry_delay))
        if isinstance(connections, bool) or not isinstance(connections, int) or not 1 <= connections <= MAX_CONNECTIONS:
            raise InvalidInput("connections must be a whole number from 1 to %d, got %r" % (MAX_CONNECTIONS, connections))
        if block_size < 4096 or block_size > 16 * 1024 * 1024:
            raise InvalidInput("block_size must be between 4 KiB and 16 MiB")
        self.url = url
        self.pool_path = pool_path
        self.name = safe_file_name(name) if name else default_name(url)
        self.checksum = checksum
        self.format = image_format
        self.extract = extract and image_format != "iso"
        self.source_options = source_options
        self.retries = retries
        self.retry_delay = retry_delay
        self.resume = resume
        self.force = force
        self.block_size = block_size
        self.progress_interval = progress_interval
        self.qemu_img = qemu_img
        self.connections = connections
        self.metalink_name = metalink_name
        self.metalink_locations = tuple(metalink_locations or ())
        self.nfs_transport = nfs_transport
        # Further URLs of the same file (strings or {url, priority, location}): checked here, used by _sources.
        _description.parse_mirrors(mirrors)
        self.mirrors = list(mirrors or ())
        # The safety gate's caps (_gate.Limits, InvalidInput for a bad one); None: the documented defaults.
        self.limits = _gate.Limits(max_size, max_virtual_size, max_expansion, allow_encrypted)
        self.mode = DEFAULT_IMAGE_MODE if mode is None else mode
        # The progress sidecar: readable by this group (agent settings progress_group); the controller's lease.
        self.progress_gid = _progress.group_id(progress_group)
        self.lease = lease
        # Origin protection (issue 14): checked here so a bad value fails before anything is touched.
        if mismatch_retries is None or int(mismatch_retries) < 0:
            raise InvalidInput("mismatch_retries must be 0 or more")
        self.mismatch_retries = int(mismatch_retries)
        self.max_rate = _rate.parse_rate(max_rate, "max_rate")
        self.lowest_speed = _rate.parse_rate(lowest_speed, "lowest_speed")
        self.lowest_speed_time = lowest_speed_time
        self.timeout = timeout or None
        _rate.Limits.for_request(self)

    @property
    def final_path(self) -> str:
        return os.path.join(self.pool_path, self.name)

    @property
    def url_id(self) -> str:
        """Identity of the URL without storing it, in world-readable records: SHA-256 of the URL with its secrets
        removed (password, signature and token values: ``_urls.url_without_secrets``), so the same URL gives the
        same id on every run and a rotated password or signature names the same image."""
        return hashlib.sha256(url_without_secrets(self.url).encode("utf-8")).hexdigest()


def default_name(url: str) -> str:
    """The file name an image gets when the user names none: the URL's last segment, with a compression or
    metalink suffix removed (``disk.qcow2.gz`` -> ``disk.qcow2``; ``disk.qcow2.meta4`` -> ``disk.qcow2``)."""
    name = file_name_from_url(url)
    lower = name.lower()
    for suffix in METALINK_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return safe_file_name(strip_compression_suffix(name))


def file_facts(path: str) -> dict[str, Any]:
    """What is at ``path`` now, for diffs and results (no hashing; ``lstat`` only, nothing is opened).
    ``type``: ``file``, ``symlink``, ``directory``, ``FIFO``, ``socket``, ``character device``, ``block device``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"path": path, "exists": False}
    return {"path": path, "exists": True, "size": st.st_size, "disk_usage": st.st_blocks * 512,
            "mtime": int(st.st_mtime), "type": _fs.file_kind(st.st_mode)}


def lock_path(pool_path: str, name: str) -> str:
    return os.path.join(pool_path, ".%s.lock" % name)


def helper_files(pool_path: str, name: str) -> dict[str, bool]:
    """Every file a run may create beside the image ``name``, as ``{path: written through a temporary file}``."""
    final = os.path.join(pool_path, name)
    part = PartFile(pool_path, name)
    return {
        part.path: False,
        part.sidecar_path: True,
        _install.record_path(final): True,
        _install.extracting_path(final): False,
        lock_path(pool_path, name): False,
    }


def name_max(pool_path: str) -> int:
    """The longest file name the pool's file system takes (``PC_NAME_MAX``; 255 when it does not say)."""
    try:
        limit = os.pathconf(pool_path, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = None
    return limit if limit and limit > 0 else _fs.DEFAULT_NAME_MAX


def check_name_fits(pool_path: str, name: str) -> None:
    """Refuse a name whose longest helper file (a temporary file of a sidecar included) would not fit the file
    system's name limit: found late, it fails after the install (the record cannot be written)."""
    limit = name_max(pool_path)
    longest, longest_length, longest_via_temp = None, 0, False
    for path, via_temp in helper_files(pool_path, name).items():
        length = len(os.path.basename(path).encode("utf-8")) + (_fs.TEMP_NAME_EXTRA if via_temp else 0)
        if length > longest_length:
            longest, longest_length, longest_via_temp = os.path.basename(path), length, via_temp
    if longest_length > limit:
        extra = longest_length - len(name.encode("utf-8"))
        raise InvalidInput(
            "the image name is %d characters long: at most %d fit in %s (the file system allows %d characters per "
            "name and the helper file %s%s needs %d more than the name)"
            % (len(name), limit - extra, pool_path, limit, longest,
               " with its temporary suffix" if longest_via_temp else "", extra),
            name_max=limit, max_name_length=limit - extra)


def not_a_regular_file(path: str, kind: str) -> InvalidInput:
    if kind == "hard link":
        what = "a hard link (the file has another name too), not a file of its own"
    else:
        what = "a %s, not a regular file" % kind
    return InvalidInput("refusing to use %s: it is %s (remove it)" % (path, what), path=path)


def check_helper_files(pool_path: str, name: str) -> None:
    """Refuse anything but a regular file at one of our helper names (``lstat`` only: a FIFO is never opened), and
    a hard link at the names opened in place (the part, the lock); the others are replaced by a rename or removed
    first, which never writes another name's file."""
    in_place = (PartFile(pool_path, name).path, lock_path(pool_path, name))
    for path in helper_files(pool_path, name):
        kind = _fs.kind_at(path)
        if kind == "hard link" and path not in in_place:
            continue
        if kind not in (None, "file"):
            raise not_a_regular_file(path, kind)


def check_pool(pool_path: str) -> None:
    if not pool_path:
        raise InvalidInput("pool_path is required")
    if not os.path.isdir(pool_path):
        raise InvalidInput("the pool directory %s does not exist (create it, or apply the directdownload.kvm.agent role)"
                           % pool_path)
    if not os.access(pool_path, os.W_OK | os.X_OK):
        raise InvalidInput("the pool directory %s is not writable by this user" % pool_path)


@dataclasses.dataclass
class Plan:
    """What ``run`` would do. ``action``: ``none`` (installed and current), ``adopt`` (a file without record
    matches the checksum: only the record is written), ``download``, ``replace``."""

    action: str
    reason: str
    before: dict | None
    record: dict | None = None

    @property
    def changes(self) -> bool:
        return self.action != "none"


def plan(request: DownloadRequest) -> Plan:
    """Decide without network and without writing. May hash an existing file once when it has no usable record."""
    check_pool(request.pool_path)
    check_name_fits(request.pool_path, request.name)
    final = request.final_path
    before = file_facts(final)
    if before["exists"] and before["type"] != "file":
        raise InvalidInput("%s is a %s: refusing to replace it with an image" % (final, before["type"]))
    check_helper_files(request.pool_path, request.name)
    if not before["exists"]:
        return Plan("download", "not installed", before)
    if request.force:
        return Plan("replace", "force is set", before)
    record = _install.read_record(final)
    if record and _install.record_matches_file(final, record):
        if request.checksum is None:
            if record.get("url_id") in (None, request.url_id):
                return Plan("none", "installed from this URL", before, record)
            return Plan("replace", "installed from another URL and no checksum pins the content", before, record)
        recorded = record.get("checksums", {}).get(request.checksum.algorithm)
        if recorded is not None:
            if request.checksum.matches(recorded):
                return Plan("none", "installed with this checksum", before, record)
            return Plan("replace", "the installed image has another %s checksum" % request.checksum.algorithm,
                        before, record)
    # No usable record (none, stale, or of another algorithm): the checksum decides, at the cost of one read.
    if request.checksum is not None:
        actual = file_digest(final, request.checksum.algorithm)
        if request.checksum.matches(actual):
            return Plan("adopt", "the file on disk matches the checksum", before, record)
        return Plan("replace", "the file on disk does not match the checksum", before, record)
    if record and record.get("url_id") == request.url_id:
        return Plan("replace", "the installed image changed since it was recorded", before, record)
    return Plan("none", "a file with this name exists and no checksum was given (use force to replace it)",
                before, record)


class DownloadResult(dict):
    """The result a module returns, as a dict (see the download module's RETURN)."""


def run(request: DownloadRequest, open_source: Callable[[str, DownloadRequest], Source],
        log: Callable[[str], None] | None = None, now: Callable[[], float] = time.time) -> DownloadResult:
    """Do what ``plan`` says. ``open_source(url, request)`` returns a Source for the URL (see architecture.md).

    Serialised per image by a lock file in the pool: a second concurrent run waits, then re-plans and finds the
    image installed. Raises DirectDownloadError subclasses; on any failure the pool holds no new image, at most
    the resumable ``.part`` and its sidecar.
    """
    log = log or (lambda msg: None)
    check_pool(request.pool_path)
    check_name_fits(request.pool_path, request.name)  # before the lock file, which is one of the long names
    started = time.monotonic()
    with _image_lock(request):
        decision = plan(request)
        # A killed extraction leaves this behind; it was never installed and no other run holds the lock.
        _fs.unlink_if_present(_install.extracting_path(request.final_path))
        if decision.action == "none":
            return _unchanged_result(request, decision, started)
        if decision.action == "adopt":
            return _adopt(request, decision, started)
        result = _download_and_install(request, decision, open_source, log, started, now)
        result["before"] = decision.before
        return result


@contextlib.contextmanager
def _image_lock(request):
    """Hold ``<pool>/.<name>.lock`` exclusively, and remove it afterwards so a finished pool holds no leftovers.

    Removing a lock file is only safe with the usual re-check: after getting the lock, the path must still name
    the inode we locked; if another run removed it meanwhile, lock the new file instead.
    """
    path = lock_path(request.pool_path, request.name)
    while True:
        try:
            fd = _fs.open_regular(path, os.O_RDWR | os.O_CREAT, 0o600)  # never a symlink, never blocks on a FIFO
        except _fs.NotRegularFile as exc:
            raise not_a_regular_file(path, exc.kind) from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        _fs.unlink_if_present(path)
        os.close(fd)


def _unchanged_result(request, decision, started):
    record = decision.record or {}
    final = request.final_path
    result = DownloadResult(
        changed=False, path=final, name=request.name, msg=decision.reason,
        size=decision.before.get("size"), disk_usage=decision.before.get("disk_usage"),
        virtual_size=record.get("virtual_size"), format=record.get("format"),
        checksum=record.get("checksum"), url=record.get("url"), bytes_downloaded=0, resumed_from=0,
        elapsed=round(time.monotonic() - started, 3), attempts=0, rate=None, mirror_errors=[], sources=[],
        metalink_notes=[],
    )
    if not record:
        try:
            info = _install.inspect_image(final, request.format, qemu_img=request.qemu_img)
            result.update(format=info.format, virtual_size=info.virtual_size)
        except ImageRejected as exc:  # a file we did not install and leave alone: report, do not fail
            result.update(format=None, virtual_size=None, msg="%s; it would be refused: %s" % (result["msg"], exc.msg))
    return result


def _adopt(request, decision, started):
    """A file without (valid) record whose bytes match the checksum: inspect it and write the record only."""
    final = request.final_path
    info = _gate.admit(final, request.format, request.limits, qemu_img=request.qemu_img)
    record = _make_record(request, info, {request.checksum.algorithm: request.checksum.hexdigest},
                          request.checksum, redact_url(request.url))
    _install.write_record(final, record)
    result = _result_from_record(request, record, started, bytes_downloaded=0, resumed_from=0, attempts=0,
                                 url=record["url"], mirror_errors=[], sources=[], metalink_notes=[])
    result.update(changed=True, msg="recorded the existing file, which matches the checksum")
    return result


def _make_record(request, info, checksums, checksum, served_url):
    record = {
        "checksum": checksum.cloudstack,
        "checksums": checksums,
        "url": served_url,
        "url_id": request.url_id,
        "format": info.format,
        "virtual_size": info.virtual_size,
    }
    if request.source_options is not None and request.source_options.validate_certs is False:
        record["validate_certs"] = False  # the bytes were fetched without TLS verification: say so, for audits
    return record


def _result_from_record(request, record, started, **extra):
    facts = file_facts(request.final_path)
    result = DownloadResult(
        changed=True, path=request.final_path, name=request.name, size=facts.get("size"),
        disk_usage=facts.get("disk_usage"), virtual_size=record["virtual_size"], format=record["format"],
        checksum=record["checksum"], elapsed=round(time.monotonic() - started, 3),
    )
    result.update(extra)
    return result


class _Fetched:
    """What a verified fetch produced: digests of the bytes in the ``.part`` and where they came from."""

    def __init__(self, digests, served_url, resumed_from, metalink_answer=None):
        self.digests = digests
        self.served_url = served_url
        self.resumed_from = resumed_from
        # The URL answered with a Metalink document (by its Content-Type): this body holds it, nothing was written.
        self.metalink_answer = metalink_answer


def _first_mismatch(expected, digests):
    for checksum in expected:
        if not checksum.matches(digests[checksum.algorithm]):
            return checksum
    return None


def _download_and_install(request, decision, open_source, log, started, now):
    part = PartFile(request.pool_path, request.name)
    source = open_source(request.url, request)
    # The per-run state: attempts and bytes as they happen, the limits (max_rate bucket, timeout budget) shared by
    # every attempt and connection, the offset whose resume the server refused (one restart from 0 per run).
    totals = {"attempts": 0, "bytes": 0, "limits": _rate.Limits.for_request(request), "restarted_from": None}
    try:
        source, fetched, expected = _fetch_verified(request, part, source, log, now, totals)
        checksum = request.checksum or (expected[-1] if expected else None) or Checksum(
            DEFAULT_COMPUTED_ALGORITHM, fetched.digests[DEFAULT_COMPUTED_ALGORITHM])
        ready, info, compression = _prepare_image(request, part)
        served_url = redact_url(fetched.served_url)
        record = _make_record(request, info, fetched.digests, checksum, served_url)
        os.chmod(ready, request.mode)  # before the rename: the image never shows another mode
        with _signals.deferred() as arrived:  # never cut between the rename and the record
            _install.install_file(ready, request.final_path)
            _install.write_record(request.final_path, record)
            part.discard()
        if arrived:
            log("%s arrived while the image was being installed: the install was finished first" % arrived[0])
    except DirectDownloadError as exc:
        exc.details.setdefault("attempts", totals["attempts"])
        exc.details.setdefault("bytes_downloaded", totals["bytes"])
        if source.mirror_errors:
            exc.details.setdefault("mirror_errors", list(source.mirror_errors))
        totals["error"] = exc.msg
        exc.details.setdefault("sources", _sources_result(request, source, totals))
        _keep_only_resumable(part, exc)
        if isinstance(exc, _signals.Interrupted):
            _describe_interruption(exc, part)
        raise
    except BaseException as exc:
        _keep_only_resumable(part, exc)
        raise
    finally:
        source.close()
    elapsed = time.monotonic() - started
    log("installed %s (%d bytes downloaded in %.1f s)" % (request.final_path, totals["bytes"], elapsed))
    msg = "%s %s" % ("replaced" if decision.action == "replace" else "installed", request.final_path)
    if totals["restarted_from"] is not None:
        msg += " (the server refused to resume at byte %d: downloaded again from byte 0)" % totals["restarted_from"]
    return _result_from_record(
        request, record, started, url=served_url, bytes_downloaded=totals["bytes"],
        resumed_from=fetched.resumed_from, attempts=totals["attempts"], extracted_from=compression,
        rate=int(totals["bytes"] / elapsed) if elapsed > 0 else None,
        mirror_errors=list(source.mirror_errors), sources=_sources_result(request, source, totals),
        metalink_notes=list(source.notes), restarted_from=totals["restarted_from"], msg=msg,
    )


def _sources_result(request, source, totals):
    """The ``sources`` result: one entry per source (URL redacted) with the bytes it served, the pieces of it that
    were rejected, and the error that set it aside (or None)."""
    report = source.source_report(totals["bytes"])
    if report is not None:
        return report
    return [dict(url=redact_url(request.url), bytes=totals["bytes"], pieces_rejected=0,
                 error=totals.get("error"))]


def _describe_interruption(exc, part):
    """The failure message of an interrupted run: how far the kept ``.part`` goes, and that a re-run resumes."""
    state = _fs.read_json(part.sidecar_path) if part.exists() else None
    if state and isinstance(state.get("bytes_done"), int):
        done, total = state["bytes_done"], state.get("total")
        where = "at %s (%d of %s bytes in %s)" % (
            "%d%%" % int(100 * done / total) if total else "byte %d" % done, done,
            total if total is not None else "?", part.path)
        exc.details.update(bytes_done=done, total=total, part=part.path)
        exc.msg = "%s %s; run again to resume" % (exc.msg, where)
    else:
        exc.msg = "%s before any byte was kept; run again to download" % exc.msg
    exc.args = (exc.msg,)


def _fetch_verified(request, part, source, log, now, totals):
    """Fill the ``.part`` with bytes that match every expected checksum. Returns (source, _Fetched, expected).

    A checksum mismatch discards the bytes and downloads again, at most ``request.mismatch_retries`` more times; a
    metalink moves to its next mirror (a mirror that served wrong bytes is not asked again). Then it fails with both
    digests and the bytes transferred in all.
    """
    mismatches = 0
    while True:
        expected = source.expected_checksums(request.checksum)
        try:
            fetched = _fetch_once(request, part, source, expected, log, now, totals)
            if fetched.metalink_answer is not None:
                # Resolved before any byte is written: the description's sources replace the URL.
                source.close()
                source = _sources.open_metalink_answer(fetched.metalink_answer, request.url, request)
                log("%s is a Metalink document: downloading from its mirrors" % redact_url(request.url))
                continue
            wrong = _first_mismatch(expected, fetched.digests)
        except ChecksumMismatch as exc:  # a segmented download verifies by itself
            fetched, wrong = None, exc
        if wrong is None:
            return source, fetched, expected
        mismatches += 1
        part.discard()
        if isinstance(wrong, ChecksumMismatch):
            bad_url, want, got = wrong.details.get("url") or redact_url(request.url), wrong.expected, wrong.actual
        else:
            bad_url = redact_url(fetched.served_url)
            want, got = wrong.cloudstack, Checksum(wrong.algorithm, fetched.digests[wrong.algorithm]).cloudstack
        log("checksum mismatch from %s: expected %s, got %s" % (bad_url, want, got))
        # None: one source, the mismatch retries decide; False: every source of the file served wrong bytes.
        moved = source.next_mirror_after_mismatch(fetched.served_url if fetched else None, want, got)
        if mismatches > request.mismatch_retries or moved is False:
            raise ChecksumMismatch(
                "checksum mismatch for %s after %d download%s (%d bytes transferred in all): expected %s, got %s"
                % (bad_url, mismatches, "s" if mismatches > 1 else "", totals["bytes"], want, got),
                expected=want, actual=got, url=bad_url, attempts=totals["attempts"], downloads=mismatches,
            )
        log("downloading again (%d of %d mismatch retries)" % (mismatches, request.mismatch_retries))


def _fetch_once(request, part, source, expected, log, now, totals):
    if source.segmented:
        try:
            return _fetch_segmented(request, part, source, expected, log, totals)
        except SourceError as exc:
            if not exc.details.get("ranges_unsupported"):
                raise
            log("the mirrors do not serve ranges: downloading in one stream")
    transfer = _Transfer(request, part, source, expected, log, now, totals)
    transfer.run()
    return _Fetched(transfer.digests, transfer.served_url, transfer.resumed_from, transfer.metalink_answer)


def _fetch_segmented(request, part, source, expected, log, totals):
    """Several mirrors at once (metalink with connections > 1 or piece hashes); verifies by itself."""
    size = source.discover_size()
    if size is None:
        raise SourceError("no source of %s announces its size, which a download in ranges needs"
                          % redact_url(request.url), ranges_unsupported=True)
    _gate.check_announced_size(size, redact_url(request.url), request.limits)
    _install.ensure_free_space(request.pool_path, size, "the download")
    result = source.download_segmented(part.path, checksums=expected, block_size=request.block_size, log=log,
                                       resume=request.resume, algorithms=[DEFAULT_COMPUTED_ALGORITHM],
                                       state_writer=_segmented_progress(request, part, source, log),
                                       save_interval=max(request.progress_interval, 0.5),
                                       limits=totals["limits"])
    totals["attempts"] += 1
    totals["bytes"] += result["bytes_downloaded"]
    served = result.served_urls or [request.url]
    return _Fetched(result["digests"], served[0], result.get("resumed_bytes", 0))


def _segmented_progress(request, part, source, log):
    """``state_writer(bytes_done, total, segments)`` for a transfer in ranges: the same ``.part.json`` sidecar, the
    same figures and the same log lines as one stream, with the piece map under ``segments`` (no top-level
    ``identity``: one stream never resumes a part filled in ranges)."""
    state = {}

    def write(done, total, segments):
        progress = state.get("progress")
        if progress is None:
            progress = state["progress"] = _Progress(
                request, part, log, time.time, done, total, redact_url(request.url), connections=source.connections)
        progress.total = total
        progress.save_absolute(done, extra={"segments": segments})  # the resume state first, then the lease
        if request.lease is not None:
            request.lease.check()
    return write


def _keep_only_resumable(part, exc):
    """After a failure keep the ``.part`` only when a later run can resume it: the transport failed or the run was
    interrupted (SIGINT, SIGTERM, KeyboardInterrupt), so the bytes on disk are good as far as they go. Wrong,
    refused or unfinished-extraction bytes are removed."""
    if not isinstance(exc, (SourceError, _signals.Interrupted, KeyboardInterrupt)):
        part.discard()


def _prepare_image(request, part):
    """Turn the verified ``.part`` into the file to install: extracted when compressed, inspected, policed.

    Returns (path ready to rename, ImageInfo, the compression extracted or None). Removes what it created when
    anything fails.
    """
    ready = part.path
    try:
        _gate.check_size(part.path, request.limits)  # the downloaded bytes, compressed or not: max_size
    except BaseException:
        part.discard()
        raise
    kind = _install.detect_compression(part.path) if request.extract else None
    if kind and _install.is_iso(part.path):
        kind = None
    if kind:
        extracted = _install.extracting_path(request.final_path)
        _fs.unlink_if_present(extracted)  # a leftover of a killed run: it was never installed
        try:
            _install.extract(part.path, extracted, kind, block_size=request.block_size, limits=request.limits)
        except BaseException:
            part.discard()
            raise
        # The verified .part stays until the install (the caller discards it): a run killed while inspecting the
        # extracted image leaves it complete, and the next run extracts it again instead of downloading it again.
        ready = extracted
    try:
        info = _gate.admit(ready, request.format, request.limits, qemu_img=request.qemu_img)
    except BaseException:
        _fs.unlink_if_present(ready)
        part.discard()
        raise
    return ready, info, kind


def part_identity(request: DownloadRequest, expected: Iterable[Checksum]) -> str:
    """What must not have changed for a ``.part`` to be resumed (the URL, the expected checksums), as one digest:
    one line in the sidecar."""
    return hashlib.sha256(json.dumps({
        "url_id": request.url_id,
        "checksums": sorted(checksum.cloudstack for checksum in expected),
    }, sort_keys=True).encode("utf-8")).hexdigest()


class _Transfer:
    """One complete transfer of the source into the ``.part``, with resume and bounded retries."""

    def __init__(self, request, part, source, expected, log, now, totals):
        self.request = request
        self.part = part
        self.source = source
        self.expected = expected
        self.log = log
        self.now = now
        self.totals = totals  # attempts and bytes of the whole run, counted as they happen
        self.attempts = 0
        self.resumed_from = 0
        self.served_url = request.url
        self.digests = {}
        self.identity = part_identity(request, expected)
        self.metalink_answer = None

    def _algorithms(self):
        """What to hash while streaming: the expected algorithms only (a second digest on the same core costs
        ~0.7 s per GiB), or SHA-256 when nothing is expected so the record still gets a digest."""
        algorithms = []
        for checksum in self.expected:
            if checksum.algorithm not in algorithms:
                algorithms.append(checksum.algorithm)
        return algorithms or [DEFAULT_COMPUTED_ALGORITHM]

    def _resumable(self):
        """The ``.part``'s saved state when it can be resumed, else None. A part the sidecar calls complete (killed
        during extraction or inspection) resumes one byte before its end: the last byte is asked again with
        If-Range, which proves the file did not change (206) or starts it again (200); the whole is then verified
        as any download is. Asking for ``bytes=<size>-`` would only get a 416."""
        state = self.part.resumable_state(self.identity) if self.request.resume else None
        if state is not None and isinstance(state.get("total"), int) and state["bytes_done"] >= state["total"]:
            if state["total"] <= 1:
                return None
            state = dict(state, bytes_done=state["total"] - 1)
            self.log("the .part is complete (a run was interrupted after the transfer): checking its last byte")
        return state

    def run(self):
        request = self.request
        state = self._resumable()
        if state is None:
            self.part.discard()
        offset = state["bytes_done"] if state else 0
        validators = state.get("validators") if state else None
        total = state.get("total") if state else None
        hashers = {name: new_hash(name) for name in self._algorithms()}
        if offset:
            # Rebuild the hash state from the kept prefix: hashlib state cannot be saved, and the prefix must
            # be hashed anyway to be verified. Page-cache reads run at ~10 GB/s.
            self._hash_prefix(hashers, offset)
        last_error = None
        limits = self.totals.get("limits") or _rate.Limits()
        policy = _retry.RetryPolicy(request.retries, request.retry_delay, limits.budget)
        while self.attempts <= request.retries:
            self.attempts += 1
            self.totals["attempts"] += 1
            try:
                offset = self._attempt(offset, validators, total, hashers)
                if self.metalink_answer is not None:
                    return
                break
            except SourceError as exc:
                last_error = exc
                decision = policy.decide(exc, self.attempts)
                if not decision.retry:
                    exc.details.setdefault("retry_stopped", decision.why)
                    if self.attempts > 1 or decision.retry_after is not None:
                        self.log("attempt %d failed: %s; not retried: %s" % (self.attempts, exc.msg, decision.why))
                    raise
                self.log("attempt %d failed: %s; retrying in %.1f s%s" % (
                    self.attempts, exc.msg, decision.delay,
                    " as the server asked (Retry-After)" if decision.why == "Retry-After" else ""))
                if exc.details.get("reason") == "too_slow":
                    self.source.set_aside_slow_mirror(self.served_url)
                time.sleep(decision.delay)
                state = self._resumable()
                if state is None:
                    offset, validators, total = 0, None, None
                    hashers = {name: new_hash(name) for name in self._algorithms()}
                    self.part.discard()
                else:
                    offset, validators, total = state["bytes_done"], state.get("validators"), state.get("total")
                    if offset != self._hashed:
                        hashers = {name: new_hash(name) for name in self._algorithms()}
                        self._hash_prefix(hashers, offset)
        else:  # pragma: no cover - the loop always breaks or raises
            raise last_error
        self.digests = {name: hasher.hexdigest() for name, hasher in hashers.items()}

    _hashed = 0

    def _hash_prefix(self, hashers, offset):
        buf = bytearray(1024 * 1024)
        done = 0
        with open(self.part.path, "rb", buffering=0) as handle:
            while done < offset:
                count = handle.readinto(memoryview(buf)[: min(len(buf), offset - done)])
                if not count:
                    break
                view = memoryview(buf)[:count]
                for hasher in hashers.values():
                    hasher.update(view)
                done += count
        if done < offset:  # a part shorter than its sidecar claims (cut by hand): pad as the sparse tail would
            zeros = bytes(min(len(buf), offset - done))
            while done < offset:
                chunk = zeros[: offset - done]
                for hasher in hashers.values():
                    hasher.update(chunk)
                done += len(chunk)
        self._hashed = offset

    _restarted = False

    def _open(self, offset, validators, total):
        """Open the source at ``offset``. A resume the server does not honour consistently becomes one download
        from byte 0 (once per transfer): a 416 (the file is now shorter), a 206 for other bytes than asked, a 206
        whose ETag/Last-Modified differs from the If-Range sent (a proxy that ignores If-Range: the bytes would mix
        two versions), or a 206 whose total differs from the one the ``.part`` was started with."""
        if not offset:
            return self.source.open(offset=0)
        try:
            body = self.source.open(offset=offset, validators=validators)
        except SourceError as exc:
            if exc.details.get("reason") not in ("range_not_satisfiable", "bad_range", "changed"):
                raise
            why = exc.msg
        else:
            if body.offset != offset or total is None or body.size in (None, total):
                return body
            why = "%s now has %d bytes, the .part was started for %d" % (
                redact_url(body.url or self.request.url), body.size, total)
            body.close()
        if self._restarted:
            raise SourceError("resuming failed again after a download from byte 0: %s" % why,
                              url=redact_url(self.request.url), reason="resume")
        self._restarted = True
        self.log("cannot resume at byte %d (%s): downloading again from byte 0" % (offset, why))
        return self.source.open(offset=0)

    def _attempt(self, offset, validators, total, hashers):
        request = self.request
        body = self._open(offset, validators, total)
        if self.source.may_answer_metalink and is_metalink_answer(body.url or request.url, body.content_type):
            # Not image bytes: a description of the file. The engine resolves it before any transfer starts.
            if body.offset:
                body.close()  # a resume that met a document: read all of it
                body = self.source.open(offset=0)
            self.metalink_answer = body
            return offset
        try:
            if body.offset != offset:
                # The server could not resume (no Range support, or the file changed: If-Range failed): start
                # over from byte 0, once per run; a second refusal ends the run (no full-download loops).
                if self.totals.get("restarted_from") is not None:
                    raise _resume_refused_again(body, offset, self.totals["restarted_from"])
                self.totals["restarted_from"] = offset
                self.log("the server restarted the transfer from byte %d (asked %d)" % (body.offset, offset))
                for name in list(hashers):
                    hashers[name] = new_hash(name)
                offset = body.offset
                self._hashed = 0
            elif offset:
                self.resumed_from = offset
                self.log("resuming at byte %d" % offset)
            self.served_url = body.url or self.served_url
            total = body.size if body.size is not None else total
            if total is not None:
                _gate.check_announced_size(total, redact_url(body.url or request.url), request.limits)
                _install.ensure_free_space(request.pool_path, max(0, total - offset), "the download")
            fd = self.part.open_for_write(offset)
            writer = SparseWriter(fd, offset=offset, block_size=request.block_size)
            progress = _Progress(request, self.part, self.log, self.now, offset, total,
                                 redact_url(body.url or request.url),
                                 identity=self.identity, validators=body.validators)
            try:
                progress.save_absolute(offset)
                limits = self.totals.get("limits")
                limit = limits.connection(redact_url(body.url or request.url)) if limits is not None and (
                    limits.paced or limits.watched) else None
                copied = stream_to_file(body, writer, list(hashers.values()), on_progress=progress.save,
                                        progress_interval=request.progress_interval, limit=limit,
                                        read_size=limits.read_size(DEFAULT_READ_SIZE) if limit else DEFAULT_READ_SIZE)
                writer.finish()
            except BaseException:
                # The bytes written before the failure are resumable: record how far they go.
                self.totals["bytes"] += writer.offset - offset
                try:
                    progress.save_absolute(writer.offset)
                except OSError:
                    pass
                raise
            finally:
                os.close(fd)
            self.totals["bytes"] += copied
            offset += copied
            self._hashed = offset
            progress.save_absolute(offset)
        except OSError as exc:
            if isinstance(exc, _fs.NotRegularFile):  # planted after the plan looked
                raise not_a_regular_file(exc.path, exc.kind) from None
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NotEnoughSpace("the pool %s is full: %s" % (request.pool_path, exc.strerror)) from exc
            raise
        finally:
            body.close()
        if total is not None and offset != total:
            raise SourceError("the transfer ended at byte %d of %d" % (offset, total), url=redact_url(body.url))
        return offset


def _resume_refused_again(body, offset, first):
    error = SourceError(
        "%s refused to resume at byte %d after refusing at byte %d earlier in this run: stopped rather than "
        "downloading the whole image once more (the server serves no ranges, or its file keeps changing)"
        % (redact_url(body.url), offset, first), url=redact_url(body.url), reason="resume_refused")
    return error


class _Progress:
    """Writes the part's sidecar: resume state and progress figures for operators (bytes, total, rate, ETA, and
    the same as one line, ``progress``: see _progress), and logs a progress line every LOG_INTERVAL seconds
    (module.log: syslog or the journal on the host). Each periodic update also checks the controller's lease."""

    LOG_INTERVAL = 30.0

    def __init__(self, request, part, log, now, start_offset, total, source, identity=None, validators=None,
                 connections=None):
        self.request = request
        self.part = part
        self.log = log
        self.now = now
        self.start_offset = start_offset
        self.total = total
        self.source = source
        self.identity = identity
        self.validators = validators
        self.connections = connections
        self.started = time.monotonic()
        self.last_log = self.started
        self.started_at = int(now())
        log("downloading %s into %s from byte %d of %s" % (
            source, part.path, start_offset, total if total is not None else "an unknown size"))

    def save(self, copied):
        """The periodic update (every progress_interval seconds of streaming)."""
        if self.request.lease is not None:
            self.request.lease.check()
        self.save_absolute(self.start_offset + copied)

    def save_absolute(self, done, extra=None):
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (done - self.start_offset) / elapsed
        eta = None
        if self.total and rate > 0:
            eta = round((self.total - done) / rate, 1)
        if time.monotonic() - self.last_log >= self.LOG_INTERVAL:
            self.last_log = time.monotonic()
            self.log("%d of %s bytes, %.1f MB/s, ETA %s s" % (
                done, self.total if self.total is not None else "?", rate / 1e6, eta if eta is not None else "?"))
        state = {
            "source": self.source,
            "bytes_done": done,
            "total": self.total,
            "percent": round(100.0 * done / self.total, 1) if self.total else None,
            "rate": int(rate),
            "eta": eta,
            "started_at": self.started_at,
            "updated_at": int(self.now()),
            "pid": os.getpid(),
        }
        if self.identity is not None:
            state.update(identity=self.identity, validators=self.validators)
        if self.connections:
            state["connections"] = self.connections
        if extra:
            state.update(extra)
        state["progress"] = _progress.describe(state)
        self.part.save_state(state, gid=self.request.progress_gid)
