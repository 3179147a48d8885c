# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""From a verified download to an installed image: compression detected by content and extracted through the
sparse writer, format inspected with ``qemu-img``, policy enforced, atomic rename into the pool, and the
installed-image record that makes a second run O(1).

Order the engine follows (``_download.py``): ``is_iso`` (an ISO is never decompressed) -> ``detect_compression``
-> ``extract`` -> ``inspect_image`` -> ``check_policy`` -> ``install_file`` -> ``write_record``.

Hidden names (``.name.part``, ``.name.extracting``, ``.name.ddinfo.json``) keep our work files apart from the
images, but they are NOT invisible to libvirt: a ``dir`` pool refresh lists dot-files (and sub-directories) as
volumes (checked with libvirt 9.0.0, even unreadable or truncated ones: the refresh still succeeds). Lookups by
name are unaffected; they do show up in ``virsh vol-list`` and in the pool's volume count.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import json
import lzma
import os
import stat
import struct
import subprocess
import time
import zipfile
from collections import namedtuple

from ansible_collections.directdownload.kvm.plugins.module_utils import _fs
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    DirectDownloadError,
    ImageRejected,
    InvalidInput,
    NotEnoughSpace,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import DEFAULT_BLOCK_SIZE, SparseWriter
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import redact_url

try:
    import zstandard
except ImportError:
    zstandard = None

# Errors that mean "these bytes are not valid <kind> data". EOFError: truncated stream. OSError without errno:
# gzip.BadGzipFile and bz2's "Invalid data stream". lzma.LZMAError. zipfile's NotImplementedError (unsupported
# compression method) and RuntimeError (encrypted member).
_CORRUPT_DATA_ERRORS = (EOFError, OSError, lzma.LZMAError, zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError)
if zstandard is not None:
    _CORRUPT_DATA_ERRORS += (zstandard.ZstdError,)

