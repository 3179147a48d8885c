# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_nfs: the ``nfs://`` source.

The libnfs transport runs against a real nfs-ganesha server (tests/unit/lib/nfs.py): NFSv3 and NFSv4, qcow2 and
compressed images, missing files, wrong exports, permission denied, the server stopped mid-transfer, 80 MiB
streamed with the right SHA-256.

The kernel-mount transport CANNOT run on this machine: its kernel has no NFS client (no ``nfs`` in
/proc/filesystems, no modules). Its tests put fake ``mount``/``umount``/``mount.nfs`` scripts first on PATH. The
fakes record their argv, so the tests check the exact mount command (the directory, never the file; ro, vers,
timeo, retrans, soft/hard, nolock, port) and the unmount sequence (umount, umount -f, umount -l) on success, on
every failure and on a mount timeout. A successful fake mount is a real read-only bind mount of the local
directory the URL names, so the bytes are read through a real mount point and "busy" unmounts behave as they do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _nfs
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput, SourceError
from ansible_collections.directdownload.kvm.plugins.module_utils._nfs import (
    NfsOptions, NfsSource, classify_libnfs_error, classify_mount_error, parse_nfs_ls, parse_nfs_url, retry_scope)
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib import nfs as nfs_lib
from ansible_collections.directdownload.kvm.tests.unit.lib.nfs import GaneshaServer, ganesha_available
from ansible_collections.directdownload.kvm.tests.unit.lib.require import require, require_root, require_tool

# The shared ganesha server and a fresh directory in its export, per test.
nfs_server = nfs_lib.nfs_server
nfs_export = nfs_lib.nfs_export

MiB = 1024 * 1024
BLOCK = 64 * 1024


