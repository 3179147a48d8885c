# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The ``nfs://`` source: ``nfs://server[:port]/export/path/to/image.qcow2[?version=3|4]``.

Two transports behind the Source contract of ``docs/architecture.md``:

``mount``
    The kernel client. The file's DIRECTORY is mounted read-only (CloudStack mounts the file itself, which fails
    with exit 32: CloudStack issue #13917) with explicit options on a private ``mkdtemp`` mount point, the file is
    read with plain ``readinto`` calls, and the directory is always unmounted again: ``umount``, then
    ``umount -f``, then ``umount -l`` as the last resort. Every exit code is checked. Byte ranges and resume work.
``libnfs``
    The userspace client from libnfs-utils, for hosts without a kernel NFS client or without mount privileges.
    ``nfs-ls`` lists the directory (size, existence), ``nfs-cat`` streams the file through a pipe. ``nfs-cat``
    cannot seek, so a resume restarts from byte 0 (``body.offset == 0``) and exact byte ranges are refused.
    The stream is checked at the end: exit code 0 and exactly the listed size, else ``SourceError``.

``auto`` picks ``mount`` when we are root, ``mount.nfs`` is installed and the kernel has NFS support, else
``libnfs``. When the URL names no version, ``mount`` lets the kernel negotiate and ``libnfs`` tries NFSv4, then
NFSv3.
"""

from __future__ import annotations

import copy
import email.utils
import errno
import fcntl
import os
import platform
import re
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from typing import Any, Mapping, Optional, Union
from urllib.parse import unquote

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput, SourceError
from ansible_collections.directdownload.kvm.plugins.module_utils._source import Source
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import redact_url, split_url

NFS_TRANSPORTS = ("auto", "mount", "libnfs")
NFS_VERSIONS = (3, 4)
NFS_MOUNT_MODES = ("soft", "hard")

# Packages that provide each transport, for error messages and the agent role.
CLIENT_PACKAGES = {
    "mount": "nfs-common (Debian/Ubuntu) or nfs-utils (RHEL)",
    "libnfs": "libnfs-utils (Debian/Ubuntu; EPEL on RHEL)",
}

# Where mount helpers live when PATH does not list the sbin directories.
_SBIN_DIRS = ("/usr/sbin", "/sbin")
# 1 MiB pipe between nfs-cat and us (the default 64 KiB means one wake-up per 64 KiB). F_SETPIPE_SZ is 1031 on
# Linux; fcntl only names it from Python 3.10 on.
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PIPE_SIZE = 1024 * 1024
_STDERR_LIMIT = 4000

# ``nfs-ls`` prints ``-rw-r--r--  1     0     0      5242880 name`` (type, permissions, nlink, uid, gid, size, name).
_LS_LINE = re.compile(r"^(?P<type>[-ldcbps]?)[-rwxsStT]{9}\s+-?\d+\s+-?\d+\s+-?\d+\s+(?P<size>\d+) (?P<name>.*)$")


class NfsLocation:
    """A parsed, validated ``nfs://`` URL."""

    __slots__ = ("url", "host", "port", "path", "directory", "file_name", "version")

    def __init__(self, url, host, port, path, version):
        self.url = url
        self.host = host
        self.port = port
        self.path = path
        self.directory = os.path.dirname(path) or "/"
        self.file_name = os.path.basename(path)
        self.version = version

    @property
    def host_for_url(self) -> str:
        return "[%s]" % self.host if ":" in self.host else self.host

    def mount_spec(self) -> str:
        """``server:/directory`` for mount(8): the directory that holds the file, never the file."""
        return "%s:%s" % (self.host_for_url, self.directory)

    def libnfs_url(self, path: str, version: int) -> str:
        """A URL for the libnfs-utils tools. libnfs 4.0 takes no ``:port`` in the host part: ``nfsport=`` it is."""
        query = ["version=%d" % version]
        if self.port:
            query.append("nfsport=%d" % self.port)
        return "nfs://%s%s?%s" % (self.host_for_url, path, "&".join(query))


