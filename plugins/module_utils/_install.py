# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""From a verified download to an installed image: compression detected by content and extracted through the
sparse writer (bounded: ``_gate.Limits``), the safety gate (``_gate.admit``: format from the bytes, qemu-img on a
leash, policy), atomic rename into the pool, and the installed-image record that makes a second run O(1).

Order the engine follows (``_download.py``): ``is_iso`` (an ISO is never decompressed) -> ``detect_compression``
-> ``extract`` -> ``_gate.admit`` -> ``install_file`` -> ``write_record``.

Hidden names (``.name.part``, ``.name.extracting``, ``.name.ddinfo.json``) keep our work files apart from the
images, but they are NOT invisible to libvirt: a ``dir`` pool refresh lists dot-files (and sub-directories) as
volumes (checked with libvirt 9.0.0, even unreadable or truncated ones: the refresh still succeeds). Lookups by
name are unaffected; they do show up in ``virsh vol-list`` and in the pool's volume count.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import lzma
import os
import stat
import struct
import time
import zipfile
import zlib
from typing import Any, Mapping, Optional

from ansible_collections.directdownload.kvm.plugins.module_utils import _fs, _gate
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    DirectDownloadError,
    ImageRejected,
    InvalidInput,
    NotEnoughSpace,
    human_size,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._formats import (
    ISO_MAGIC,
    ISO_OFFSETS,
    STREAM_MAGICS,
    ZSTD_MAGIC,
    compression_from_head,
)
# inspect_image: _download still calls it through this module (the gate's one name re-exported here).
from ansible_collections.directdownload.kvm.plugins.module_utils._gate import (  # pylint: disable=unused-import
    inspect_image,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import DEFAULT_BLOCK_SIZE, SparseWriter
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import redact_url

try:
    import zstandard
except ImportError:
    zstandard = None

# Errors that mean "these bytes are not valid <kind> data". EOFError: truncated stream. OSError without errno:
# bz2's "Invalid data stream". zlib.error, lzma.LZMAError. zipfile's NotImplementedError (unsupported
# compression method) and RuntimeError (encrypted member).
_CORRUPT_DATA_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, NotImplementedError,
                        RuntimeError, ValueError)
if zstandard is not None:
    _CORRUPT_DATA_ERRORS += (zstandard.ZstdError,)

RECORD_VERSION = 1
# Compressed bytes read at a time by the stream readers.
_READ_CHUNK = 256 * 1024
# Decoder memory the header of a compressed image may ask for: the module shares the host with guests. xz's
# presets use dictionaries up to 64 MiB (-9); zstd's own default window limit is 128 MiB (--long=27).
XZ_MEMORY_LIMIT = 512 * 1024 * 1024
ZSTD_MAX_WINDOW = 128 * 1024 * 1024


# ---------------------------------------------------------------- sizes and free space

