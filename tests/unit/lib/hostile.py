# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A corpus of hostile images, made at test time with qemu-img and crafted header bytes (nothing binary is in the
repository): what an attacker would serve to a hypervisor that runs the download module as root.

Every builder takes the path to create and returns it as a str, like ``images.py``. The files name host files
through ``target``: give a path that must never be opened (a FIFO, a marker file) and watch for it.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import subprocess
import zipfile

from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.images import KiB, MiB

TiB = 1024 * 1024 * MiB

# VMDK descriptors in the shapes qemu's vmdk_probe accepts: the classic header line, any comment, a bare
# "version=" line, blank lines made of spaces, Windows line ends. Only the first was recognised before issue 16.
VMDK_DESCRIPTOR_STYLES = {
    "classic": "# Disk DescriptorFile\nversion=1\n",
    "comment": "# just a comment\nversion=1\n",
    "bare": "version=1\n",
    "blank": "   \n#x\nversion=2\n",
    "crlf": "# comment\r\nversion=3\r\n",
}


def _write(path, data, size=None):
    path = str(path)
    with open(path, "wb") as handle:
        handle.write(data)
        if size is not None:
            handle.truncate(size)
    return path


def vmdk_descriptor(path, target, style="comment", size=MiB):
    """A monolithicFlat VMDK descriptor whose extent is the host file ``target`` (padded to ``size``: it looks
    like a raw disk by its size). Probed by qemu-img, it opens ``target``."""
    text = VMDK_DESCRIPTOR_STYLES[style] + (
        'CID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        '# Extent description\nRW 2048 FLAT "%s" 0\n\nddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n'
        % target)
    if style == "crlf":
        text = text.replace("\n", "\r\n").replace("\r\r\n", "\r\n")
    return _write(path, text.encode(), size)


def qcow2_backed(path, backing, size=16 * MiB, backing_format="raw"):
    """A qcow2 whose backing file is ``backing`` (absolute, relative or ``json:{...}``), made without opening it."""
    path = str(path)
    images._run(images.QEMU_IMG, "create", "-q", "-u", "-f", "qcow2", "-b", backing, "-F", backing_format, path,
                str(size))
    return path


def json_backing(target):
    return 'json:{"driver": "raw", "file": {"driver": "file", "filename": "%s"}}' % target


def qcow2_iso_polyglot(path, backing):
    """A qcow2 with a backing file that also carries an ISO 9660 signature at byte 32769 (inside the qcow2 header
    cluster, which qemu ignores there)."""
    path = qcow2_backed(path, backing)
    with open(path, "r+b") as handle:
        handle.seek(32768)
        handle.write(b"\x01CD001\x01")
    return path


def iso_with(path, head):
    """A well-formed ISO whose first bytes (the free system area) are ``head``: another format's signature."""
    path = images.iso(path)
    with open(path, "r+b") as handle:
        handle.write(head)
    return path


def qcow2_patched(path, size=16 * MiB, version=None, incompatible=None, crypt_method=None, backing_offset=None,
                  virtual_size=None):
    """A qemu-img qcow2 with header fields overwritten (v3 header)."""
    path = images.qcow2(path, size)
    with open(path, "r+b") as handle:
        if version is not None:
            handle.seek(4)
            handle.write(struct.pack(">I", version))
        if backing_offset is not None:
            handle.seek(8)
            handle.write(struct.pack(">QI", backing_offset, 16))
        if virtual_size is not None:
            handle.seek(24)
            handle.write(struct.pack(">Q", virtual_size))
        if crypt_method is not None:
            handle.seek(32)
            handle.write(struct.pack(">I", crypt_method))
        if incompatible is not None:
            handle.seek(72)
            handle.write(struct.pack(">Q", incompatible))
    return path


def qcow2_with_backing_name(path, name):
    """A qcow2 whose backing-file name is ``name`` verbatim (newlines, escape sequences: text for messages)."""
    return qcow2_backed(path, name)


def luks_header(path, size=MiB):
    """The start of a LUKS1 header (magic, version 1, cipher aes xts-plain64), padded: what a raw disk encrypted
    with cryptsetup looks like, or what makes `qemu-img convert` without -f ask for a key."""
    header = b"LUKS\xba\xbe" + struct.pack(">H", 1) + b"aes".ljust(32, b"\0") + b"xts-plain64".ljust(32, b"\0")
    return _write(path, header, size)


def foreign(path, fmt, size=16 * MiB):
    """An image of a format qemu-img can create (vmdk, vpc, vhdx, vdi, qed, parallels, qcow)."""
    path = str(path)
    images._run(images.QEMU_IMG, "create", "-q", "-f", fmt, path, str(size))
    return path


def bochs(path):
    header = b"Bochs Virtual HD Image".ljust(32, b"\0") + b"Redolog".ljust(16, b"\0") + b"Growing".ljust(16, b"\0")
    return _write(path, header + struct.pack("<I", 0x00020000), 64 * KiB)


def cloop(path):
    magic = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
    return _write(path, magic, 64 * KiB)


# ---------------------------------------------------------------- decompression bombs and archive tricks

def zstd_rle_bomb(path, output_bytes, content_size=False):
    """A zstd frame of RLE blocks (4 bytes for each 128 KiB of output): ~49 KB for 1.6 GB. With
    ``content_size`` the frame header announces the size (8-byte field), as `zstd` does for a file."""
    block = 128 * KiB
    count = max(1, output_bytes // block)
    if content_size:
        header = b"\x28\xb5\x2f\xfd" + bytes([0xC0, 0x38]) + struct.pack("<Q", count * block)
    else:
        header = b"\x28\xb5\x2f\xfd" + bytes([0x00, 0x38])  # no content size, window 128 KiB
    body = bytearray()
    middle = ((1 << 1) | (block << 3)).to_bytes(3, "little") + b"\x00"
    body += middle * (count - 1)
    body += ((1 | (1 << 1) | (block << 3)).to_bytes(3, "little") + b"\x00")
    return _write(path, header + bytes(body))


def concatenated_bomb(path, kind, member_bytes, copies, byte=0):
    """``copies`` identical members/streams/frames, each ``member_bytes`` of ``byte`` compressed: a valid stream
    ("an endless zero stream") of ``member_bytes * copies`` bytes that costs little to make and to store."""
    plain = bytes([byte]) * member_bytes
    if kind == "gzip":
        member = gzip.compress(plain, compresslevel=9, mtime=0)
    elif kind == "bzip2":
        member = bz2.compress(plain, 9)
    elif kind == "xz":
        member = lzma.compress(plain, preset=6)
    elif kind == "zstd":
        result = subprocess.run(["zstd", "-q", "-19", "-c"], input=plain, stdout=subprocess.PIPE, check=True)
        member = result.stdout
    else:
        raise ValueError(kind)
    path = str(path)
    with open(path, "wb") as handle:
        for dummy in range(copies):
            handle.write(member)
    return path


def with_trailing(src, dst, tail=b"this is not compressed data\n"):
    """``src`` with bytes appended after its end."""
    with open(str(src), "rb") as handle:
        data = handle.read()
    return _write(dst, data + tail)


def zip_named(path, member_name, data=b"\0" * 4096):
    """A one-member zip whose member is called ``member_name`` (``../../etc/cron.d/x``, ``/etc/passwd``)."""
    path = str(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo(member_name), data)
    return path


def fifo(path):
    """A FIFO: opening it for reading blocks until a writer comes, so a process that opens it hangs visibly."""
    path = str(path)
    os.mkfifo(path)
    return path