def parse_nfs_url(url: str) -> NfsLocation:
    """Parse and check ``nfs://server[:port]/export/path/file[?version=3|4]``; raise InvalidInput otherwise."""
    shown = redact_url(url)
    parts = split_url(url, "invalid NFS URL %s: %s", check_port=True)
    port = parts.port
    if parts.scheme.lower() != "nfs":
        raise InvalidInput("not an NFS URL: %s" % shown)
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("NFS URLs carry no credentials (AUTH_SYS uses the host's identity): %s" % shown)
    if not parts.hostname:
        raise InvalidInput("the NFS URL %s names no server: use nfs://server/export/path/file" % shown)
    if parts.fragment:
        raise InvalidInput("the NFS URL %s has a fragment (#...): remove it" % shown)
    path = unquote(parts.path)
    if not path.startswith("/") or path.endswith("/"):
        raise InvalidInput("the NFS URL %s must name a file: nfs://server/export/path/file" % shown)
    segments = path.split("/")[1:]
    if any(segment in ("", ".", "..") for segment in segments):
        raise InvalidInput("the NFS URL %s has an empty, '.' or '..' path segment" % shown)
    if any(ord(char) < 32 or char in "?#\x7f" for char in path):
        raise InvalidInput("the NFS URL %s has a control character, '?' or '#' in its path" % shown)
    version = None
    for item in parts.query.split("&") if parts.query else ():
        key, _sep, value = item.partition("=")
        if key != "version":
            raise InvalidInput("the NFS URL %s has an unknown parameter %r: only version=3 or version=4" % (shown, key))
        if value not in ("3", "4"):
            raise InvalidInput("the NFS URL %s asks for NFS version %r: use version=3 or version=4" % (shown, value))
        version = int(value)
    host = parts.hostname
    if ":" in host and not parts.netloc.startswith("["):
        raise InvalidInput("the NFS URL %s has an IPv6 address without brackets" % shown)
    return NfsLocation(url, host, port, path, version)


class NfsOptions:
    """NFS settings. ``NfsSource`` also accepts the engine's generic options object: see :meth:`from_any`.

    ``transport``: auto, mount or libnfs. ``version``: 3, 4 or None (the URL's ``?version=`` wins; None lets the
    client negotiate). ``mount_mode``: soft (default: a dead server gives an I/O error instead of a process stuck
    for ever; safe for a read-only source) or hard. ``timeo`` (deciseconds, as in nfs(5); default
    ``read_timeout * 10``) and ``retrans`` go to the kernel mount. ``connect_timeout`` bounds the mount and
    listing steps, ``read_timeout`` any wait for the next bytes. ``mount_dir``: parent of the private mount
    points (default: the system temporary directory).
    """

    def __init__(self, transport="auto", version=None, mount_mode="soft", timeo=None, retrans=2, connect_timeout=10,
                 read_timeout=60, mount_dir=None):
        _checked_transport(transport)
        if version is not None:
            try:
                version = int(version)
            except (TypeError, ValueError):
                version = -1
            if version not in NFS_VERSIONS:
                raise InvalidInput("the NFS version must be 3 or 4")
        if mount_mode not in NFS_MOUNT_MODES:
            raise InvalidInput("the NFS mount mode must be soft or hard, got %r" % (mount_mode,))
        for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise InvalidInput("%s must be a positive number of seconds" % name)
        if timeo is not None and (not isinstance(timeo, int) or timeo < 1):
            raise InvalidInput("the NFS timeo must be a positive number of deciseconds")
        if not isinstance(retrans, int) or retrans < 0:
            raise InvalidInput("the NFS retrans must be 0 or more")
        self.transport = transport
        self.version = version
        self.mount_mode = mount_mode
        self.timeo = timeo if timeo is not None else max(1, int(read_timeout * 10))
        self.retrans = retrans
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.mount_dir = mount_dir

    @classmethod
    def from_any(cls, options: Any, transport: Optional[str] = None) -> NfsOptions:
        """An ``NfsOptions`` from None, an ``NfsOptions``, or the engine's ``SourceOptions`` (only its
        ``connect_timeout`` and ``read_timeout`` are used; the mount settings keep their defaults);
        ``transport``, when given, wins over the options' own."""
        if isinstance(options, cls):
            if transport is None or transport == options.transport:
                return options
            chosen = copy.copy(options)
            chosen.transport = _checked_transport(transport)
            return chosen

        def pick(name, default):
            value = getattr(options, name, None)
            return default if value is None else value

        return cls(transport=transport or "auto", connect_timeout=pick("connect_timeout", 10),
                   read_timeout=pick("read_timeout", 60))


def _checked_transport(transport):
    if transport not in NFS_TRANSPORTS:
        raise InvalidInput("nfs_transport must be one of %s, got %r" % (", ".join(NFS_TRANSPORTS), transport))
    return transport