def free_space(path: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def ensure_free_space(directory: str, needed_bytes: Optional[int], what: str) -> None:
    """Raise NotEnoughSpace when ``directory`` has less than ``needed_bytes`` free. Unknown need: no check."""
    if not needed_bytes or needed_bytes <= 0:
        return
    available = free_space(directory)
    if available < needed_bytes:
        raise NotEnoughSpace(
            "not enough free space in %s for %s: %s needed, %s available"
            % (directory, what, human_size(needed_bytes), human_size(available)),
            path=directory, needed=needed_bytes, available=available,
        )


# ---------------------------------------------------------------- detection by content

def _read_at(path, offset, count):
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(count)


def is_iso(path: str) -> bool:
    """True when ``path`` carries an ISO 9660 volume descriptor signature ("CD001")."""
    with open(path, "rb") as handle:
        for offset in ISO_OFFSETS:
            handle.seek(offset)
            if handle.read(len(ISO_MAGIC)) == ISO_MAGIC:
                return True
    return False


def detect_compression(path: str) -> Optional[str]:
    """``gzip|bzip2|xz|zip|zstd`` from the magic bytes, never from the name; None when not compressed.

    An ISO answers None whatever its first bytes are (its first 32 KiB are a free system area).
    """
    kind = compression_from_head(_read_at(path, 0, 8))
    if kind is not None and is_iso(path):
        return None
    return kind


def estimated_extracted_size(path: str, kind: str) -> Optional[int]:
    """Best-effort size of the extracted bytes, or None when the archive does not say.

    gzip: the ISIZE trailer, which is the size modulo 2**32 of the last member only: a lower bound.
    xz: the sum of the block sizes in the stream indexes (exact). zip: the single member's size (exact).
    zstd: the sum of the frame content sizes when every frame records one (exact). bzip2: unknown.
    """
    try:
        if kind == "gzip":
            size = os.path.getsize(path)
            return struct.unpack("<I", _read_at(path, size - 4, 4))[0] if size >= 18 else None
        if kind == "xz":
            return _xz_uncompressed_size(path)
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                members = _zip_file_members(archive)
            return members[0].file_size if len(members) == 1 else None
        if kind == "zstd":
            sizes = _zstd_frame_sizes(path)
            return None if None in sizes else sum(sizes)
    except (OSError, ValueError, struct.error, zipfile.BadZipFile, ImageRejected):
        return None
    return None


def _read_varint(data, pos):
    """xz multibyte integer: 7 bits per byte, little end first, at most 9 bytes."""
    value = 0
    for shift in range(0, 63, 7):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ValueError("xz: integer too long")


def _xz_uncompressed_size(path):
    """Walk the xz streams from the end (footer -> index -> header) and add up their uncompressed sizes."""
    total = 0
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        while end > 0:
            handle.seek(end - 4)
            if end >= 4 and handle.read(4) == b"\x00" * 4:  # stream padding
                end -= 4
                continue
            if end < 24:
                return None
            handle.seek(end - 12)
            footer = handle.read(12)
            if footer[10:12] != b"YZ":
                return None
            index_size = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
            index_start = end - 12 - index_size
            if index_start < 12:
                return None
            handle.seek(index_start)
            index = handle.read(index_size)
            if index[0] != 0:
                return None
            count, pos = _read_varint(index, 1)
            blocks = 0
            for dummy in range(count):
                unpadded, pos = _read_varint(index, pos)
                uncompressed, pos = _read_varint(index, pos)
                blocks += (unpadded + 3) & ~3
                total += uncompressed
            end = index_start - blocks - 12
            if end < 0:
                return None
            handle.seek(end)
            if handle.read(6) != b"\xfd7zXZ\x00":
                return None
    return total


def _zstd_frame_sizes(path):
    """Walk the zstd frames (headers and block headers only) and return each frame's content size or None.

    Raises ImageRejected when the file ends inside a frame or holds something that is not a frame: the
    ``zstandard`` stream reader stops silently at a truncated end, so this walk is what catches truncation.
    """
    sizes = []
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        pos = 0
        handle.seek(0)
        while pos < end:
            magic = handle.read(4)
            if magic == ZSTD_MAGIC:
                descriptor = handle.read(1)
                if not descriptor:
                    break
                flags = descriptor[0]
                single_segment = (flags >> 5) & 1
                size_bytes = (1 if single_segment else 0, 2, 4, 8)[flags >> 6]
                skip = (0 if single_segment else 1) + (0, 1, 2, 4)[flags & 3]
                handle.seek(skip, os.SEEK_CUR)
                raw_size = handle.read(size_bytes)
                if len(raw_size) != size_bytes:
                    break
                content = int.from_bytes(raw_size, "little") if size_bytes else None
                if size_bytes == 2:
                    content += 256
                pos = handle.tell()
                while True:
                    header = handle.read(3)
                    if len(header) != 3:
                        pos = end + 1
                        break
                    value = int.from_bytes(header, "little")
                    block_type = (value >> 1) & 3
                    if block_type == 3:
                        raise _gate.refuse("corrupt", "%s: corrupt zstd data (reserved block type)" % path)
                    pos += 3 + (1 if block_type == 1 else value >> 3)
                    handle.seek(pos)
                    if value & 1:  # last block of the frame
                        break
                pos += 4 if (flags >> 2) & 1 else 0  # content checksum
                sizes.append(content)
            elif len(magic) == 4 and magic[1:] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50:  # skippable frame
                length = handle.read(4)
                if len(length) != 4:
                    break
                pos += 8 + struct.unpack("<I", length)[0]
            else:
                raise _trailing(path, "zstd", pos, "bytes that are not zstd (trailing garbage?)")
            if pos > end:
                break
            handle.seek(pos)
        if pos != end:
            raise _gate.refuse("corrupt", "%s: the zstd data is truncated (the file ends inside a frame)" % path)
    return sizes


# ---------------------------------------------------------------- extraction

def _zip_file_members(archive):
    return [info for info in archive.infolist() if not info.is_dir()]


def extracting_path(final_path: str) -> str:
    """``<dir>/.<name>.extracting``: the hidden file an extraction writes before ``install_file``."""
    directory, name = os.path.split(final_path)
    return os.path.join(directory, ".%s.extracting" % name)


def _trailing(path, kind, offset, detail):
    return _gate.refuse("trailing_data", "%s: %s at byte %d after the end of the %s data: refused (trailing data is "
                        "refused for every compression)" % (path, detail, offset, kind), offset=offset)


class _StreamReader:
    """gzip (members), bzip2 and xz (streams) one after another, decompressed with a bounded output per call.

    Python's own readers stop without a word at bytes after the last stream (bzip2, xz) or differ in what they
    accept; this reader treats every compressor alike: concatenated members/streams are read as one (xz stream
    padding too, as the xz format says), anything else after the end is refused (``trailing_data``), and a
    stream that ends early is ``EOFError`` (truncated).
    """

    def __init__(self, handle, kind, path):
        self._handle = handle
        self._kind = kind
        self._path = path
        self._input = b""
        self._decompressor = self._new()
        self._done = False

    def _new(self):
        if self._kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self._kind == "bzip2":
            return bz2.BZ2Decompressor()
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT)

    def _read(self, want):
        """At least ``want`` bytes in ``self._input`` unless the file ends first."""
        while len(self._input) < want:
            more = self._handle.read(_READ_CHUNK)
            if not more:
                return
            self._input += more

    def _next_stream(self):
        """After the end of a stream: start the next one, accept the end of the file, or refuse what follows."""
        self._input = self._decompressor.unused_data + self._input
        self._read(6)
        if self._kind == "xz":
            padding = 0
            while True:
                stripped = self._input.lstrip(b"\x00")
                padding += len(self._input) - len(stripped)
                self._input = stripped
                if self._input:
                    break
                self._read(6)
                if not self._input:
                    break
            if padding % 4:
                raise _trailing(self._path, "xz", self._handle.tell() - len(self._input), "%d bytes of stream "
                                "padding (not a multiple of 4)" % padding)
            self._read(6)
        if not self._input:
            self._done = True
            return
        if not self._input.startswith(STREAM_MAGICS[self._kind]):
            raise _trailing(self._path, self._kind, self._handle.tell() - len(self._input), "bytes that are not %s"
                            % self._kind)
        self._decompressor = self._new()

    def readinto(self, view):
        size = len(view)
        while not self._done:
            decompressor = self._decompressor
            if decompressor.eof:
                self._next_stream()
                continue
            if self._kind == "gzip":
                if not self._input:
                    self._read(1)
                    if not self._input:
                        raise EOFError("the gzip data is truncated")
                out = decompressor.decompress(self._input, size)
                # At the end of a member zlib keeps the rest in unused_data (and may leave it in unconsumed_tail too).
                self._input = b"" if decompressor.eof else decompressor.unconsumed_tail
            else:
                data = b""
                if decompressor.needs_input:
                    if not self._input:
                        self._read(1)
                        if not self._input:
                            raise EOFError("the %s data is truncated" % self._kind)
                    data, self._input = self._input, b""
                out = decompressor.decompress(data, max_length=size)
            if out:
                count = len(out)
                view[:count] = out
                return count
        return 0

    def close(self):
        pass