def read_all(body, block=BLOCK):
    """Stream a body the way the engine does (one reused bytearray); returns (bytes count, sha256 hex)."""
    digest = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    while True:
        count = body.readinto(buf)
        if not count:
            return total, digest.hexdigest()
        digest.update(view[:count])
        total += count


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def processes_running(text):
    """PIDs of live processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
                with open("/proc/%s/stat" % entry) as handle:
                    zombie = handle.read().rsplit(")", 1)[1].split()[0] == "Z"
            except (OSError, IndexError):
                continue
            if text in cmdline and not zombie:
                found.append(int(entry))
    return found


def qcow2_virtual_size(head):
    assert head[:4] == b"QFI\xfb"
    return struct.unpack(">Q", head[24:32])[0]


# --------------------------------------------------------------------------------------------------------------
# URL parsing and options (no server)
# --------------------------------------------------------------------------------------------------------------

def test_parse_url_parts():
    loc = parse_nfs_url("nfs://filer.example.com:2050/export/images/disk%20one.qcow2?version=4")
    assert (loc.host, loc.port, loc.version) == ("filer.example.com", 2050, 4)
    assert loc.path == "/export/images/disk one.qcow2"
    assert (loc.directory, loc.file_name) == ("/export/images", "disk one.qcow2")
    # CloudStack mounted the file itself (exit 32): we mount the directory that holds it.
    assert loc.mount_spec() == "filer.example.com:/export/images"
    # libnfs 4.0 takes no host:port, so the port goes to nfsport=.
    assert loc.libnfs_url(loc.path, 3) == "nfs://filer.example.com/export/images/disk one.qcow2?version=3&nfsport=2050"


def test_parse_url_ipv6_and_defaults():
    loc = parse_nfs_url("nfs://[fd00::5]/x.img")
    assert (loc.host, loc.port, loc.version, loc.directory) == ("fd00::5", None, None, "/")
    assert loc.mount_spec() == "[fd00::5]:/"
    assert loc.libnfs_url("/", 4) == "nfs://[fd00::5]/?version=4"


@pytest.mark.parametrize("url, words", [
    ("nfs://server/export/../etc/shadow", "'..'"),
    ("nfs://server/export/./x.img", "'.'"),
    ("nfs://server/export//x.img", "empty"),
    ("nfs://server/export/dir/", "must name a file"),
    ("nfs://server", "must name a file"),
    ("nfs:///export/x.img", "names no server"),
    ("nfs://user:pw@server/export/x.img", "no credentials"),
    ("nfs://server/export/x.img?version=2", "version=3 or version=4"),
    ("nfs://server/export/x.img?uid=0", "unknown parameter"),
    ("nfs://server/export/x.img#frag", "fragment"),
    ("nfs://server/export/x%3F.img", "'?'"),
    ("nfs://server:99999/export/x.img", "invalid NFS URL"),
    ("http://server/export/x.img", "not an NFS URL"),
])
def test_parse_url_refuses(url, words):
    with pytest.raises(InvalidInput) as info:
        parse_nfs_url(url)
    assert words in info.value.msg
    assert "pw" not in info.value.msg


def test_options_validation_and_sources():
    assert NfsOptions().timeo == 600  # read_timeout 60 s in deciseconds, the kernel's own TCP default
    assert NfsOptions(read_timeout=5).timeo == 50
    for bad in (dict(transport="fuse"), dict(version=2), dict(mount_mode="medium"), dict(read_timeout=0),
                dict(retrans=-1), dict(timeo=0)):
        with pytest.raises(InvalidInput):
            NfsOptions(**bad)

    class EngineOptions:  # the engine's SourceOptions: timeouts, no nfs_* attributes
        connect_timeout = 3
        read_timeout = 7

    opts = NfsOptions.from_any(EngineOptions(), transport="libnfs")
    assert (opts.transport, opts.connect_timeout, opts.read_timeout, opts.timeo) == ("libnfs", 3, 7, 70)
    base = NfsOptions(read_timeout=9)
    assert NfsOptions.from_any(base) is base
    forced = NfsOptions.from_any(base, transport="mount")
    assert (forced.transport, forced.read_timeout, base.transport) == ("mount", 9, "auto")
    with pytest.raises(InvalidInput):
        NfsSource("nfs://server/export/x.img", transport="nope")


def test_parse_nfs_ls():
    text = ("-rw-r--r--  1     0     0      5242880 disk.img\n"
            "drwxr-xr-x  2 65534 65534         4096 images\n"
            "lrwxrwxrwx  1     0     0           10 link.qcow2\n"
            "-rw-r--r--  1     0     0            3 name with  spaces.iso\n"
            "garbage line\n")
    assert parse_nfs_ls(text) == {
        "disk.img": ("-", 5242880), "images": ("d", 4096), "link.qcow2": ("l", 10), "name with  spaces.iso": ("-", 3)}


@pytest.mark.parametrize("text, reason, scope", [
    ("Failed to mount nfs share : mount_cb: RPC error: Mount failed with error MNT3ERR_ACCES(13) Permission denied(13)",
     "export_not_found", (False, True)),
    ("Failed to mount nfs share : mount_cb: NFS4: (path /wrong) failed with NFS4ERR_NOENT(-2)", "export_not_found", (False, True)),
    ('Failed to open file /nope.img: open call failed with "NFS: Lookup of /nope.img failed with NFS3ERR_NOENT(-2)"',
     "file_missing", (False, False)),
    ('Failed to open file /nope.img: open call failed with "NFS4: (path /) failed with NFS4ERR_NOENT(-2)"',
     "file_missing", (False, False)),
    ('Failed to open file /s.img: open call failed with "NFS: ACCESS denied. Required access r--. Allowed access ---"',
     "permission_denied", (False, True)),
    ("Failed to mount nfs share : mount_cb: RPC error. Program is not available on 127.0.0.1", "unreachable", (True, True)),
    ("Failed to mount nfs share : nfs_service failed", "unreachable", (True, True)),
    ("Failed to mount nfs share : nfs_mount_async failed. Failed to start connection. Invalid address:x.invalid. "
     "Can not resolv into IPv4/v6 structure.", "unreachable", (True, True)),
    ("Failed to read from file", "interrupted", (True, True)),
])
def test_classify_libnfs_messages(text, reason, scope):
    """Messages as libnfs-utils 4.0 prints them (seen against ganesha); the reason decides the retry scope."""
    assert classify_libnfs_error(text)[0] == reason and retry_scope(reason) == scope


@pytest.mark.parametrize("text, reason", [
    ("mount.nfs: access denied by server while mounting filer:/nope", "export_not_found"),
    ("mount.nfs: mounting filer:/nope failed, reason given by server: No such file or directory", "export_not_found"),
    ("mount.nfs: Connection refused", "unreachable"),
    ("mount.nfs: Connection timed out", "unreachable"),
    ("mount: /mnt/x: unknown filesystem type 'nfs'.", "no_transport"),
    ("mount.nfs: Protocol not supported", "version_unsupported"),
    ("mount: only root can use \"--options\" option", "permission_denied"),
    ("something else", "mount_failed"),
])
def test_classify_mount_messages(text, reason):
    assert classify_mount_error(text)[0] == reason


@pytest.mark.parametrize("reason, scope", [
    ("file_missing", (False, False)), ("not_a_file", (False, False)),
    ("export_not_found", (False, True)), ("permission_denied", (False, True)), ("no_transport", (False, True)),
    ("version_unsupported", (False, True)), ("no_range", (False, True)),
    ("unreachable", (True, True)), ("interrupted", (True, True)), ("timeout", (True, True)),
    ("mount_failed", (True, True)), ("nfs_error", (True, True)), ("a reason nobody named", (True, True)),
])
def test_the_reason_decides_the_retry_scope(reason, scope):
    """docs/nfs.md, "Errors": asking this host again is useless where only its export rules or client side stand
    in the way; a missing file is missing for every host."""
    assert retry_scope(reason) == scope
    error = _nfs._nfs_error("x", reason)  # pylint: disable=protected-access
    assert (error.retry_here, error.retry_elsewhere) == scope and error.details["reason"] == reason


def test_no_client_at_all_says_what_to_install(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(_nfs, "_SBIN_DIRS", (str(empty),))
    with pytest.raises(SourceError) as info:
        NfsSource("nfs://127.0.0.1/export/x.img").probe()
    assert info.value.details["reason"] == "no_transport"
    assert "nfs-common" in info.value.msg and "libnfs-utils" in info.value.msg
    with pytest.raises(SourceError) as info:
        NfsSource("nfs://127.0.0.1/export/x.img", transport="libnfs").open()
    assert "libnfs-utils" in info.value.msg


def test_auto_picks_libnfs_without_a_kernel_client(monkeypatch):
    monkeypatch.setattr(_nfs, "kernel_nfs_support", lambda: False)  # the one part of the host this test replaces
    require_tool("nfs-cat")
    assert _nfs.choose_transport("auto") == "libnfs"
    assert any("kernel has no NFS client" in p for p in _nfs.transport_problems("mount"))


# --------------------------------------------------------------------------------------------------------------
# libnfs transport against the real ganesha server
# --------------------------------------------------------------------------------------------------------------

VERSIONS = pytest.mark.parametrize("version", [3, 4, None], ids=["v3", "v4", "negotiated"])


@VERSIONS
def test_qcow2_probe_head_and_stream(nfs_export, tmp_path, version):
    disk = images.qcow2(tmp_path / "disk.qcow2", 96 * MiB, writes=[(0, MiB, 0xAB), (32 * MiB, 2 * MiB, 0x5C)])
    data = open(disk, "rb").read()
    nfs_export.write("disk.qcow2", data)
    source = NfsSource(nfs_export.url("disk.qcow2", version), transport="libnfs")

    probe = source.probe()
    assert probe["size"] == len(data) and probe["status"] is None and probe["accept_ranges"] is False
    assert probe["final_url"] == source.url and probe["transport"] == "libnfs"
    assert probe["nfs_version"] == (version or 4)
    assert qcow2_virtual_size(source.read_head(64)) == 96 * MiB

    body = source.open()
    try:
        assert (body.offset, body.size, body.content_type, body.accept_ranges) == (0, len(data), None, False)
        assert read_all(body) == (len(data), sha256(data))
        assert body.readinto(bytearray(BLOCK)) == 0
    finally:
        body.close()
    assert body._proc.returncode == 0


@pytest.mark.parametrize("version", [3, 4])
def test_compressed_image_streams_unchanged(nfs_export, tmp_path, version):
    """The source moves bytes; extraction is _install's job (by magic, after the checksum)."""
    disk = images.qcow2(tmp_path / "disk.qcow2", 16 * MiB, writes=[(0, MiB, 0x11)])
    packed = images.compress(disk, tmp_path / "disk.qcow2.xz", "xz")
    data = open(packed, "rb").read()
    nfs_export.write("disk.qcow2.xz", data)
    source = NfsSource(nfs_export.url("disk.qcow2.xz", version), transport="libnfs")
    assert source.read_head(6) == b"\xfd7zXZ\x00"
    body = source.open()
    try:
        assert read_all(body, block=1000) == (len(data), sha256(data))  # odd block size: refills across reads
    finally:
        body.close()


