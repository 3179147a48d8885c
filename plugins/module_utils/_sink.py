# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Writing image bytes: sparse writes, the hidden ``.part`` file with its sidecar, and the receive/hash/write
pipeline."""

from __future__ import annotations

import errno
import os

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import NotEnoughSpace

DEFAULT_BLOCK_SIZE = 64 * 1024


class SparseWriter:
    """Write a stream of blocks to ``fd`` from ``offset`` on, seeking over all-zero blocks.

    Safe only where the region being written holds no data yet (a new file, or a ``.part`` truncated to the
    resume offset): a skipped block must read back as zeros. ``write`` takes the bytearray itself, because
    ``bytearray == bytes`` is a memcmp while comparing a memoryview is element by element (50x slower).
    """

    def __init__(self, fd, offset=0, block_size=DEFAULT_BLOCK_SIZE, sparse=True):
        self.fd = fd
        self.offset = offset
        self.block_size = block_size
        self.sparse = sparse
        self.skipped = 0
        self._zeros = bytes(block_size)

    def write(self, buf, count=None):
        """Write ``buf[:count]``, one block at a time."""
        count = len(buf) if count is None else count
        view = memoryview(buf)
        if count <= self.block_size:
            self._write_block(buf, view, 0, count)
            return
        for start in range(0, count, self.block_size):
            self._write_block(None, view, start, min(self.block_size, count - start))

    def _write_block(self, whole, view, start, count):
        if self.sparse and count:
            # A whole-buffer block compares the bytearray itself (fast path); a slice of a larger read is a
            # bytes copy, still memcmp-speed.
            if whole is not None and start == 0 and count == len(whole):
                zero = whole == (self._zeros if count == self.block_size else self._zeros[:count])
            else:
                zero = view[start:start + count].tobytes() == self._zeros[:count]
            if zero:
                self.offset += count
                self.skipped += count
                return
        chunk = view[start:start + count]
        try:
            while chunk:
                written = os.pwrite(self.fd, chunk, self.offset)
                self.offset += written
                chunk = chunk[written:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NotEnoughSpace("the pool filled up while writing (%s)" % exc.strerror, errno=exc.errno) from exc
            raise

    def finish(self, fsync=True):
        """Set the file length (a skipped tail leaves a hole) and make the bytes durable."""
        try:
            os.ftruncate(self.fd, self.offset)
            if fsync:
                os.fsync(self.fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NotEnoughSpace("the pool filled up while writing (%s)" % exc.strerror, errno=exc.errno) from exc
            raise
        return self.offset