def _zip_end_is_the_end(src_path):
    """True when the zip's end-of-central-directory record (with its comment) ends the file."""
    size = os.path.getsize(src_path)
    tail_start = max(0, size - (22 + 65535))
    tail = _read_at(src_path, tail_start, size - tail_start)
    pos = tail.rfind(b"PK\x05\x06")
    while pos >= 0:
        if pos + 22 <= len(tail) and pos + 22 + struct.unpack("<H", tail[pos + 20:pos + 22])[0] == len(tail):
            return True
        pos = tail.rfind(b"PK\x05\x06", 0, pos)
    return False


def _check_zip_member(src_path, info):
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise _gate.refuse("zip_member_name", "%s: the zip member %r has an absolute path or '..': refused (the "
                           "name is never used as a path, but an archive made this way is not an honest image)"
                           % (src_path, name), member=name)
    if info.flag_bits & 0x1:
        raise _gate.refuse("zip_encrypted", "%s: the zip member %r is encrypted: refused" % (src_path, name))


def _open_reader(src_path, kind, stack):
    """A file object yielding the decompressed bytes; ``stack`` (an ExitStack) closes what is opened."""
    if kind in ("gzip", "bzip2", "xz"):
        handle = stack.enter_context(open(src_path, "rb"))
        return _StreamReader(handle, kind, src_path)
    if kind == "zip":
        if not _zip_end_is_the_end(src_path):
            raise _trailing(src_path, "zip", os.path.getsize(src_path), "the archive's end record is not at the end "
                            "of the file: bytes")
        archive = stack.enter_context(zipfile.ZipFile(src_path))
        members = _zip_file_members(archive)
        if len(members) != 1:
            names = [info.filename for info in members]
            shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise _gate.refuse(
                "zip_one_member",
                "the zip archive must hold exactly one file, it holds %d%s" % (len(names), (": " + shown) if names else ""),
                members=names[:100],
            )
        _check_zip_member(src_path, members[0])
        return stack.enter_context(archive.open(members[0]))
    if kind == "zstd":
        if zstandard is None:
            raise ImageRejected(
                "the image is zstd-compressed and the Python library 'zstandard' is missing on this host: "
                "install python3-zstandard (apt/dnf) or 'pip install zstandard'"
            )
        _zstd_frame_sizes(src_path)  # refuses truncated or trailing data before anything is written
        compressed = stack.enter_context(open(src_path, "rb"))
        decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        return stack.enter_context(decompressor.stream_reader(compressed, read_across_frames=True))
    raise InvalidInput("unknown compression %r: expected gzip, bzip2, xz, zip or zstd" % (kind,))