def test_large_file_streams_with_correct_sha256(nfs_export):
    data = os.urandom(80 * MiB + 12345)
    nfs_export.write("big.img", data)
    body = NfsSource(nfs_export.url("big.img", 4), transport="libnfs").open()
    try:
        assert read_all(body) == (len(data), sha256(data))
    finally:
        body.close()


def test_explicit_port_and_empty_file(nfs_export):
    nfs_export.write("empty.img", b"")
    for version in (3, 4):
        source = NfsSource(nfs_export.url("empty.img", version, port=2049), transport="libnfs")
        assert source.probe()["size"] == 0
        body = source.open()
        try:
            assert read_all(body) == (0, sha256(b""))
        finally:
            body.close()


@VERSIONS
def test_missing_file_is_not_retryable(nfs_export, version):
    source = NfsSource(nfs_export.url("nope.qcow2", version), transport="libnfs")
    for call in (source.probe, source.open, lambda: source.read_head(64)):
        with pytest.raises(SourceError) as info:
            call()
        assert info.value.details["reason"] == "file_missing"
        assert (info.value.retry_here, info.value.retry_elsewhere) == (False, False)
        assert "file not found" in info.value.msg


@VERSIONS
def test_wrong_export(nfs_server, version):
    source = NfsSource("nfs://127.0.0.1/no/such/export/disk.qcow2" + ("?version=%d" % version if version else ""),
                       transport="libnfs")
    with pytest.raises(SourceError) as info:
        source.open()
    assert info.value.details["reason"] == "export_not_found"
    # A server's export rules may leave out this host only: another host may succeed, this one will not.
    assert (info.value.retry_here, info.value.retry_elsewhere) == (False, True)
    assert ("MNT3ERR_ACCES" if version == 3 else "NFS4ERR_NOENT") in info.value.msg