# Where another attempt may succeed, by reason: (retry_here, retry_elsewhere); docs/nfs.md, "Errors".
# A missing file is missing for every host. An export or permission rule that leaves out this host, or a client side
# this host lacks, gives the same answer here again but may not on another host. A server that went away, a stall,
# a failure nobody recognised: another attempt anywhere may succeed.
NOWHERE, ELSEWHERE, ANYWHERE = (False, False), (False, True), (True, True)
RETRY_SCOPES = {
    "file_missing": NOWHERE,
    "not_a_file": NOWHERE,
    "export_not_found": ELSEWHERE,
    "permission_denied": ELSEWHERE,
    "no_transport": ELSEWHERE,
    "version_unsupported": ELSEWHERE,
    "no_range": ELSEWHERE,  # another mirror, over HTTP, may serve ranges
}


def retry_scope(reason: str) -> tuple[bool, bool]:
    """``(retry_here, retry_elsewhere)`` of an NFS failure with this ``reason`` (``RETRY_SCOPES``, else both)."""
    return RETRY_SCOPES.get(reason, ANYWHERE)


def _nfs_error(msg, reason, **details):
    """A SourceError with a ``reason`` detail, and the retry scope of that reason."""
    return SourceError(msg, reason=reason, **details).retry_scope(*retry_scope(reason))


def _which(name, sbin=False):
    found = shutil.which(name)
    if found or not sbin:
        return found
    return shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))


def kernel_nfs_support() -> bool:
    """True when the running kernel has an NFS client: loaded (``/proc/filesystems``) or loadable (a module)."""
    try:
        with open("/proc/filesystems") as handle:
            if any(line.split()[-1] in ("nfs", "nfs4") for line in handle if line.strip()):
                return True
    except OSError:
        pass
    release = platform.release()
    for base in ("/lib/modules", "/usr/lib/modules"):
        if os.path.isdir(os.path.join(base, release, "kernel", "fs", "nfs")):
            return True
        try:
            with open(os.path.join(base, release, "modules.builtin")) as handle:
                if any("/fs/nfs/nfs.ko" in line for line in handle):
                    return True
        except OSError:
            pass
    return False


def transport_problems(transport: str) -> list[str]:
    """Why ``transport`` cannot run on this host: a list of reasons, empty when it can."""
    problems = []
    if transport == "mount":
        if os.geteuid() != 0:
            problems.append("mounting needs root")
        if not _which("mount.nfs", sbin=True):
            problems.append("mount.nfs is not installed (package %s)" % CLIENT_PACKAGES["mount"])
        if not kernel_nfs_support():
            problems.append("the kernel has no NFS client (no nfs in /proc/filesystems, no nfs module)")
    else:
        missing = [tool for tool in ("nfs-cat", "nfs-ls") if not _which(tool)]
        if missing:
            problems.append("%s not installed (package %s)" % (" and ".join(missing), CLIENT_PACKAGES["libnfs"]))
    return problems


def choose_transport(requested: str = "auto") -> str:
    """``mount`` or ``libnfs`` for ``requested``. Raises SourceError when no transport can run here."""
    if requested == "libnfs":
        problems = transport_problems("libnfs")
        if problems:
            raise _nfs_error("the libnfs NFS transport is not available: %s" % "; ".join(problems), "no_transport")
        return "libnfs"
    if requested == "mount":
        # Forced: only the tools are required; the mount itself reports a missing kernel client.
        missing = [tool for tool in ("mount", "umount") if not _which(tool, sbin=True)]
        if missing:
            raise _nfs_error("the mount NFS transport is not available: %s not found" % ", ".join(missing), "no_transport")
        return "mount"
    mount_problems = transport_problems("mount")
    if not mount_problems:
        return "mount"
    libnfs_problems = transport_problems("libnfs")
    if not libnfs_problems:
        return "libnfs"
    raise _nfs_error(
        "no NFS client on this host: kernel mount unusable (%s); libnfs unusable (%s). Install %s, or %s"
        % ("; ".join(mount_problems), "; ".join(libnfs_problems), CLIENT_PACKAGES["mount"], CLIENT_PACKAGES["libnfs"]),
        "no_transport",
    )