def _fill(reader, buf):
    """Read until ``buf`` is full or the stream ends, so that writes stay aligned on blocks (holes stay holes)."""
    view = memoryview(buf)
    filled = 0
    while filled < len(buf):
        count = reader.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


class _Bounds:
    """What an extraction may produce: ``cap`` apparent bytes (``max_size`` or ``max_expansion``, named by
    ``option``) and ``budget`` bytes really written (the free space when it started: holes cost nothing)."""

    def __init__(self, cap, option, budget):
        self.cap = cap
        self.option = option
        self.budget = budget


def _decompress(src_path, kind, writer, block_size, bounds):
    with contextlib.ExitStack() as stack:
        reader = _open_reader(src_path, kind, stack)
        buf = bytearray(block_size)
        cap, budget = bounds.cap, bounds.budget
        while True:
            count = _fill(reader, buf)
            if not count:
                break
            writer.write(buf, count)
            # Two integer compares per block: the bounds of the gate.
            if writer.offset > cap:
                raise _over_cap(src_path, kind, bounds)
            if writer.offset - writer.skipped > budget:
                raise NotEnoughSpace("the extracted data is more than the %s free when the extraction started"
                                     % human_size(budget), errno=errno.ENOSPC)
    return writer.finish()


def _over_cap(src_path, kind, bounds, estimate=None):
    rule = "max_expansion" if bounds.option == "max_expansion" else "max_size"
    what = ("announces %s" % human_size(estimate)) if estimate is not None else \
        ("expands to more than %s" % human_size(bounds.cap))
    if rule == "max_expansion":
        why = "more than max_expansion times its compressed size (%s): a decompression bomb?" % human_size(
            os.path.getsize(src_path))
    else:
        why = "above max_size (%s)" % human_size(bounds.cap)
    return _gate.refuse(rule, "%s: the %s data %s, %s; refused, and nothing was kept (raise %s to accept it)"
                        % (src_path, kind, what, why, rule), cap=bounds.cap)