@pytest.mark.parametrize("version", [3, 4])
def test_directory_url_and_permission_denied(nfs_server, nfs_export, version):
    (nfs_export.path / "sub.qcow2").mkdir()
    with pytest.raises(SourceError) as info:
        NfsSource(nfs_export.url("sub.qcow2", version), transport="libnfs").probe()
    assert info.value.details["reason"] == "not_a_file"

    squashed = nfs_server.make_dir(squashed=True)
    try:
        secret = squashed.write("secret.qcow2", b"x" * 1000)
        os.chmod(secret, 0o600)  # the squashed export maps root to nobody
        source = NfsSource(squashed.url("secret.qcow2", version), transport="libnfs")
        assert source.probe()["size"] == 1000  # listing the directory is allowed
        body = source.open()
        try:
            with pytest.raises(SourceError) as info:
                body.readinto(bytearray(BLOCK))
        finally:
            body.close()
        assert info.value.details["reason"] == "permission_denied"
        assert "permission denied" in info.value.msg
    finally:
        shutil.rmtree(squashed.path, ignore_errors=True)


def test_unreachable_server(nfs_server):
    """Port 9 (discard) has no NFS server on loopback."""
    source = NfsSource("nfs://127.0.0.1:9/export/disk.qcow2?version=4", transport="libnfs")
    with pytest.raises(SourceError) as info:
        source.probe()
    assert info.value.details["reason"] == "unreachable" and (info.value.retry_here, info.value.retry_elsewhere) == (True, True)


def test_resume_restarts_and_ranges_are_refused(nfs_export):
    data = os.urandom(3 * MiB)
    nfs_export.write("disk.img", data)
    source = NfsSource(nfs_export.url("disk.img", 3), transport="libnfs")
    assert source.supports_ranges is False
    # nfs-cat cannot seek: the body starts at 0 and the engine restarts the file (as for an HTTP 200).
    body = source.open(offset=MiB, validators={"etag": None, "last_modified": None})
    try:
        assert body.offset == 0
        assert read_all(body) == (len(data), sha256(data))
    finally:
        body.close()
    with pytest.raises(SourceError) as info:
        source.open(offset=MiB, end=2 * MiB)
    assert info.value.details["reason"] == "no_range"
    body = source.open(offset=0, end=len(data))  # the whole file as one "range" is fine
    body.close()