ALLOWED_FORMATS = ("qcow2", "raw", "iso")
QEMU_IMG_TIMEOUT = 120
RECORD_VERSION = 1

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),  # an empty archive: extract() then says it has no file member
    (_ZSTD_MAGIC, "zstd"),
)
# ISO 9660 volume descriptors start at sector 16; "CD001" follows the type byte. Sectors 17 and 18 are checked
# too, in case the first descriptor was damaged or the image only carries later ones.
ISO_OFFSETS = _ISO_OFFSETS = (32769, 34817, 36865)
QCOW2_MAGIC = _QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_EXT_DATA_FILE = 0x44415441
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
# Formats we refuse anyway, recognised here so that qemu-img never opens them: a VMDK descriptor can name other
# files as extents (the OSSA-2024-001 class); nothing in these is a KVM direct-download format.
_FOREIGN_MAGICS = (
    (0, b"KDMV", "vmdk"),
    (0, b"COWD", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc"),
    (0, b"QED\x00", "qed"),
    (0, b"LUKS\xba\xbe", "luks"),
    (64, b"\x7f\x10\xda\xbe", "vdi"),
)


class ImageInfo(namedtuple("ImageInfo", "format virtual_size actual_size backing_file data_file raw_json path encrypted")):
    """What ``inspect_image`` learnt. ``raw_json`` is qemu-img's answer (None when qemu-img was not asked)."""

    __slots__ = ()

    def __new__(cls, format, virtual_size, actual_size, backing_file=None, data_file=None, raw_json=None,  # pylint: disable=redefined-builtin
                path=None, encrypted=False):
        return super().__new__(cls, format, virtual_size, actual_size, backing_file, data_file, raw_json, path, encrypted)


# ---------------------------------------------------------------- sizes and free space

def human_size(count):
    """``1536`` -> ``1.5 KiB``: sizes in messages."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return ("%d B" % count) if unit == "B" else ("%.1f %s" % (value, unit))
        value /= 1024
    return "%.1f TiB" % value


def free_space(path):
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def ensure_free_space(directory, needed_bytes, what):
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


def is_iso(path):
    """True when ``path`` carries an ISO 9660 volume descriptor signature ("CD001")."""
    with open(path, "rb") as handle:
        for offset in _ISO_OFFSETS:
            handle.seek(offset)
            if handle.read(5) == b"CD001":
                return True
    return False


def compression_from_head(head):
    """``gzip|bzip2|xz|zip|zstd`` from the first bytes of a stream, or None. ``url_check`` uses it on the head of a
    remote file; :func:`detect_compression` on a file."""
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[3:4] != b"0":
        return "bzip2"
    return next((name for magic, name in _MAGICS if head.startswith(magic)), None)


def foreign_format_from_head(head):
    """The name of a disk format we refuse (vmdk, vhdx, vpc, qed, luks, vdi) from the first 72 bytes, or None."""
    for offset, magic, name in _FOREIGN_MAGICS:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


def detect_compression(path):
    """``gzip|bzip2|xz|zip|zstd`` from the magic bytes, never from the name; None when not compressed.

    An ISO answers None whatever its first bytes are (its first 32 KiB are a free system area).
    """
    kind = compression_from_head(_read_at(path, 0, 8))
    if kind is not None and is_iso(path):
        return None
    return kind


def estimated_extracted_size(path, kind):
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
            if magic == _ZSTD_MAGIC:
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
                        raise ImageRejected("%s: corrupt zstd data (reserved block type)" % path)
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
                raise ImageRejected("%s: not zstd data at byte %d (trailing garbage?)" % (path, pos))
            if pos > end:
                break
            handle.seek(pos)
        if pos != end:
            raise ImageRejected("%s: the zstd data is truncated (the file ends inside a frame)" % path)
    return sizes


# ---------------------------------------------------------------- extraction

def _zip_file_members(archive):
    return [info for info in archive.infolist() if not info.is_dir()]


def extracting_path(final_path):
    """``<dir>/.<name>.extracting``: the hidden file an extraction writes before ``install_file``."""
    directory, name = os.path.split(final_path)
    return os.path.join(directory, ".%s.extracting" % name)


def _open_reader(src_path, kind, stack):
    """A file object yielding the decompressed bytes; ``stack`` (an ExitStack) closes what is opened."""
    if kind == "gzip":
        return stack.enter_context(gzip.open(src_path, "rb"))  # concatenated members are read as one stream
    if kind == "bzip2":
        return stack.enter_context(bz2.open(src_path, "rb"))
    if kind == "xz":
        return stack.enter_context(lzma.open(src_path, "rb"))
    if kind == "zip":
        archive = stack.enter_context(zipfile.ZipFile(src_path))
        members = _zip_file_members(archive)
        if len(members) != 1:
            names = [info.filename for info in members]
            shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise ImageRejected(
                "the zip archive must hold exactly one file, it holds %d%s" % (len(names), (": " + shown) if names else ""),
                members=names[:100],
            )
        return stack.enter_context(archive.open(members[0]))
    if kind == "zstd":
        if zstandard is None:
            raise ImageRejected(
                "the image is zstd-compressed and the Python library 'zstandard' is missing on this host: "
                "install python3-zstandard (apt/dnf) or 'pip install zstandard'"
            )
        _zstd_frame_sizes(src_path)  # refuses truncated or trailing data before anything is written
        compressed = stack.enter_context(open(src_path, "rb"))
        return stack.enter_context(zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=True))
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


def _decompress(src_path, kind, writer, block_size):
    with contextlib.ExitStack() as stack:
        reader = _open_reader(src_path, kind, stack)
        buf = bytearray(block_size)
        while True:
            count = _fill(reader, buf)
            if not count:
                break
            writer.write(buf, count)
    return writer.finish()


def extract(src_path, dst_path, kind=None, block_size=DEFAULT_BLOCK_SIZE, check_space=True, mode=0o644):
    """Decompress ``src_path`` into the new file ``dst_path`` (created with O_EXCL) and return the bytes written.

    Streamed, constant memory, through ``SparseWriter`` so zero blocks become holes, fsynced at the end. The free
    space is checked first against ``estimated_extracted_size`` (the apparent size: a sparse image needs less;
    pass ``check_space=False`` to rely on the ENOSPC handling alone). On any failure ``dst_path`` is removed: a
    disk that fills up gives NotEnoughSpace, a corrupt or truncated archive gives ImageRejected (another host
    would fetch the same bytes).
    """
    if kind is None:
        kind = detect_compression(src_path)
        if kind is None:
            raise InvalidInput("%s is not compressed (no gzip, bzip2, xz, zip or zstd signature)" % src_path)
    directory = os.path.dirname(os.path.abspath(dst_path))
    estimate = estimated_extracted_size(src_path, kind)
    if check_space:
        ensure_free_space(directory, estimate, "the extracted image")
    try:
        fd = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        raise DirectDownloadError("%s already exists: a leftover of an interrupted run? remove it and retry" % dst_path) from None
    writer = SparseWriter(fd, block_size=block_size)
    done = False
    try:
        written = _decompress(src_path, kind, writer, block_size)
        if kind == "xz" and estimate is not None and written != estimate:
            # lzma.LZMAFile stops without a word at stream padding or trailing bytes; the xz index says how
            # much there should have been.
            raise ImageRejected(
                "%s: only %s of the %s announced by the xz index could be read (stream padding or trailing data)"
                % (src_path, human_size(written), human_size(estimate))
            )
        done = True
        return written
    except NotEnoughSpace as exc:
        raise NotEnoughSpace(
            "the disk filled up while extracting into %s after %s; the partial file was removed"
            % (directory, human_size(writer.offset)),
            path=directory, written=writer.offset,
        ) from exc
    except _CORRUPT_DATA_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # a real I/O error (EIO ...), not bad data
            raise DirectDownloadError("extracting %s failed: %s" % (src_path, exc), errno=exc.errno) from exc
        raise ImageRejected("%s is not valid %s data: %s" % (src_path, kind, exc or type(exc).__name__)) from exc
    finally:
        os.close(fd)
        if not done:
            _unlink_quietly(dst_path)


def _unlink_quietly(path):
    _fs.unlink_if_present(path)


# ---------------------------------------------------------------- inspection

def _qcow2_header_facts(path):
    """Read the qcow2 header ourselves (as CloudStack's Qcow2Inspector does) so that an image naming a backing
    file or an external data file is refused without qemu-img ever opening what it names.

    Returns ``(virtual_size, backing_file, data_file, encrypted)``; names are None when absent.
    """
    with open(path, "rb") as handle:
        header = handle.read(4096)
        if len(header) < 72:
            raise ImageRejected("%s: truncated qcow2 header" % path)
        version, backing_offset, backing_size = struct.unpack(">IQI", header[4:20])
        virtual_size, crypt_method = struct.unpack(">QI", header[24:36])
        backing_file = data_file = None
        if backing_offset:
            handle.seek(backing_offset)
            backing_file = handle.read(min(backing_size, 1023)).decode("utf-8", "replace") or "(unnamed)"
        incompatible = 0
        if version >= 3 and len(header) >= 104:
            incompatible = struct.unpack(">Q", header[72:80])[0]
            header_length = struct.unpack(">I", header[100:104])[0]
            pos = header_length
            while pos + 8 <= len(header):
                ext_type, ext_length = struct.unpack(">II", header[pos:pos + 8])
                if ext_type == 0:
                    break
                if ext_type == _QCOW2_EXT_DATA_FILE:
                    data_file = header[pos + 8:pos + 8 + ext_length].decode("utf-8", "replace")
                pos += 8 + ((ext_length + 7) & ~7)
        if incompatible & _QCOW2_INCOMPAT_DATA_FILE and not data_file:
            data_file = "(external data file, name not recorded)"
    return virtual_size, backing_file, data_file, bool(crypt_method)


def _sniff_foreign_format(path):
    return foreign_format_from_head(_read_at(path, 0, 72))


def _run_qemu_img_info(path, fmt, qemu_img, timeout):
    argv = [qemu_img, "info", "--output=json", "--force-share"]
    if fmt:
        argv += ["-f", fmt]
    argv.append(path)
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, check=False)
    except FileNotFoundError:
        raise DirectDownloadError(
            "%s not found: install the package that provides it (qemu-utils on Debian/Ubuntu, qemu-img on RHEL/Rocky/Alma)"
            % qemu_img
        ) from None
    except subprocess.TimeoutExpired:
        raise DirectDownloadError("qemu-img info %s did not answer within %d s" % (path, timeout)) from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        raise ImageRejected("qemu-img could not read %s: %s" % (path, stderr or "exit code %d" % proc.returncode),
                            rc=proc.returncode, stderr=stderr)
    try:
        return json.loads(proc.stdout.decode("utf-8", "replace"))
    except ValueError as exc:
        raise DirectDownloadError("qemu-img info gave output that is not JSON: %s" % exc) from exc


def inspect_image(path, declared_format=None, qemu_img="qemu-img", timeout=QEMU_IMG_TIMEOUT):
    """Find the image's format and sizes. Never lets qemu-img open a file that a qcow2 header or a VMDK
    descriptor names.

    * ``declared_format == "raw"``: ``qemu-img info -f raw``, no probing, so a raw disk whose guest wrote a qcow2
      header into its first sector is read as the raw disk it is (qemu's probing security point).
    * an ISO 9660 signature: format ``iso``, qemu-img not asked.
    * a qcow2 header: read here first; with a backing file or an external data file the answer comes from the
      header alone (``check_policy`` refuses it); otherwise ``qemu-img info -f qcow2``.
    * VMDK, VHD(X), VDI, QED, LUKS signatures: reported as such without qemu-img (``check_policy`` refuses them).
    * anything else: qemu-img probes it (random bytes are ``raw``).
    """
    st = os.stat(path)
    allocated = st.st_blocks * 512
    declared = (declared_format or "").strip().lower() or None
    if declared != "raw":
        if is_iso(path):
            return ImageInfo("iso", st.st_size, allocated, path=path)
        if _read_at(path, 0, 4) == _QCOW2_MAGIC:
            virtual_size, backing, data_file, encrypted = _qcow2_header_facts(path)
            if backing or data_file:
                return ImageInfo("qcow2", virtual_size, allocated, backing, data_file, path=path, encrypted=encrypted)
            return _info_from_json(path, _run_qemu_img_info(path, "qcow2", qemu_img, timeout), allocated)
        foreign = _sniff_foreign_format(path)
        if foreign:
            return ImageInfo(foreign, None, allocated, path=path)
    fmt = "raw" if declared == "raw" else None
    return _info_from_json(path, _run_qemu_img_info(path, fmt, qemu_img, timeout), allocated)


def _info_from_json(path, data, allocated):
    specific = (data.get("format-specific") or {}).get("data") or {}
    return ImageInfo(
        format=data.get("format"),
        virtual_size=data.get("virtual-size"),
        actual_size=data.get("actual-size", allocated),
        backing_file=data.get("full-backing-filename") or data.get("backing-filename"),
        data_file=specific.get("data-file"),
        raw_json=data,
        path=path,
        encrypted=bool(data.get("encrypted")),
    )


def check_policy(info, expected_format=None):
    """Refuse what must not reach a pool. Raises ImageRejected; returns None when the image is acceptable."""
    name = info.path or "the image"
    if info.backing_file:
        raise ImageRejected(
            "%s is a %s image with a backing file (%s): refused, a template must be self-contained "
            "(a backing file can point anywhere on the host; CVE-2024-50386)" % (name, info.format, info.backing_file),
            format=info.format, backing_file=info.backing_file,
        )
    if info.data_file:
        raise ImageRejected(
            "%s is a %s image with an external data file (%s): refused, it could expose any file on the host "
            "(CVE-2024-50386)" % (name, info.format, info.data_file),
            format=info.format, data_file=info.data_file,
        )
    expected = (expected_format or "").strip().lower() or None
    if expected and expected != info.format:
        raise ImageRejected(
            "format mismatch: %s was expected to be %s but it is %s" % (name, expected, info.format),
            expected_format=expected, format=info.format,
        )
    if info.format not in ALLOWED_FORMATS:
        raise ImageRejected(
            "%s is a %s image: direct download to KVM takes qcow2, raw or iso only "
            "(convert it first, e.g. qemu-img convert -O qcow2)" % (name, info.format),
            format=info.format,
        )
    if info.encrypted:
        raise ImageRejected("%s is an encrypted %s image: refused, the host has no key for it" % (name, info.format),
                            format=info.format)


# ---------------------------------------------------------------- atomic install

def _fsync_path(path, directory=False):
    """The one fsync policy (_fs): a directory's EINVAL is ignored, a file is opened without following links."""
    if directory:
        _fs.fsync_directory(path)
    else:
        _fs.fsync_path(path)


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


def install_file(tmp_path, final_path):
    """Make ``tmp_path`` durable and rename it to ``final_path`` in one step; fsync the directory.

    ``final_path`` may be an existing regular file (it is replaced atomically); a symlink, a directory or any
    other special file is refused. Both paths must be on the same filesystem (same pool directory).
    """
    _refuse_special_destination(final_path)
    _fsync_path(tmp_path)
    try:
        os.rename(tmp_path, final_path)  # replaces a symlink itself, never writes through one, even in a race
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise DirectDownloadError("cannot install %s as %s: not on the same filesystem" % (tmp_path, final_path)) from exc
        raise
    _fsync_path(os.path.dirname(os.path.abspath(final_path)), directory=True)
    return final_path


# ---------------------------------------------------------------- installed-image records

def record_path(final_path):
    """``<dir>/.<name>.ddinfo.json`` beside the installed image."""
    directory, name = os.path.split(final_path)
    return os.path.join(directory, ".%s.ddinfo.json" % name)


def _file_identity(final_path):
    st = os.stat(final_path, follow_symlinks=False)
    return {"st_size": st.st_size, "st_mtime_ns": st.st_mtime_ns, "st_ino": st.st_ino}


def write_record(final_path, data):
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


def read_record(final_path):
    """The record of ``final_path`` as a dict, or None when there is none or it is unreadable."""
    try:
        with open(record_path(final_path)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def record_matches_file(final_path, record):
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


def remove_image(final_path):
    """Remove an installed image and its record. Returns True when something was removed."""
    _refuse_special_destination(final_path)
    removed = False
    for path in (final_path, record_path(final_path)):
        try:
            os.unlink(path)
            removed = True
        except FileNotFoundError:
            pass
    if removed:
        _fsync_path(os.path.dirname(os.path.abspath(final_path)), directory=True)
    return removed