def extract(src_path: str, dst_path: str, kind: Optional[str] = None, block_size: int = DEFAULT_BLOCK_SIZE,
            check_space: bool = True, mode: int = 0o644, limits: Optional[_gate.Limits] = None) -> int:
    """Decompress ``src_path`` into the new file ``dst_path`` (created with O_EXCL) and return the bytes written.

    Streamed, constant memory, through ``SparseWriter`` so zero blocks become holes, fsynced at the end.
    Bounded by ``limits`` (``_gate.Limits``; the defaults when None): at most ``max_size`` bytes and at most
    ``max_expansion`` times the compressed size (refused before writing when the archive announces more), and,
    with ``check_space``, at most the free space of the destination in bytes really written (a sparse image needs
    only its data). On any failure ``dst_path`` is removed: a disk that fills up gives NotEnoughSpace, a corrupt,
    truncated, trailing-garbage or over-cap archive gives ImageRejected (another host would fetch the same bytes).
    """
    if kind is None:
        kind = detect_compression(src_path)
        if kind is None:
            raise InvalidInput("%s is not compressed (no gzip, bzip2, xz, zip or zstd signature)" % src_path)
    limits = limits or _gate.DEFAULT_LIMITS
    directory = os.path.dirname(os.path.abspath(dst_path))
    cap, option = limits.extraction_cap(os.path.getsize(src_path))
    bounds = _Bounds(cap, option, free_space(directory) if check_space else float("inf"))
    # What the archive announces (xz index, zstd frame sizes, zip member size) over the cap: refused before writing.
    # Not gzip's ISIZE: with trailing bytes it is noise, and the loop below counts anyway.
    estimate = estimated_extracted_size(src_path, kind) if kind != "gzip" else None
    if estimate is not None and estimate > cap:
        raise _over_cap(src_path, kind, bounds, estimate)
    try:
        fd = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        raise DirectDownloadError("%s already exists: a leftover of an interrupted run? remove it and retry" % dst_path) from None
    writer = SparseWriter(fd, block_size=block_size)
    done = False
    try:
        written = _decompress(src_path, kind, writer, block_size, bounds)
        done = True
        return written
    except NotEnoughSpace as exc:
        raise NotEnoughSpace(
            "the disk filled up while extracting into %s after %s; the partial file was removed (%s)"
            % (directory, human_size(writer.offset), exc.msg),
            path=directory, written=writer.offset,
        ) from exc
    except ImageRejected:
        raise
    except _CORRUPT_DATA_ERRORS as exc:
        # A real I/O error (EIO ...) is not bad data; EINVAL is: a seek to an offset a crafted archive gave.
        if isinstance(exc, OSError) and exc.errno is not None and exc.errno != errno.EINVAL:
            raise DirectDownloadError("extracting %s failed: %s" % (src_path, exc), errno=exc.errno) from exc
        text = str(exc)
        if "Memory usage limit" in text or "too much memory" in text:
            raise _gate.refuse("decoder_memory", "%s: the %s data asks for a decoder window above %s: refused (xz: "
                               "dictionaries up to %s, zstd: windows up to %s)" % (
                                   src_path, kind, human_size(XZ_MEMORY_LIMIT if kind == "xz" else ZSTD_MAX_WINDOW),
                                   human_size(XZ_MEMORY_LIMIT), human_size(ZSTD_MAX_WINDOW))) from exc
        raise _gate.refuse("corrupt", "%s is not valid %s data: %s" % (src_path, kind, exc or type(exc).__name__)) from exc
    finally:
        os.close(fd)
        if not done:
            _fs.unlink_if_present(dst_path)