def test_short_stream_is_an_error(nfs_export):
    """The listing says one size, the stream brings fewer bytes (file cut on the server): SourceError."""
    data = os.urandom(MiB)
    nfs_export.write("disk.img", data)
    source = NfsSource(nfs_export.url("disk.img", 4), transport="libnfs")
    source.probe()
    body = source._client().cat(len(data) + 4096)  # as if the listing had been taken before a truncation
    try:
        with pytest.raises(SourceError) as info:
            read_all(body)
    finally:
        body.close()
    assert info.value.details["reason"] == "short_read"
    assert "received %d bytes, the server lists %d" % (len(data), len(data) + 4096) in info.value.msg


def test_close_mid_stream_kills_and_reaps_nfs_cat(nfs_export):
    nfs_export.write("big.img", os.urandom(64 * MiB))
    body = NfsSource(nfs_export.url("big.img", 3), transport="libnfs").open()
    assert body.readinto(bytearray(BLOCK)) == BLOCK
    proc = body._proc
    body.close()
    body.close()  # idempotent
    assert proc.returncode is not None  # reaped: no zombie, no stray reader
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)


def test_close_from_another_thread_stops_a_blocked_read(nfs_export):
    """The engine's writer fails and the main thread closes the body while the receiver waits for bytes."""
    nfs_export.write("big.img", os.urandom(64 * MiB))
    body = NfsSource(nfs_export.url("big.img", 4), NfsOptions(transport="libnfs", read_timeout=60)).open()
    os.kill(body._proc.pid, signal.SIGSTOP)  # nfs-cat sends nothing more: the reader blocks once the pipe is empty
    errors = []

    def receive():
        buf = bytearray(BLOCK)
        try:
            while body.readinto(buf):
                pass
        except SourceError as exc:
            errors.append(exc)

    receiver = threading.Thread(target=receive)
    receiver.start()
    time.sleep(0.5)  # let it drain the pipe and block (if not yet blocked, it sees the close at its next read)
    body.close()
    receiver.join(30)
    assert not receiver.is_alive()
    assert [e.details["reason"] for e in errors] == ["closed"]
    assert body._proc.returncode is not None and body._proc.stdout.closed


@pytest.mark.parametrize("version", [3, 4])
def test_server_stopped_mid_transfer(tmp_path, version):
    """A private ganesha (own network namespace) stopped by PID while we stream: SourceError, nfs-cat reaped.

    NFSv4: nfs-cat fails ("Failed to read from file", exit 10). NFSv3: libnfs keeps reconnecting and sends
    nothing; the read timeout ends it.
    """
    require(ganesha_available())
    export = tmp_path / "export"
    export.mkdir()
    data = os.urandom(64 * MiB)
    (export / "disk.img").write_bytes(data)
    with GaneshaServer(export, versions=(3, 4), isolated=True) as server:
        with server.client_namespace():
            source = NfsSource(server.url("disk.img", version), NfsOptions(transport="libnfs", read_timeout=3))
            body = source.open()
        received = 0
        try:
            buf = bytearray(BLOCK)
            received += body.readinto(buf)
            server.stop_ganesha()
            with pytest.raises(SourceError) as info:
                while True:
                    count = body.readinto(buf)
                    assert count, "the stream ended normally although the server was stopped"
                    received += count
        finally:
            body.close()
        assert received < len(data)
        assert info.value.details["reason"] in ("interrupted", "timeout")
        assert (info.value.retry_here, info.value.retry_elsewhere) == (True, True)
        assert body._proc.returncode is not None


# --------------------------------------------------------------------------------------------------------------
# Kernel-mount transport with fake mount/umount (this machine has no kernel NFS client: see the module docstring)
# --------------------------------------------------------------------------------------------------------------

