# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""File-system helpers with one policy each: temporary files, atomic writes, unlinks, fsyncs, opening our own
files in a pool that others may write to.

Pools can be shared (an NFS export several hosts mount) and the modules run as root, so every name we create or
open in a pool is treated as attacker-reachable:

* a temporary file is created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` under a random name (``mkstemp`` semantics): a
  symlink or file planted at a predictable name is never followed, truncated or written through;
* our own files (locks, sidecars, parts) are opened with ``O_NOFOLLOW|O_NONBLOCK`` and must be regular files: a
  FIFO or a device at one of those names is refused instead of blocking the task forever, and a file opened for
  writing must have no other name (a hard link planted there would make us write its other name's file);
* ``unlink_if_present`` swallows only "it is not there" (ENOENT); every other error is real and raised;
* ``fsync_directory`` ignores only EINVAL (file systems that cannot fsync a directory say so with it);
* ``write_atomic`` says what it promises: ``durable=True`` fsyncs the file and the directory (records), ``False``
  only guarantees that a reader sees the old or the new content (progress sidecars: hints that are verified again);
  the mode and the group are set on the temporary file, so the name never shows the content with others.
"""

from __future__ import annotations

import binascii
import errno
import fcntl
import json
import os
import stat
from typing import Any, Optional

# Temporary files are named ``<final name>.<8 random hex digits>.tmp``: this many characters longer than the name
# they replace (the long-name check in _download counts them).
TEMP_RANDOM_HEX = 8
TEMP_SUFFIX = ".tmp"
TEMP_NAME_EXTRA = 1 + TEMP_RANDOM_HEX + len(TEMP_SUFFIX)
DEFAULT_NAME_MAX = 255

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class NotRegularFile(OSError):
    """One of our own names in a pool is a FIFO, a device, a socket, a directory, a symlink, or (opened for
    writing) a hard link."""

    def __init__(self, path, kind):
        super().__init__(errno.EINVAL, "%s is a %s, not a regular file" % (path, kind), path)
        self.path = path
        self.kind = kind


_KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "FIFO"),
          (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words: ``file``, ``directory``, ``symlink``, ``FIFO``, ``socket``,
    ``character device``, ``block device``."""
    for is_kind, kind in _KINDS:
        if is_kind(mode):
            return kind
    return "special file"


def kind_at(path: str) -> Optional[str]:
    """The :func:`file_kind` of what ``path`` names itself (``lstat``: a symlink is not followed), or None when
    nothing is there. Never opens anything, so a FIFO cannot block. A regular file with more than one name is
    ``hard link``: one of our own files never has another name, and writing it would write the other file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        return "hard link"
    return file_kind(st.st_mode)


def open_regular(path: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """``os.open`` for one of our own files: never follows a symlink at ``path`` (ELOOP), never blocks on a FIFO
    (``O_NONBLOCK`` for the open; cleared again, regular files ignore it anyway), and refuses anything that is not
    a regular file with :class:`NotRegularFile`, for writing also a file with another name (a hard link planted
    at our name). ``O_TRUNC`` is applied only after those checks. Returns the descriptor."""
    truncate = flags & os.O_TRUNC
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(path, "symlink") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO without reader (O_WRONLY), a directory
            raise NotRegularFile(path, kind_at(path) or "special file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, file_kind(st.st_mode))
        if flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink > 1:
            raise NotRegularFile(path, "hard link")
        if truncate:
            os.ftruncate(fd, 0)
        if _O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_temp(directory: str, name: str, mode: int = 0o600) -> tuple[int, str]:
    """Create a new, empty temporary file for ``<directory>/<name>``: ``<name>.<random>.tmp``, opened
    ``O_RDWR|O_CREAT|O_EXCL|O_NOFOLLOW`` (nothing already there, a symlink included, is ever opened). Returns
    ``(fd, path)``; the caller renames or unlinks it."""
    for _attempt in range(100):
        random = binascii.hexlify(os.urandom(TEMP_RANDOM_HEX // 2)).decode("ascii")
        path = os.path.join(directory, "%s.%s%s" % (name, random, TEMP_SUFFIX))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, mode)
        except FileExistsError:
            continue
        return fd, path
    raise FileExistsError(errno.EEXIST, "no free temporary name for %s" % name, os.path.join(directory, name))


def unlink_if_present(path: str) -> bool:
    """Remove ``path`` (the entry itself: a symlink is removed, not its target). Returns True when something was
    removed. Only ENOENT is swallowed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def fsync_directory(path: str) -> None:
    """Make the entries of directory ``path`` durable (after a rename or an unlink). EINVAL (a file system that
    cannot fsync a directory) is ignored; everything else is raised."""
    fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def fsync_path(path: str) -> None:
    """fsync the regular file at ``path`` (opened as :func:`open_regular` does)."""
    fd = open_regular(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, durable: bool, mode: int = 0o600, gid: Optional[int] = None) -> None:
    """Replace ``path`` with ``data`` (bytes): a :func:`create_temp` file in the same directory, then a rename
    over ``path`` (which replaces a symlink there, never writes through it). The mode (exactly, whatever the
    umask) and the group ``gid`` (when given) are set on the temporary file, so the name never shows the new
    content with another mode or group.

    ``durable=True``: the file is fsynced before the rename and the directory after it (survives a power cut).
    ``durable=False``: a reader sees the old or the new content, never half of one, and a killed process leaves
    one or the other (the page cache keeps it); a power cut may lose the update. The temporary file is removed on
    any failure."""
    directory = os.path.dirname(path) or "."
    fd, tmp = create_temp(directory, os.path.basename(path), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if gid is not None:
                os.fchown(handle.fileno(), -1, gid)
            os.fchmod(handle.fileno(), mode)  # exactly, whatever the umask; after the chown, which may clear bits
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        unlink_if_present(tmp)
        raise
    if durable:
        fsync_directory(directory)


def write_json_atomic(path: str, data: Any, durable: bool = False, mode: int = 0o600,
                      indent: Optional[int] = 1, gid: Optional[int] = None) -> None:
    """:func:`write_atomic` of ``data`` as JSON (sorted keys)."""
    text = json.dumps(data, sort_keys=True, indent=indent) + ("\n" if indent else "")
    write_atomic(path, text.encode("utf-8"), durable=durable, mode=mode, gid=gid)


def read_json(path: str, limit: int = 16 * 1024 * 1024) -> Optional[dict[str, Any]]:
    """The JSON object at ``path`` (one of our sidecars), or None when it is missing, unreadable, not an object,
    or not a regular file (a FIFO there is never opened for reading in a way that could block)."""
    try:
        fd = open_regular(path)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError:
        return None
    if len(raw) > limit:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
