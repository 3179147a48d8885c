# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Make test images at run time: qcow2 (plain, with data, with a backing file, with an external data file),
raw (holey or random), a minimal ISO 9660, and compressed variants made by the real compressors.

Every function takes the path to create and returns it (as a str), so calls chain::

    from ansible_collections.directdownload.kvm.tests.unit.lib import images
    disk = images.qcow2(tmp_path / "disk.qcow2", 64 * images.MiB, writes=[(0, images.MiB, 0xAB)])
    gz = images.compress(disk, tmp_path / "disk.bin", "gzip")   # the suffix is irrelevant on purpose

Sizes are bytes. Nothing here is big unless you ask: commit no images, make them in ``tmp_path``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import zipfile

KiB = 1024
MiB = 1024 * KiB

QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
QEMU_IO = shutil.which("qemu-io") or "qemu-io"

# Kinds accepted by compress(). "gzip-multi" is two concatenated gzip members (valid gzip, what `cat a.gz b.gz`
# gives), "zip-two" an archive with two file members (must be refused), "zip-dir" one file member plus a
# directory entry (must be accepted), "zstd-nosize" a zstd frame without the content size (streamed input).
COMPRESSION_KINDS = ("gzip", "gzip-multi", "bzip2", "xz", "zip", "zip-two", "zip-dir", "zstd", "zstd-nosize")
# What detect_compression() must answer for each kind.
DETECTED_AS = {
    "gzip": "gzip", "gzip-multi": "gzip", "bzip2": "bzip2", "xz": "xz",
    "zip": "zip", "zip-two": "zip", "zip-dir": "zip", "zstd": "zstd", "zstd-nosize": "zstd",
}


def _run(*argv, stdin=None, stdout=None):
    result = subprocess.run([str(a) for a in argv], stdin=stdin, stdout=stdout or subprocess.PIPE,
                            stderr=subprocess.PIPE, check=False)
    if result.returncode != 0:
        raise RuntimeError("%s failed (rc=%d): %s" % (argv[0], result.returncode, result.stderr.decode(errors="replace")))
    return result


# ---------------------------------------------------------------- qcow2

def qcow2(path, size=64 * MiB, writes=(), cluster_size=None):
    """A qcow2 of virtual ``size``; ``writes`` is a list of ``(offset, length, pattern_byte)`` written into the
    guest view with qemu-io (offset and length multiples of 512)."""
    path = str(path)
    argv = [QEMU_IMG, "create", "-q", "-f", "qcow2"]
    if cluster_size:
        argv += ["-o", "cluster_size=%d" % cluster_size]
    _run(*(argv + [path, str(size)]))
    for offset, length, pattern in writes:
        _run(QEMU_IO, "-f", "qcow2", "-c", "write -q -P 0x%02x %d %d" % (pattern, offset, length), path)
    return path


