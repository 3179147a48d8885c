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
import queue
import threading
import time
from typing import Any, Callable, Optional, Sequence

from ansible_collections.directdownload.kvm.plugins.module_utils import _fs
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import NotEnoughSpace
from ansible_collections.directdownload.kvm.plugins.module_utils._rate import Connection

DEFAULT_BLOCK_SIZE = 64 * 1024
# The receive buffer of stream_to_file (socket reads; writes stay block_size).
DEFAULT_READ_SIZE = 256 * 1024
# Start writing dirty pages back every this many bytes, so that the fsync before the rename finds little left to
# write: on a 2 GiB download that fsync took ~1 s when all the writeback waited for it, ~0 s with this.
DEFAULT_WRITEBACK_EVERY = 32 * 1024 * 1024


def _sync_file_range_function():
    """``sync_file_range(2)`` from libc (Linux), or None. It only *starts* writeback (SYNC_FILE_RANGE_WRITE): no
    durability promise, which is why the final fsync stays."""
    try:
        import ctypes  # pylint: disable=import-outside-toplevel
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    return function


_SYNC_FILE_RANGE = _sync_file_range_function()
_SYNC_FILE_RANGE_WRITE = 2
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _fallocate_function():
    """libc ``fallocate`` (Linux), or None. ctypes is imported here: only a failure or a resume needs it."""
    import ctypes  # pylint: disable=import-outside-toplevel
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_FALLOCATE = []


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate ``[offset, offset+length)`` so it reads as zeros again without changing the file size (a range
    of a ``.part`` that a transfer in ranges must write again). Returns False where the system or file system
    cannot (the caller then writes that range densely instead)."""
    if length <= 0:
        return True
    if not _FALLOCATE:
        _FALLOCATE.append(_fallocate_function())
    function = _FALLOCATE[0]
    if function is None:
        return False
    return function(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0


class SparseWriter:
    """Write a stream of blocks to ``fd`` from ``offset`` on, seeking over all-zero blocks.

    Safe only where the region being written holds no data yet (a new file, or a ``.part`` truncated to the
    resume offset): a skipped block must read back as zeros. ``write`` takes the bytearray itself, because
    ``bytearray == bytes`` is a memcmp while comparing a memoryview is element by element (50x slower).
    """

    def __init__(self, fd, offset=0, block_size=DEFAULT_BLOCK_SIZE, sparse=True, writeback_every=DEFAULT_WRITEBACK_EVERY):
        self.fd = fd
        self.offset = offset
        self.block_size = block_size
        self.sparse = sparse
        self.skipped = 0
        self._zeros = bytes(block_size)
        self._writeback_every = writeback_every if _SYNC_FILE_RANGE is not None else 0
        self._written_back = offset

    def write(self, buf: bytearray, count: Optional[int] = None) -> None:
        """Write ``buf[:count]`` in blocks aligned to file offsets (so holes line up with the image's clusters
        whatever the read size was)."""
        count = len(buf) if count is None else count
        view = memoryview(buf)
        start = 0
        while start < count:
            length = min(self.block_size - self.offset % self.block_size, count - start)
            whole = buf if start == 0 and length == len(buf) else None
            self._write_block(whole, view, start, length)
            start += length
        if self._writeback_every and self.offset - self._written_back >= self._writeback_every:
            # Best effort: a failure here only means the final fsync does the work.
            _SYNC_FILE_RANGE(self.fd, self._written_back, self.offset - self._written_back, _SYNC_FILE_RANGE_WRITE)
            self._written_back = self.offset

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

    def finish(self, fsync: bool = True) -> int:
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


# The progress sidecar holds no secret (the URL is redacted, the identity is a digest): owner read-write, and
# readable by the operator group of the agent settings (``progress_group``; without it, root's group).
SIDECAR_MODE = 0o640


class PartFile:
    """The hidden, resumable download file ``<pool>/.<name>.part`` and its sidecar ``.<name>.part.json``.

    The sidecar says what the part holds (source identity, validators, expected checksum, bytes done; for a
    transfer in ranges, the ``segments`` key: its piece map, see _pieces) and how the transfer goes (total, rate,
    ETA, source): operators watch it during long downloads. One schema for every transfer. A part without a sidecar,
    or whose sidecar speaks of another URL or checksum, is never resumed.
    """

    def __init__(self, directory, name):
        self.directory = directory
        self.name = name
        self.path = os.path.join(directory, ".%s.part" % name)
        self.sidecar_path = self.path + ".json"

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def resumable_state(self, identity: Any) -> Optional[dict[str, Any]]:
        """The saved state if the part can be resumed for ``identity`` (a dict of what must not have changed)."""
        state = _fs.read_json(self.sidecar_path)
        if not state or _fs.kind_at(self.path) != "file":
            return None
        if state.get("identity") != identity or not isinstance(state.get("bytes_done"), int):
            return None
        return state if state["bytes_done"] > 0 else None

    def save_state(self, state: dict[str, Any], gid: Optional[int] = None) -> None:
        """Replace the sidecar: mode SIDECAR_MODE (0640, exactly), group ``gid`` when given (the operator group of
        the agent settings), so operators can ``cat`` it without root. Not durable: a hint that survives a killed
        process; every byte it vouches for is verified again."""
        _fs.write_json_atomic(self.sidecar_path, state, durable=False, mode=SIDECAR_MODE, gid=gid)

    def open_for_write(self, offset: int) -> int:
        """Open the part for writing from ``offset``: the file is cut (or extended with a hole) to exactly that
        length, so everything past it reads as zeros, which the sparse writer relies on."""
        fd = _fs.open_regular(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, offset)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def discard(self) -> None:
        _fs.unlink_if_present(self.path)
        _fs.unlink_if_present(self.sidecar_path)


class _Batch:
    """A receive buffer shared by the hashing and the writing thread; back to the free list when both are done."""

    __slots__ = ("buf", "count", "pending", "lock")

    def __init__(self, size):
        self.buf = bytearray(size)
        self.count = 0
        self.pending = 0
        self.lock = threading.Lock()


_END = object()
# How often the watcher of a limited stream (lowest_speed, timeout) looks at it.
_WATCH_INTERVAL = 0.25


class StreamStopped(Exception):
    """Raised inside the pipeline threads when another stage failed first."""


def stream_to_file(body: Any, writer: SparseWriter, hashers: Sequence[Any] = (), read_size: int = DEFAULT_READ_SIZE,
                   buffers: int = 16, on_progress: Optional[Callable[[int], Any]] = None,
                   progress_interval: float = 2.0, limit: Optional[Connection] = None) -> int:
    """Copy ``body`` into ``writer`` while ``hashers`` digest the same bytes, in one pass.

    Three stages overlap on separate threads: receiving (socket reads release the GIL), hashing (hashlib
    releases it for large buffers) and writing (the calling thread). Memory is ``buffers * read_size`` whatever
    the image size. ``on_progress(bytes_written)`` is called from the calling thread at most every
    ``progress_interval`` seconds. Returns the number of bytes copied; re-raises the first stage's error.

    ``limit`` (a ``_rate.Connection``, optional): the receiving thread reports each buffer to it (the ``max_rate``
    bucket waits there) when a cap or a minimum speed is set, and a watcher thread asks it four times a second
    whether to stop (``lowest_speed``, overall ``timeout``): its error then ends the stream. Without a limit the
    receive loop only tests ``paced is not None`` once a buffer (measured: no change in speed).
    """
    free = queue.Queue()
    for _index in range(buffers):
        free.put(_Batch(read_size))
    to_hash = queue.Queue()
    to_write = queue.Queue()
    errors = []
    stop = threading.Event()
    consumers = 2 if hashers else 1

    def release(batch):
        with batch.lock:
            batch.pending -= 1
            done = batch.pending == 0
        if done:
            free.put(batch)

    def receive():
        try:
            while not stop.is_set():
                try:
                    batch = free.get(timeout=0.5)
                except queue.Empty:
                    continue
                batch.count = body.readinto(batch.buf)
                if not batch.count:
                    break
                batch.pending = consumers
                if hashers:
                    to_hash.put(batch)
                to_write.put(batch)
                if paced is not None:
                    paced(batch.count, stop.wait)
        except BaseException as exc:  # pylint: disable=broad-except
            errors.append(exc)
            stop.set()
        finally:
            to_hash.put(_END)
            to_write.put(_END)

    def digest():
        try:
            while True:
                batch = to_hash.get()
                if batch is _END:
                    return
                view = memoryview(batch.buf)[:batch.count]
                for hasher in hashers:
                    hasher.update(view)
                view.release()
                release(batch)
        except BaseException as exc:  # pylint: disable=broad-except
            errors.append(exc)
            stop.set()

    def watch():
        while not stop.wait(_WATCH_INTERVAL):
            error = limit.check()
            if error is not None:
                errors.append(error)  # before the close: the receiver's "stopped" error comes second
                stop.set()
                _close_quietly(body)
                return

    paced = limit.received if limit is not None and limit.limits.paced else None
    threads = [threading.Thread(target=receive, name="dd-receive", daemon=True)]
    if hashers:
        threads.append(threading.Thread(target=digest, name="dd-hash", daemon=True))
    if limit is not None and limit.limits.watched:
        threads.append(threading.Thread(target=watch, name="dd-watch", daemon=True))
    for thread in threads:
        thread.start()
    copied = 0
    last_report = time.monotonic()
    try:
        while True:
            batch = to_write.get()
            if batch is _END:
                break
            writer.write(batch.buf, batch.count)
            copied += batch.count
            release(batch)
            if on_progress is not None and time.monotonic() - last_report >= progress_interval:
                last_report = time.monotonic()
                on_progress(copied)
    except BaseException:
        stop.set()
        _close_quietly(body)
        raise
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return copied


def read_bounded(body: Any, limit: int, too_large: Callable[[], BaseException]) -> bytes:
    """The whole of a small body (a checksum list, a metalink document) as bytes, for what must be held in memory.
    Raises ``too_large()`` (an exception to raise) as soon as more than ``limit`` bytes came, before the rest."""
    data = bytearray()
    buf = bytearray(64 * 1024)
    while True:
        count = body.readinto(buf)
        if not count:
            break
        data += buf[:count]
        if len(data) > limit:
            raise too_large()
    return bytes(data)


def _close_quietly(body):
    try:
        body.close()
    except Exception:  # pylint: disable=broad-except
        pass