FAKE_TOOL = textwrap.dedent("""\
    #!{python}
    # Fake {name} for test_nfs.py: records argv, then behaves as {control} says.
    import json, os, subprocess, sys, time
    tool = os.path.basename(sys.argv[0])
    with open({log!r}, "a") as log:
        log.write(json.dumps([tool] + sys.argv[1:]) + "\\n")
    try:
        with open({control!r}) as handle:
            control = json.load(handle).get(tool, {{}})
    except FileNotFoundError:
        control = {{}}
    if control.get("sleep"):
        time.sleep(control["sleep"])
    if tool == "umount":
        counter = {control!r} + ".umount-calls"
        calls = int(open(counter).read()) if os.path.exists(counter) else 0
        open(counter, "w").write(str(calls + 1))
        if calls < control.get("fail_times", 0):
            sys.stderr.write("umount: %s: target is busy.\\n" % sys.argv[-1])
            sys.exit(32)
        flags = [arg for arg in sys.argv[1:-1] if arg in ("-f", "-l")]
        sys.exit(subprocess.call(["/usr/bin/umount"] + flags + [sys.argv[-1]]))
    if tool == "mount":
        if control.get("rc"):
            sys.stderr.write(control.get("stderr", "mount.nfs: failed\\n"))
            sys.exit(control["rc"])
        spec, mountpoint = sys.argv[-2], sys.argv[-1]
        with open({log!r} + ".modes", "a") as modes:
            modes.write("%o\\n" % (os.stat(mountpoint).st_mode & 0o7777))
        directory = spec.split(":", 1)[1]
        # Stand-in for the NFS mount: a real read-only bind mount of the directory the server would export.
        sys.exit(subprocess.call(["/usr/bin/mount", "--bind", "-o", "ro", directory, mountpoint]))
    sys.exit(0)
""")


class FakeMountTools:
    """Fake mount, umount and mount.nfs first on PATH; ``calls()`` returns the recorded argv lists."""

    def __init__(self, tmp_path, monkeypatch):
        self.bin = tmp_path / "fake-bin"
        self.bin.mkdir()
        self.log = tmp_path / "fake-calls.jsonl"
        self.control = tmp_path / "fake-control.json"
        self.mount_dir = tmp_path / "mounts"
        self.mount_dir.mkdir()
        for name in ("mount", "umount", "mount.nfs"):
            path = self.bin / name
            path.write_text(FAKE_TOOL.format(python=sys.executable, name=name, log=str(self.log),
                                             control=str(self.control)))
            path.chmod(0o755)
        monkeypatch.setenv("PATH", "%s:%s" % (self.bin, os.environ.get("PATH", "")))
        monkeypatch.setattr(_nfs, "_SBIN_DIRS", (str(self.bin),))

    def set(self, **control):
        self.control.write_text(json.dumps(control))

    def calls(self, tool=None):
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [entry for entry in entries if tool is None or entry[0] == tool]

    def modes(self):
        """Permissions of each mount point when mount ran (octal strings)."""
        path = self.log.with_name(self.log.name + ".modes")
        return path.read_text().split() if path.exists() else []

    def leftovers(self):
        """Mount points still present (directories) or still mounted under our mount directory."""
        mounted = [line.split()[4] for line in open("/proc/self/mountinfo") if str(self.mount_dir) in line.split()[4]]
        return sorted(os.listdir(self.mount_dir)), mounted

    def cleanup(self):
        for _dir, mounted in [self.leftovers()]:
            for mountpoint in mounted:
                subprocess.run(["/usr/bin/umount", "-l", mountpoint], check=False)


@pytest.fixture
def fake_mount(tmp_path, monkeypatch):
    require_root("bind mounts (the stand-in for NFS mounts)")
    tools = FakeMountTools(tmp_path, monkeypatch)
    try:
        yield tools
    finally:
        tools.cleanup()


@pytest.fixture
def served(tmp_path):
    """The directory the (fake) server exports, with one image; URL path = local path."""
    export = tmp_path / "served" / "images"
    export.mkdir(parents=True)
    data = os.urandom(2 * MiB + 77)
    (export / "disk.img").write_bytes(data)
    return export, data


def mount_source(url, tools, **options):
    options.setdefault("transport", "mount")
    return NfsSource(url, NfsOptions(mount_dir=str(tools.mount_dir), **options))