def _run(argv, timeout, env=None):
    """Run a helper in its own process group; on timeout kill the whole group. Returns (rc, stdout, stderr, timed_out)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        timed_out = True
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), timed_out


def _kill_group(proc):
    """SIGKILL ``proc`` and whatever it started in its own process group (we created the group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _last_line(text):
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# ---------------------------------------------------------------------------------------------------------------
# Error classification


# A rule: (needles, also, reason, explanation). It matches when the text holds one of ``needles`` and
# every one of ``also``. A needle matches as written, and an all-lower-case needle also matches the text in lower
# case. The first rule that matches wins; the last one of a table has no needles and always matches.
_LIBNFS_RULES = (
    # Also what a server answers to a client that its export rules leave out: another host may pass.
    (("MNT3ERR_ACCES", "MNT3ERR_NOENT", "MNT3ERR_PERM"), (),
     "export_not_found", "export not found, or this host may not mount it"),
    (("NFS4ERR_NOENT",), ("Failed to mount nfs share",),
     "export_not_found", "export not found (no such path in the server's NFSv4 namespace)"),
    (("NFS3ERR_NOENT", "NFS4ERR_NOENT"), (), "file_missing", "file not found on the server"),
    (("ACCES", "NFS3ERR_PERM", "NFS4ERR_PERM", "Permission denied"), (),
     "permission_denied", "permission denied by the server"),
    (("NFS3ERR_ISDIR", "NFS4ERR_ISDIR"), (), "not_a_file", "the URL names a directory, not a file"),
    (("Can not resolv", "resolve"), (), "unreachable", "cannot resolve the server name"),
    (("Program is not available", "nfs_service failed", "Failed to start connection", "connect"), (),
     "unreachable", "server unreachable (no NFS service answered)"),
    (("Failed to read from file",), (),
     "interrupted", "the transfer broke off (server stopped or connection lost)"),
    (None, (), "nfs_error", "NFS error"),
)

_MOUNT_RULES = (
    (("access denied by server",), (),
     "export_not_found", "access denied by the server: export not found, or this host may not mount it"),
    (("no such file or directory",), ("reason given by server",),
     "export_not_found", "export directory not found on the server"),
    (("permission denied", "operation not permitted", "only root"), (),
     "permission_denied", "not permitted to mount"),
    (("protocol not supported", "requested nfs version"), (),
     "version_unsupported", "the server does not offer the requested NFS version"),
    (("unknown filesystem type", "no such device"), (), "no_transport", "the kernel has no NFS client"),
    (("connection refused", "timed out", "no route to host", "resolve", "network is unreachable",
      "program not registered"), (), "unreachable", "server unreachable"),
    (None, (), "mount_failed", "mount failed"),
)


def _classify(text, rules):
    low = text.lower()

    def holds(needle):
        return needle in text or (needle.islower() and needle in low)

    for needles, also, reason, explanation in rules:
        if (needles is None or any(holds(n) for n in needles)) and all(holds(n) for n in also):
            return reason, explanation
    raise AssertionError("a rule table ends with a rule that always matches")


def classify_libnfs_error(text: str) -> tuple[str, str]:
    """(reason, explanation) for the stderr/stdout of nfs-ls or nfs-cat (``retry_scope(reason)`` says where to
    retry)."""
    return _classify(text or "", _LIBNFS_RULES)


def classify_mount_error(text: str) -> tuple[str, str]:
    """(reason, explanation) for mount(8)/mount.nfs output."""
    return _classify(text or "", _MOUNT_RULES)


# ---------------------------------------------------------------------------------------------------------------
# Kernel mount transport


class KernelMount:
    """One private read-only mount of the image's directory. ``mount()``, then always ``unmount()``."""

    def __init__(self, location, options, version=None):
        self.location = location
        self.options = options
        self.version = version if version is not None else location.version or options.version
        self.mountpoint = None
        self.mounted = False

    def mount_options(self) -> str:
        opts = ["ro", "nosuid", "nodev", "noexec", "proto=tcp", "retry=0"]
        if self.version is not None:
            opts.append("vers=%d" % self.version)
        if self.location.port:
            opts.append("port=%d" % self.location.port)
        opts += [self.options.mount_mode, "timeo=%d" % self.options.timeo, "retrans=%d" % self.options.retrans]
        if self.version != 4:
            # NFSv3 locking needs rpc.statd; a read-only copy needs no locks (NFSv4 ignores the option).
            opts.append("nolock")
        return ",".join(opts)

    def mount_argv(self) -> list[str]:
        return [_which("mount", sbin=True) or "mount", "-t", "nfs", "-o", self.mount_options(),
                self.location.mount_spec(), self.mountpoint]

    @property
    def file_path(self) -> str:
        return os.path.join(self.mountpoint, self.location.file_name)

    def _mount_timeout(self):
        return max(30, 3 * self.options.connect_timeout)

    def mount(self) -> str:
        shown = redact_url(self.location.url)
        try:
            self.mountpoint = tempfile.mkdtemp(prefix="directdownload-nfs-", dir=self.options.mount_dir)
        except OSError as exc:
            raise _nfs_error("cannot make a private mount point in %s: %s"
                             % (self.options.mount_dir or tempfile.gettempdir(), exc.strerror), "no_transport") from exc
        try:
            rc, out, err, timed_out = _run(self.mount_argv(), self._mount_timeout())
        except OSError as exc:
            self._remove_mountpoint()
            raise _nfs_error("cannot run mount for %s: %s" % (shown, exc), "no_transport") from exc
        if timed_out:
            # The kernel may finish the mount after we gave up on the helper: unmount whatever is there.
            self.mounted = True
            try:
                self.unmount()
            except SourceError as exc:
                raise _nfs_error("mounting %s timed out after %ss, and %s" % (shown, self._mount_timeout(), exc.msg),
                                 "timeout") from exc
            raise _nfs_error("mounting %s timed out after %ss" % (shown, self._mount_timeout()), "timeout")
        if rc != 0:
            self._remove_mountpoint()
            reason, explanation = classify_mount_error(out + "\n" + err)
            raise _nfs_error("cannot mount %s for %s: %s (mount exit %d: %s)"
                             % (self.location.mount_spec(), shown, explanation, rc, _last_line(err or out)),
                             reason, rc=rc)
        self.mounted = True
        return self.mountpoint

    def unmount(self) -> None:
        """Unmount (plain, then forced, then lazy) and remove the mount point. Raises SourceError if it stays mounted."""
        if self.mountpoint is None:
            return
        if self.mounted:
            umount = _which("umount", sbin=True) or "umount"
            failures = []
            for extra in ([], ["-f"], ["-l"]):
                try:
                    rc, out, err, timed_out = _run([umount] + extra + [self.mountpoint], self._mount_timeout())
                except OSError as exc:
                    rc, out, err, timed_out = -1, "", str(exc), False
                if rc == 0 or "not mounted" in err or "not mounted" in out:
                    self.mounted = False
                    break
                outcome = "timed out" if timed_out else "exit %d %s" % (rc, _last_line(err))
                failures.append("umount %s: %s" % (" ".join(extra) or "(plain)", outcome))
            if self.mounted:
                raise _nfs_error("could not unmount %s (%s)" % (self.mountpoint, "; ".join(failures)), "unmount_failed")
        self._remove_mountpoint()

    def _remove_mountpoint(self):
        path, self.mountpoint = self.mountpoint, None
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _nfs_error("could not remove the mount point %s: %s" % (path, exc.strerror), "unmount_failed") from exc


def _validators_from_stat(st):
    """Our own If-Range: a change of inode, size or mtime means the file on the server is not the one we had."""
    return {
        "etag": "nfs-%x-%x-%x" % (st.st_ino, st.st_size, st.st_mtime_ns),
        "last_modified": email.utils.formatdate(st.st_mtime, usegmt=True),
    }


def _file_error(location, exc, doing):
    shown = redact_url(location.url)
    if isinstance(exc, FileNotFoundError):
        return _nfs_error("%s: file not found on the server" % shown, "file_missing")
    if isinstance(exc, IsADirectoryError):
        return _nfs_error("%s: the URL names a directory, not a file" % shown, "not_a_file")
    if isinstance(exc, PermissionError):
        return _nfs_error("%s: permission denied by the server" % shown, "permission_denied")
    if exc.errno == errno.ESTALE:
        return _nfs_error("%s: the file was replaced on the server while %s" % (shown, doing), "interrupted")
    if exc.errno in (errno.EIO, errno.ETIMEDOUT):
        return _nfs_error("%s: I/O error while %s (server stopped or unreachable: %s)" % (shown, doing, exc.strerror),
                          "interrupted")
    return _nfs_error("%s: error while %s: %s" % (shown, doing, exc.strerror or exc), "nfs_error")


class _GuardedBody:
    """``close()`` may come from another thread while ``readinto`` runs (the engine's writer failed). Closing a
    file descriptor under a running read could hand its number to a new file, so a close during a read only
    interrupts it (``_interrupt``); the reader then releases the resources (``_release``) on its way out."""

    content_type = None

    def __init__(self, location, size, validators, offset):
        self.url = location.url
        self._location = location
        self.size = size
        self.validators = validators
        self.offset = offset
        self._guard = threading.Lock()
        self._reading = False
        self._closed = False

    def readinto(self, buf):
        with self._guard:
            if self._closed:
                raise self._closed_error()
            self._reading = True
        try:
            return self._readinto(buf)
        finally:
            with self._guard:
                self._reading = False
                release = self._closed
            if release:
                self._release()

    def close(self):
        """Idempotent; the resources are released now, or by a reader still running when it returns."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            reading = self._reading
        self._interrupt()
        if not reading:
            self._release()

    def _closed_error(self):
        return _nfs_error("%s: the transfer was closed" % redact_url(self.url), "closed")

    def _readinto(self, buf):
        raise NotImplementedError

    def _interrupt(self):
        """Make a running read return soon."""

    def _release(self):
        raise NotImplementedError


class MountedFileBody(_GuardedBody):
    """A body read from the mounted file. Closing it closes the file and unmounts."""

    accept_ranges = True

    def __init__(self, location, mount, handle, st, offset, end):
        super().__init__(location, st.st_size, _validators_from_stat(st), offset)
        self._mount = mount
        self._handle = handle
        self._position = offset
        self._end = st.st_size if end is None else end

    def _readinto(self, buf):
        view = memoryview(buf)
        want = min(len(buf), self._end - self._position)
        got = 0
        try:
            while got < want:
                count = self._handle.readinto(view[got:want])
                if not count:
                    break
                got += count
        except OSError as exc:
            raise _file_error(self._location, exc, "reading") from exc
        self._position += got
        if got < want:
            raise _nfs_error("%s: the file ended at byte %d, %d expected (it shrank on the server)"
                             % (redact_url(self.url), self._position, self._end), "short_read",
                             received=self._position)
        return got

    def _release(self):
        try:
            self._handle.close()
        finally:
            self._mount.unmount()


# ---------------------------------------------------------------------------------------------------------------
# libnfs transport


def parse_nfs_ls(text: str) -> dict[str, tuple[str, int]]:
    """``{name: (type, size)}`` from ``nfs-ls`` output (type ``-`` file, ``d`` directory, ``l`` link, ...)."""
    entries = {}
    for line in text.splitlines():
        match = _LS_LINE.match(line)
        if match:
            entries[match.group("name")] = (match.group("type") or "?", int(match.group("size")))
    return entries


class PipeBody(_GuardedBody):
    """The stdout of ``nfs-cat``. Stalls longer than ``read_timeout`` and short streams raise SourceError."""

    accept_ranges = False

    def __init__(self, location, proc, stderr_file, size, read_timeout, first_byte_timeout):
        super().__init__(location, size, {"etag": None, "last_modified": None}, 0)
        self.received = 0
        self._proc = proc
        self._stderr = stderr_file
        self._fd = proc.stdout.fileno()
        self._read_timeout = read_timeout
        self._next_timeout = first_byte_timeout
        self._eof = False
        os.set_blocking(self._fd, False)
        try:
            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # capped by /proc/sys/fs/pipe-max-size: the default size works, only slower
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)

    def _readinto(self, buf):
        if self._eof:
            return 0
        view = memoryview(buf)
        want = len(buf)
        got = 0
        while got < want:
            try:
                count = os.readv(self._fd, [view[got:]])
            except BlockingIOError:
                if not self._poller.poll(self._next_timeout * 1000):
                    self._fail_stalled()
                continue
            except OSError as exc:
                raise _nfs_error("%s: reading from nfs-cat failed: %s" % (redact_url(self.url), exc.strerror),
                                 "interrupted") from exc
            if not count:
                self._eof = True
                self.received += got
                self._check_end()
                return got
            self._next_timeout = self._read_timeout
            got += count
        self.received += got
        return got

    def _stderr_text(self):
        self._stderr.seek(0)
        return self._stderr.read(_STDERR_LIMIT).decode("utf-8", "replace")

    def _fail_stalled(self):
        self._stop()
        raise _nfs_error("%s: no data for %ss after %d bytes (server stopped or unreachable)"
                         % (redact_url(self.url), self._next_timeout, self.received), "timeout", received=self.received)

    def _check_end(self):
        if self._closed:  # close() killed nfs-cat under us
            raise self._closed_error()
        try:
            rc = self._proc.wait(timeout=self._read_timeout)
        except subprocess.TimeoutExpired:
            self._stop()
            raise _nfs_error("%s: nfs-cat closed its output but did not exit" % redact_url(self.url), "timeout")
        shown = redact_url(self.url)
        if rc != 0:
            text = self._stderr_text()
            reason, explanation = classify_libnfs_error(text)
            if reason == "nfs_error":
                reason, explanation = "interrupted", "the transfer broke off"
            raise _nfs_error("%s: %s after %d bytes (nfs-cat exit %d: %s)"
                             % (shown, explanation, self.received, rc, _last_line(text)), reason,
                             received=self.received)
        if self.size is not None and self.received != self.size:
            raise _nfs_error("%s: received %d bytes, the server lists %d (short stream or file changed)"
                             % (shown, self.received, self.size), "short_read", received=self.received)

    def _stop(self):
        if self._proc.poll() is None:
            _kill_group(self._proc)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _interrupt(self):
        """Kill nfs-cat if it still runs and reap it (no zombie); a blocked read then sees the end of the pipe."""
        self._stop()

    def _release(self):
        self._stop()
        self._proc.stdout.close()
        self._stderr.close()


class _LibnfsClient:
    """Drives nfs-ls and nfs-cat for one location, negotiating the version once."""

    def __init__(self, location, options):
        self.location = location
        self.options = options
        fixed = location.version or options.version
        self.versions = (fixed,) if fixed else (4, 3)
        self.version = fixed

    def _listing_timeout(self):
        return self.options.connect_timeout + self.options.read_timeout

    def stat(self):
        """(type, size) of the file, from a listing of its directory. Raises SourceError."""
        shown = redact_url(self.location.url)
        failures = []
        for version in ([self.version] if self.version else self.versions):
            argv = [_which("nfs-ls"), self.location.libnfs_url(self.location.directory, version)]
            rc, out, err, timed_out = _run(argv, self._listing_timeout())
            if timed_out:
                failures.append((version, "unreachable", "no answer within %ss" % self._listing_timeout(), ""))
                continue
            if rc != 0:
                text = err + "\n" + out
                reason, explanation = classify_libnfs_error(text)
                if "Failed to opendir" in out and reason == "file_missing":
                    # The export mounted but the directory inside it is missing: the file cannot be there.
                    explanation = "directory not found on the server"
                failures.append((version, reason, explanation, _last_line(text)))
                continue
            self.version = version
            entry = parse_nfs_ls(out).get(self.location.file_name)
            if entry is None:
                raise _nfs_error("%s: file not found on the server (NFSv%d)" % (shown, version), "file_missing")
            kind, size = entry
            if kind == "d":
                raise _nfs_error("%s: the URL names a directory, not a file" % shown, "not_a_file")
            # A symbolic link lists its own length: the target's size is unknown until nfs-cat follows it.
            return kind, (size if kind == "-" else None)
        raise self._failure(failures)

    def _failure(self, failures):
        """The most telling of the per-version failures (a missing file beats an unreachable server)."""
        rank = ("file_missing", "not_a_file", "permission_denied", "export_not_found", "interrupted", "nfs_error",
                "unreachable")
        failures.sort(key=lambda item: rank.index(item[1]) if item[1] in rank else len(rank))
        version, reason, explanation, _detail = failures[0]
        tried = "; ".join("NFSv%d: %s" % (item[0], item[3] or item[2]) for item in failures)
        return _nfs_error("%s: %s (%s)" % (redact_url(self.location.url), explanation, tried), reason,
                          nfs_version=version)

    def cat(self, size, version=None):
        """Start nfs-cat; returns a PipeBody."""
        version = version or self.version or self.versions[0]
        argv = [_which("nfs-cat"), self.location.libnfs_url(self.location.path, version)]
        stderr_file = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file,
                                    start_new_session=True)
        except OSError as exc:
            stderr_file.close()
            raise _nfs_error("cannot run nfs-cat: %s" % exc, "no_transport") from exc
        return PipeBody(self.location, proc, stderr_file, size, self.options.read_timeout,
                        self.options.connect_timeout + self.options.read_timeout)


# ---------------------------------------------------------------------------------------------------------------
# The source


class NfsSource(Source):
    """Source for ``nfs://`` URLs (contract: docs/architecture.md, "Source").

    ``NfsSource(url, options=None, transport=None)``: ``options`` is an :class:`NfsOptions`, None, or the engine's
    options object (``SourceOptions``: ``connect_timeout``, ``read_timeout`` and any ``nfs_transport``,
    ``nfs_version``, ``nfs_mount_mode``, ``nfs_timeo``, ``nfs_retrans``, ``nfs_mount_dir`` are read from it when
    present); ``transport`` (auto, mount, libnfs) overrides the options' transport. The URL is checked here
    (InvalidInput); the transport is chosen on first use (SourceError when this host has no NFS client).
    """

    scheme = "nfs"

    def __init__(self, url, options=None, transport=None):
        self.url = url
        self.location = parse_nfs_url(url)
        self.options = NfsOptions.from_any(options, transport=transport)
        self._transport = None
        self._libnfs = None

    @property
    def transport(self) -> str:
        if self._transport is None:
            self._transport = choose_transport(self.options.transport)
        return self._transport

    @property
    def supports_ranges(self) -> bool:
        """True when ``open(offset, end=...)`` serves exact ranges (the kernel mount); libnfs restarts from 0."""
        return self.transport == "mount"

    def _client(self):
        if self._libnfs is None:
            self._libnfs = _LibnfsClient(self.location, self.options)
        return self._libnfs

    # -- open ---------------------------------------------------------------------------------------------------
    def open(self, offset: int = 0, validators: Optional[Mapping[str, Optional[str]]] = None,
             end: Optional[int] = None) -> Union[MountedFileBody, PipeBody]:
        if offset < 0 or (end is not None and end <= offset):
            raise InvalidInput("invalid byte range %r-%r" % (offset, end))
        if self.transport == "mount":
            return self._open_mounted(offset, validators, end)
        return self._open_libnfs(offset, end)

    def _open_mounted(self, offset, validators, end):
        mount = KernelMount(self.location, self.options)
        mount.mount()
        handle = None
        try:
            try:
                handle = open(mount.file_path, "rb", buffering=0)
                st = os.fstat(handle.fileno())
            except OSError as exc:
                raise _file_error(self.location, exc, "opening") from exc
            if not _stat_is_file(st):
                raise _nfs_error("%s: the URL names a directory, not a file" % redact_url(self.url), "not_a_file")
            if end is not None and end > st.st_size:
                raise _nfs_error("%s: range end %d beyond the file size %d" % (redact_url(self.url), end, st.st_size),
                                 "range_not_satisfiable", False)
            current = _validators_from_stat(st)
            if offset and validators and validators.get("etag") and validators.get("etag") != current["etag"]:
                if end is not None:
                    raise _nfs_error("%s: the file changed on the server since the earlier part" % redact_url(self.url),
                                     "changed")
                offset = 0  # like If-Range: a changed file is served whole
            if offset > st.st_size:
                offset = 0
            if offset:
                handle.seek(offset)
            return MountedFileBody(self.location, mount, handle, st, offset, end)
        except BaseException:
            if handle is not None:
                handle.close()
            mount.unmount()
            raise

    def _open_libnfs(self, offset, end):
        client = self._client()
        _kind, size = client.stat()
        if end is not None and (offset or size is None or end != size):
            raise _nfs_error("%s: the libnfs transport cannot read byte ranges (nfs-cat cannot seek); use the mount "
                             "transport for segmented downloads" % redact_url(self.url), "no_range")
        # offset > 0: nfs-cat starts at byte 0, so the body says offset 0 and the engine restarts the file.
        return client.cat(size)

    # -- probe / head -------------------------------------------------------------------------------------------
    def probe(self) -> dict[str, Any]:
        """``status`` is None (NFS has no status codes); ``size`` from stat/listing, no image bytes read."""
        if self.transport == "mount":
            mount = KernelMount(self.location, self.options)
            mount.mount()
            try:
                try:
                    st = os.stat(mount.file_path)
                except OSError as exc:
                    raise _file_error(self.location, exc, "probing") from exc
            finally:
                mount.unmount()
            if not _stat_is_file(st):
                raise _nfs_error("%s: the URL names a directory, not a file" % redact_url(self.url), "not_a_file")
            size, validators, version = st.st_size, _validators_from_stat(st), mount.version
        else:
            client = self._client()
            _kind, size = client.stat()
            validators, version = {"etag": None, "last_modified": None}, client.version
        return {
            "status": None,
            "size": size,
            "content_type": None,
            "final_url": self.url,
            "validators": validators,
            "accept_ranges": self.transport == "mount",
            "transport": self.transport,
            "nfs_version": version,
        }

    def read_head(self, n: int) -> bytes:
        """The first ``n`` bytes (fewer for a smaller file), e.g. a qcow2 header for its virtual size."""
        if self.transport == "mount":
            body = self.open(0)
        else:
            client = self._client()
            _kind, size = client.stat()
            body = client.cat(size)
        try:
            buf = bytearray(n)
            count = body.readinto(buf)  # the whole buffer unless the file is shorter
            return bytes(buf[:count])
        finally:
            body.close()  # kills nfs-cat when it has more to send


def _stat_is_file(st):
    return stat.S_ISREG(st.st_mode)