# ---------------------------------------------------------------- atomic install

def _refuse_special_destination(final_path):
    try:
        st = os.lstat(final_path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise InvalidInput("refusing to install to %s: it is a symbolic link (remove it or choose another name)" % final_path,
                           path=final_path)
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInput("refusing to install to %s: it is a directory" % final_path, path=final_path)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput("refusing to install to %s: it exists and is not a regular file" % final_path, path=final_path)


def install_file(tmp_path: str, final_path: str) -> str:
    """Make ``tmp_path`` durable and rename it to ``final_path`` in one step; fsync the directory.

    ``final_path`` may be an existing regular file (it is replaced atomically); a symlink, a directory or any
    other special file is refused. Both paths must be on the same filesystem (same pool directory).
    """
    _refuse_special_destination(final_path)
    _fs.fsync_path(tmp_path)
    try:
        os.rename(tmp_path, final_path)  # replaces a symlink itself, never writes through one, even in a race
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise DirectDownloadError("cannot install %s as %s: not on the same filesystem" % (tmp_path, final_path)) from exc
        raise
    _fs.fsync_directory(os.path.dirname(os.path.abspath(final_path)))
    return final_path


# ---------------------------------------------------------------- installed-image records

def record_path(final_path: str) -> str:
    """``<dir>/.<name>.ddinfo.json`` beside the installed image."""
    directory, name = os.path.split(final_path)
    return os.path.join(directory, ".%s.ddinfo.json" % name)


def _file_identity(final_path):
    st = os.stat(final_path, follow_symlinks=False)
    return {"st_size": st.st_size, "st_mtime_ns": st.st_mtime_ns, "st_ino": st.st_ino}


def write_record(final_path: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Atomically write the record of the installed ``final_path``: ``data`` (checksum, url, format,
    virtual_size, ...) plus the file's size, mtime_ns and inode as they are now. Returns the record."""
    record = dict(data)
    if record.get("url"):
        record["url"] = redact_url(record["url"])
    record.setdefault("installed_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    record["version"] = RECORD_VERSION
    record.update(_file_identity(final_path))
    # Durable: the record vouches for the installed image (O(1) idempotence).
    _fs.write_json_atomic(record_path(final_path), record, durable=True, mode=0o644, indent=2)
    return record


def read_record(final_path: str) -> Optional[dict[str, Any]]:
    """The record of ``final_path`` as a dict, or None when there is none or it is unreadable."""
    return _fs.read_json(record_path(final_path))


def record_matches_file(final_path: str, record: Optional[Mapping[str, Any]]) -> bool:
    """True when the installed file is still the one recorded (same size, mtime_ns and inode): no re-hash.

    A file replaced (new inode), rewritten or touched (new mtime) no longer matches. Inode numbers can be
    reused, which is why size and the nanosecond mtime must match too.
    """
    if not record:
        return False
    try:
        st = os.stat(final_path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    return (record.get("st_size"), record.get("st_mtime_ns"), record.get("st_ino")) == (st.st_size, st.st_mtime_ns, st.st_ino)


def remove_image(final_path: str) -> bool:
    """Remove an installed image and its record. Returns True when something was removed."""
    _refuse_special_destination(final_path)
    removed = False
    for path in (final_path, record_path(final_path)):
        removed = _fs.unlink_if_present(path) or removed
    if removed:
        _fs.fsync_directory(os.path.dirname(os.path.abspath(final_path)))
    return removed