def test_mount_command_and_unmount_on_success(fake_mount, served):
    export, data = served
    source = mount_source("nfs://127.0.0.1%s/disk.img?version=3" % export, fake_mount, read_timeout=30, retrans=4)
    assert source.supports_ranges is True
    body = source.open()
    try:
        mount_call = fake_mount.calls("mount")[0]
        mountpoint = mount_call[-1]
        assert mount_call[1:-1] == [
            "-t", "nfs", "-o", "ro,nosuid,nodev,noexec,proto=tcp,retry=0,vers=3,soft,timeo=300,retrans=4,nolock",
            "127.0.0.1:%s" % export]  # the directory, not the file
        assert os.path.dirname(mountpoint) == str(fake_mount.mount_dir)
        assert fake_mount.modes() == ["700"]  # a private mkdtemp mount point
        assert (body.offset, body.size, body.accept_ranges, body.content_type) == (0, len(data), True, None)
        assert body.validators["etag"].startswith("nfs-") and body.validators["last_modified"].endswith("GMT")
        assert read_all(body) == (len(data), sha256(data))
    finally:
        body.close()
    assert fake_mount.calls("umount") == [["umount", mountpoint]]
    assert fake_mount.leftovers() == ([], [])


def test_mount_options_v4_port_hard_negotiated(fake_mount, served):
    export, _data = served
    v4 = _nfs.KernelMount(
        parse_nfs_url("nfs://[fd00::1]:2050%s/disk.img?version=4" % export), NfsOptions(mount_mode="hard", timeo=15))
    assert v4.mount_options() == "ro,nosuid,nodev,noexec,proto=tcp,retry=0,vers=4,port=2050,hard,timeo=15,retrans=2"
    assert v4.location.mount_spec() == "[fd00::1]:%s" % export
    negotiated = _nfs.KernelMount(parse_nfs_url("nfs://h/e/x.img"), NfsOptions())
    assert negotiated.mount_options() == "ro,nosuid,nodev,noexec,proto=tcp,retry=0,soft,timeo=600,retrans=2,nolock"
    assert _nfs.KernelMount(parse_nfs_url("nfs://h/e/x.img"), NfsOptions(version=4)).version == 4
    assert _nfs.KernelMount(parse_nfs_url("nfs://h/e/x.img?version=3"), NfsOptions(version=4)).version == 3


def test_probe_head_resume_and_ranges_through_mount(fake_mount, tmp_path, served):
    export, _data = served
    disk = images.qcow2(export / "disk.qcow2", 48 * MiB, writes=[(0, MiB, 0x22)])
    data = open(disk, "rb").read()
    source = mount_source("nfs://127.0.0.1%s/disk.qcow2" % export, fake_mount)
    probe = source.probe()
    assert (probe["size"], probe["accept_ranges"], probe["transport"]) == (len(data), True, "mount")
    assert qcow2_virtual_size(source.read_head(64)) == 48 * MiB

    # Resume with the validators of the earlier part: the rest, from the offset.
    body = source.open(offset=1000, validators=probe["validators"])
    try:
        assert body.offset == 1000
        assert read_all(body) == (len(data) - 1000, sha256(data[1000:]))
    finally:
        body.close()
    # An exact range for a segmented (metalink) download.
    body = source.open(offset=4096, end=3 * 4096)
    try:
        assert read_all(body, block=5000) == (2 * 4096, sha256(data[4096:3 * 4096]))
    finally:
        body.close()
    # The file changed since the part was written (other validators): served whole, like If-Range.
    body = source.open(offset=1000, validators={"etag": "nfs-1-2-3", "last_modified": None})
    try:
        assert body.offset == 0
    finally:
        body.close()
    assert len(fake_mount.calls("mount")) == len(fake_mount.calls("umount")) == 5
    assert fake_mount.leftovers() == ([], [])


@pytest.mark.parametrize("stderr, reason", [
    ("mount.nfs: access denied by server while mounting 127.0.0.1:/nope\n", "export_not_found"),
    ("mount.nfs: Connection refused\n", "unreachable"),
])
def test_mount_failure_leaves_nothing(fake_mount, served, stderr, reason):
    export, _data = served
    fake_mount.set(mount={"rc": 32, "stderr": stderr})
    source = mount_source("nfs://127.0.0.1%s/disk.img" % export, fake_mount)
    with pytest.raises(SourceError) as info:
        source.open()
    assert info.value.details["reason"] == reason and info.value.details["rc"] == 32
    assert "mount exit 32" in info.value.msg
    assert fake_mount.calls("umount") == []  # nothing was mounted
    assert fake_mount.leftovers() == ([], [])