def qcow2_with_backing(path, backing, backing_format="qcow2", size=None):
    """A qcow2 overlay whose backing file is ``backing`` (it must exist unless ``size`` is given)."""
    path = str(path)
    argv = [QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", backing_format, path]
    if size is not None:
        argv.append(str(size))
    _run(*argv)
    return path


def qcow2_with_data_file(path, data_file, size=16 * MiB):
    """A qcow2 whose guest data lives in the external file ``data_file`` (created by qemu-img)."""
    path = str(path)
    _run(QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "data_file=%s" % data_file, path, str(size))
    return path


def convert(src, dst, out_format):
    """``qemu-img convert -O out_format`` (e.g. raw -> qcow2)."""
    dst = str(dst)
    _run(QEMU_IMG, "convert", "-O", out_format, str(src), dst)
    return dst


# ---------------------------------------------------------------- raw

def sparse_raw(path, size=64 * MiB, data=None, seed=1):
    """A raw file of ``size`` bytes that is mostly holes. ``data`` is a list of ``(offset, length)`` regions
    filled with pseudo-random bytes; by default four 256 KiB regions spread over the file."""
    path = str(path)
    if data is None:
        step = size // 4
        data = [(i * step, min(256 * KiB, step)) for i in range(4)]
    rng = random.Random(seed)
    with open(path, "wb") as handle:
        for offset, length in data:
            handle.seek(offset)
            handle.write(rng.randbytes(length) if hasattr(rng, "randbytes") else os.urandom(length))
        handle.truncate(size)
    return path


def random_raw(path, size=4 * MiB, seed=None):
    """A raw file of ``size`` random bytes (incompressible, no holes). ``seed`` makes it reproducible."""
    path = str(path)
    rng = random.Random(seed) if seed is not None else None
    with open(path, "wb") as handle:
        left = size
        while left:
            count = min(left, MiB)
            handle.write(rng.randbytes(count) if rng is not None else os.urandom(count))
            left -= count
    return path


def raw_containing_qcow2_header(path, size=4 * MiB, backing="/etc/hostname"):
    """A raw disk whose first sector holds a qcow2 header naming ``backing`` as its backing file: what a guest
    can write into its own raw disk. Probed by qemu-img it looks like qcow2 (the known probing attack); read
    with ``-f raw`` it is what it is."""
    path = str(path)
    header = path + ".hdr"
    try:
        _run(QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", header, str(size))
        with open(header, "rb") as handle:
            head = handle.read(64 * KiB)
    finally:
        if os.path.exists(header):
            os.unlink(header)
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return path


# ---------------------------------------------------------------- ISO 9660

_SECTOR = 2048


def _both16(value):
    return struct.pack("<H", value) + struct.pack(">H", value)


def _both32(value):
    return struct.pack("<I", value) + struct.pack(">I", value)


def _dir_record(extent, length, name):
    body = (_both32(extent) + _both32(length) + bytes(7) + bytes([0x02, 0, 0]) + _both16(1)
            + bytes([len(name)]) + name)
    record = bytes([33 + len(name) + (len(name) + 1) % 2, 0]) + body
    return record + bytes(len(record) % 2)


def iso(path, size=MiB, volume_id="DDTEST"):
    """A minimal but well-formed ISO 9660 image (primary volume descriptor at sector 16 with "CD001" at byte
    32769, terminator at 17, an empty root directory at 18, path tables at 19/20) padded to ``size`` bytes
    (rounded up to 2 KiB sectors). No genisoimage needed."""
    path = str(path)
    sectors = max(21, -(-size // _SECTOR))
    root = _dir_record(18, _SECTOR, b"\x00")
    pvd = bytearray(_SECTOR)
    pvd[0:7] = b"\x01CD001\x01"
    pvd[8:40] = b"LINUX".ljust(32)
    pvd[40:72] = volume_id.upper().encode("ascii")[:32].ljust(32)
    pvd[80:88] = _both32(sectors)
    pvd[120:124] = _both16(1)
    pvd[124:128] = _both16(1)
    pvd[128:132] = _both16(_SECTOR)
    path_table = bytes([1, 0]) + struct.pack("<I", 18) + struct.pack("<H", 1) + b"\x00\x00"
    pvd[132:140] = _both32(len(path_table) - 1)  # ISO 9660 counts the record without its pad byte
    pvd[140:144] = struct.pack("<I", 19)
    pvd[148:152] = struct.pack(">I", 20)
    pvd[156:156 + len(root)] = root
    pvd[190:318] = b" " * 128
    pvd[318:446] = b" " * 128
    pvd[446:574] = b" " * 128
    pvd[574:702] = b" " * 128
    for start in (813, 830, 847, 864):  # dates "not specified": 16 ASCII zeros and a zero offset
        pvd[start:start + 16] = b"0" * 16
    pvd[881] = 1
    terminator = bytearray(_SECTOR)
    terminator[0:7] = b"\xffCD001\x01"
    directory = bytearray(_SECTOR)
    dot = _dir_record(18, _SECTOR, b"\x00")
    dotdot = _dir_record(18, _SECTOR, b"\x01")
    directory[0:len(dot)] = dot
    directory[len(dot):len(dot) + len(dotdot)] = dotdot
    path_table_be = bytes([1, 0]) + struct.pack(">I", 18) + struct.pack(">H", 1) + b"\x00\x00"
    with open(path, "wb") as handle:
        handle.seek(16 * _SECTOR)
        handle.write(pvd)
        handle.write(terminator)
        handle.write(directory)
        handle.write(path_table.ljust(_SECTOR, b"\x00"))
        handle.write(path_table_be.ljust(_SECTOR, b"\x00"))
        handle.truncate(sectors * _SECTOR)
    return path


# ---------------------------------------------------------------- compression

def compress(src, dst, kind):
    """Compress ``src`` into ``dst`` as ``kind`` (one of COMPRESSION_KINDS) with the real tool or stdlib codec.

    The destination name is yours to choose: give it a misleading suffix to prove detection is by content.
    """
    src, dst = str(src), str(dst)
    if kind not in COMPRESSION_KINDS:
        raise ValueError("unknown kind %r, use one of %s" % (kind, ", ".join(COMPRESSION_KINDS)))
    if kind in ("gzip", "bzip2", "xz"):
        with open(dst, "wb") as out:
            _run(kind, "-c", src, stdout=out)
    elif kind == "gzip-multi":
        # Two members, each half of the input: `gzip -d` and Python's gzip read them as one stream.
        size = os.path.getsize(src)
        with open(src, "rb") as inp, open(dst, "wb") as out:
            for part in (size // 2, size - size // 2):
                with gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=6, mtime=0) as member:
                    _copy(inp, member, part)
    elif kind == "zstd":
        with open(dst, "wb") as out:
            _run("zstd", "-q", "-c", src, stdout=out)  # a file input: the frame records the content size
    elif kind == "zstd-nosize":
        with open(src, "rb") as inp, open(dst, "wb") as out:
            _run("zstd", "-q", "-c", stdin=inp, stdout=out)  # stdin: size unknown, not recorded
    else:
        name = os.path.basename(src)
        with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            if kind == "zip-dir":
                archive.writestr(zipfile.ZipInfo("images/"), b"")
                archive.write(src, "images/" + name)
            else:
                archive.write(src, name)
            if kind == "zip-two":
                archive.writestr("README.txt", b"a second member\n")
    return dst


def _copy(inp, out, count):
    while count:
        chunk = inp.read(min(count, MiB))
        if not chunk:
            break
        out.write(chunk)
        count -= len(chunk)


# ---------------------------------------------------------------- facts about files

def allocated_bytes(path):
    """Bytes the file really occupies on disk (``du``), from st_blocks."""
    return os.stat(str(path)).st_blocks * 512


def sha256_file(path):
    digest = hashlib.sha256()
    with open(str(path), "rb") as handle:
        for chunk in iter(lambda: handle.read(MiB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def qemu_img_info(path, fmt=None):
    """``qemu-img info --output=json`` as a dict (``fmt`` forces the format)."""
    argv = [QEMU_IMG, "info", "--output=json", "-U"]
    if fmt:
        argv += ["-f", fmt]
    return json.loads(_run(*(argv + [str(path)])).stdout)
