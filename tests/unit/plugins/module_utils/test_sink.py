# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import hashlib
import os

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import SourceError
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import (
    PartFile,
    SparseWriter,
    stream_to_file,
)


class FileBody:
    """A body that reads a local file: real reads, as a socket body would give them, without a server."""

    def __init__(self, path, fail_after=None):
        self.handle = open(path, "rb", buffering=0)  # pylint: disable=consider-using-with
        self.fail_after = fail_after
        self.read = 0

    def readinto(self, buf):
        if self.fail_after is not None and self.read >= self.fail_after:
            raise SourceError("connection reset")
        count = self.handle.readinto(buf)
        self.read += count
        return count

    def close(self):
        self.handle.close()


def make_holey_file(path, size, data_every, data_len):
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in range(0, size, data_every):
            handle.seek(offset)
            handle.write(os.urandom(min(data_len, size - offset)))


def test_sparse_writer_skips_zero_blocks(tmp_path):
    target = tmp_path / "out"
    fd = os.open(target, os.O_RDWR | os.O_CREAT)
    try:
        writer = SparseWriter(fd)
        writer.write(bytearray(65536))
        writer.write(bytearray(b"x" * 65536))
        writer.write(bytearray(1000))
        assert writer.finish() == 2 * 65536 + 1000
        assert writer.skipped == 65536 + 1000
    finally:
        os.close(fd)
    assert target.read_bytes() == bytes(65536) + b"x" * 65536 + bytes(1000)
    assert os.stat(target).st_blocks * 512 <= 2 * 65536


@pytest.mark.parametrize("read_size", [65536, 256 * 1024, 100_000])
def test_stream_copies_hashes_and_keeps_holes(tmp_path, read_size):
    source = tmp_path / "src"
    make_holey_file(source, 8 * 1024 * 1024 + 123, 1024 * 1024, 3 * 65536)  # qcow2 clusters are 64 KiB
    target = tmp_path / "dst"
    fd = os.open(target, os.O_RDWR | os.O_CREAT)
    sha, md5 = hashlib.sha256(), hashlib.md5()
    seen = []
    try:
        writer = SparseWriter(fd)
        copied = stream_to_file(FileBody(source), writer, [sha, md5], read_size=read_size, buffers=4,
                                on_progress=seen.append, progress_interval=0)
        writer.finish()
    finally:
        os.close(fd)
    data = source.read_bytes()
    assert copied == len(data) and target.read_bytes() == data
    assert sha.hexdigest() == hashlib.sha256(data).hexdigest() and md5.hexdigest() == hashlib.md5(data).hexdigest()
    assert os.stat(target).st_blocks <= os.stat(source).st_blocks * 1.05 + 16
    assert seen and seen == sorted(seen)


def test_stream_reraises_the_receiver_error_and_stops(tmp_path):
    source = tmp_path / "src"
    source.write_bytes(os.urandom(3 * 1024 * 1024))
    fd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        writer = SparseWriter(fd)
        with pytest.raises(SourceError, match="connection reset"):
            stream_to_file(FileBody(source, fail_after=1024 * 1024), writer, [hashlib.sha256()], read_size=65536)
        assert writer.offset == 1024 * 1024
    finally:
        os.close(fd)


def test_part_file_resume_state(tmp_path):
    part = PartFile(str(tmp_path), "disk.qcow2")
    assert part.path == str(tmp_path / ".disk.qcow2.part")
    assert part.resumable_state({"url_id": "a"}) is None
    fd = part.open_for_write(0)
    os.write(fd, b"x" * 100)
    os.close(fd)
    part.save_state({"identity": {"url_id": "a"}, "bytes_done": 100})
    assert part.resumable_state({"url_id": "a"})["bytes_done"] == 100
    assert part.resumable_state({"url_id": "b"}) is None
    fd = part.open_for_write(40)
    os.close(fd)
    assert os.path.getsize(part.path) == 40
    part.discard()
    assert not os.listdir(tmp_path)