def test_missing_file_after_mount_unmounts(fake_mount, served):
    export, _data = served
    source = mount_source("nfs://127.0.0.1%s/nope.img" % export, fake_mount)
    for call in (source.open, source.probe):
        with pytest.raises(SourceError) as info:
            call()
        assert info.value.details["reason"] == "file_missing" and (info.value.retry_here, info.value.retry_elsewhere) == (False, False)
    assert len(fake_mount.calls("umount")) == 2
    assert fake_mount.leftovers() == ([], [])


def test_missing_mount_dir_is_a_clear_error(tmp_path):
    source = NfsSource("nfs://127.0.0.1/e/x.img", NfsOptions(transport="mount", mount_dir=str(tmp_path / "nope")))
    with pytest.raises(SourceError) as info:
        source.probe()
    assert "cannot make a private mount point" in info.value.msg


def test_mount_timeout_kills_helper_and_cleans_up(fake_mount, served, monkeypatch):
    export, _data = served
    fake_mount.set(mount={"sleep": 60})
    monkeypatch.setattr(_nfs.KernelMount, "_mount_timeout", lambda self: 1)
    source = mount_source("nfs://127.0.0.1%s/disk.img" % export, fake_mount)
    with pytest.raises(SourceError) as info:
        source.open()
    assert info.value.details["reason"] == "timeout"
    # The kernel may finish a mount after we gave up on the helper: we try to unmount anyway.
    assert len(fake_mount.calls("umount")) >= 1
    assert fake_mount.leftovers() == ([], [])
    assert processes_running(str(fake_mount.bin / "mount")) == []  # the helper's whole process group was killed


def test_busy_unmount_escalates_to_force_then_lazy(fake_mount, served):
    export, data = served
    fake_mount.set(umount={"fail_times": 2})
    body = mount_source("nfs://127.0.0.1%s/disk.img" % export, fake_mount).open()
    mountpoint = fake_mount.calls("mount")[0][-1]
    assert read_all(body) == (len(data), sha256(data))
    body.close()
    assert fake_mount.calls("umount") == [["umount", mountpoint], ["umount", "-f", mountpoint],
                                          ["umount", "-l", mountpoint]]
    assert fake_mount.leftovers() == ([], [])


def test_unmount_that_never_succeeds_is_reported(fake_mount, served):
    export, _data = served
    fake_mount.set(umount={"fail_times": 3})
    source = mount_source("nfs://127.0.0.1%s/disk.img" % export, fake_mount)
    with pytest.raises(SourceError) as info:
        source.probe()
    assert info.value.details["reason"] == "unmount_failed"
    assert "could not unmount" in info.value.msg and "target is busy" in info.value.msg
    assert len(fake_mount.calls("umount")) == 3
    # Still mounted: the cleanup fixture unmounts it for real.
    assert len(fake_mount.leftovers()[1]) == 1


def test_engine_stopping_early_still_unmounts(fake_mount, served):
    """The engine stops on an error of its own (disk full, checksum) and closes the body mid-file: unmounted."""
    export, _data = served
    body = mount_source("nfs://127.0.0.1%s/disk.img" % export, fake_mount).open()
    assert body.readinto(bytearray(BLOCK)) == BLOCK
    body.close()
    body.close()  # idempotent
    assert len(fake_mount.calls("umount")) == 1
    assert fake_mount.leftovers() == ([], [])


def test_auto_picks_mount_when_root_kernel_and_tools(fake_mount, monkeypatch):
    """Faked kernel support (this machine has none): auto takes the kernel mount when everything is there."""
    monkeypatch.setattr(_nfs, "kernel_nfs_support", lambda: True)
    assert _nfs.transport_problems("mount") == []
    assert _nfs.choose_transport("auto") == "mount"
    monkeypatch.setattr(_nfs.os, "geteuid", lambda: 1000)
    assert _nfs.choose_transport("auto") == "libnfs"
