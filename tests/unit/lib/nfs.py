# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A real NFS server for tests: nfs-ganesha with the VFS backend on loopback (its configuration: docs/nfs.md, "Tests").

Two ways to use it:

* The machine-wide shared server (fixtures ``nfs_server`` and ``nfs_export``): ganesha binds the fixed ports 2049
  (NFS) and 20048 (MOUNT) on 127.0.0.1, so every pytest worker, and every session on the machine, shares one
  server. A lock file and one "user" file per process decide who starts it (the first) and who stops it (the
  last). It exports ``<root>/export`` (no root squash) and ``<root>/squashed`` (all squash, for "permission
  denied"); each test gets its own fresh sub-directory::

      def test_x(nfs_export):
          nfs_export.write("disk.img", data)
          url = nfs_export.url("disk.img", version=3)   # nfs://127.0.0.1/<root>/export/t-.../disk.img?version=3

* A private server, ``GaneshaServer(export_dir, versions=(3, 4), isolated=True)``, in its own network and mount
  namespaces (its own loopback, its own rpcbind): a test may stop it mid-transfer without disturbing anyone.
  The client must run in that namespace: ``with server.client_namespace(): ...`` moves the calling thread there,
  and every process it starts (nfs-cat, nfs-ls, ansible-playbook) inherits it.

Processes are started detached (re-parented to init, so never left as zombies) and stopped by PID after
checking ``/proc/<pid>/cmdline`` is still theirs. rpcbind (needed by NFSv3 only) is started only when none is
running, and only the one we started is stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ansible_collections.directdownload.kvm.tests.unit.lib.procs import cmdline, pid_alive, stop_pid
from ansible_collections.directdownload.kvm.tests.unit.lib.require import require

GANESHA = shutil.which("ganesha.nfsd") or "/usr/bin/ganesha.nfsd"
RPCBIND = shutil.which("rpcbind") or shutil.which("rpcbind", path="/usr/sbin:/sbin") or "/usr/sbin/rpcbind"
NFS_LS = shutil.which("nfs-ls") or "/usr/bin/nfs-ls"
HOST = "127.0.0.1"
NFS_PORT = 2049
MOUNT_PORT = 20048
CLONE_NEWNET = 0x40000000
SHARED_ROOT = Path(os.environ.get("DIRECTDOWNLOAD_TEST_NFS_DIR", "/tmp/directdownload-test-nfs"))
START_TIMEOUT = 30


def ganesha_available():
    """None when a server can run here, else the reason (for ``require.require``: skip here, fail under CI=true)."""
    if not os.path.exists(GANESHA):
        return "nfs-ganesha is not installed"
    if not _plugins_dir():
        return "the nfs-ganesha VFS backend (nfs-ganesha-vfs) is not installed"
    if not os.path.exists(NFS_LS):
        return "libnfs-utils (nfs-ls) is not installed"
    if os.geteuid() != 0:
        return "nfs-ganesha needs root"
    return None


def _plugins_dir():
    for candidate in glob.glob("/usr/lib/*/ganesha") + glob.glob("/usr/lib64/ganesha") + glob.glob("/usr/lib/ganesha"):
        if os.path.exists(os.path.join(candidate, "libfsalvfs.so")):
            return candidate
    return None


def _spawn_detached(argv, log_path, env=None):
    """Start ``argv`` in its own session, re-parented to init (which reaps it); return its PID."""
    shell = 'setsid "$@" >"$DD_LOG" 2>&1 </dev/null & echo $!'
    run_env = dict(env or os.environ, DD_LOG=str(log_path))
    out = subprocess.run(["sh", "-c", shell, "sh"] + [str(a) for a in argv], env=run_env, capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip())


def _port_open(host, port):
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


class GaneshaServer:
    """One nfs-ganesha process exporting ``export_dir`` (v3 and/or v4) on 127.0.0.1:2049.

    The NFSv4 pseudo path equals the real path, so one URL works for both versions:
    ``nfs://127.0.0.1<export_dir>/<file>?version=3|4``. ``squashed_dir``, when given, is a second export where
    every user (root too) is mapped to nobody. Use as a context manager, or ``start()`` / ``close()``.
    """

    def __init__(self, export_dir, versions=(3, 4), workdir=None, isolated=False, squashed_dir=None):
        self.export_dir = Path(export_dir).resolve()
        self.squashed_dir = Path(squashed_dir).resolve() if squashed_dir else None
        self.versions = tuple(sorted(versions))
        if not self.versions or any(v not in (3, 4) for v in self.versions):
            raise ValueError("versions must be a non-empty subset of (3, 4)")
        self.workdir = Path(workdir) if workdir else self.export_dir.parent / (".ganesha-" + uuid.uuid4().hex[:8])
        self.isolated = isolated
        self.ganesha_pid = None
        self.rpcbind_pid = None  # only when we started it
        self._netns_fd = None

    # -- configuration ------------------------------------------------------------------------------------------
    def config_text(self):
        protocols = ", ".join(str(v) for v in self.versions)
        core = [
            "    NFS_Port = %d;" % NFS_PORT,
            "    MNT_Port = %d;" % MOUNT_PORT,
            "    Enable_NLM = false;",
            "    Enable_RQUOTA = false;",
            "    Protocols = %s;" % protocols,
            "    Plugins_Dir = %s;" % _plugins_dir(),
        ]
        if not self.isolated:
            # In a private namespace only lo exists and getaddrinfo(AI_ADDRCONFIG) refuses even 127.0.0.1:
            # binding every address of that namespace is binding its loopback.
            core.insert(0, "    Bind_addr = %s;" % HOST)
        if 3 not in self.versions:
            core.append("    Enable_UDP = false;")  # NFSv4 alone runs without rpcbind
        text = "NFS_CORE_PARAM {\n%s\n}\n" % "\n".join(core)
        text += "NFSv4 {\n    Graceless = true;\n    RecoveryBackend = fs;\n    RecoveryRoot = %s;\n}\n" % (
            self.workdir / "recovery")
        text += self._export_block(1, self.export_dir, "Squash = No_Root_Squash;")
        if self.squashed_dir:
            text += self._export_block(2, self.squashed_dir,
                                       "Squash = All_Squash;\n    Anonymous_Uid = 65534;\n    Anonymous_Gid = 65534;")
        text += "LOG {\n    Default_Log_Level = EVENT;\n}\n"
        return text

    def _export_block(self, export_id, path, squash):
        return (
            "EXPORT {\n"
            "    Export_Id = %d;\n"
            "    Path = %s;\n"
            "    Pseudo = %s;\n"
            "    Access_Type = RO;\n"
            "    %s\n"
            "    Protocols = %s;\n"
            "    Transports = TCP;\n"
            "    SecType = sys;\n"
            # Tests write files behind the server's back: never serve cached attributes or directory contents.
            "    Attr_Expiration_Time = 0;\n"
            "    FSAL { Name = VFS; }\n"
            "}\n" % (export_id, path, path, squash, ", ".join(str(v) for v in self.versions))
        )

    # -- URLs ----------------------------------------------------------------------------------------------------
    def url(self, relative, version=None, port=None, base=None):
        base = Path(base) if base else self.export_dir
        netloc = HOST if port is None else "%s:%d" % (HOST, port)
        url = "nfs://%s%s/%s" % (netloc, base, str(relative).lstrip("/"))
        return url + ("?version=%d" % version if version else "")

    # -- life cycle ----------------------------------------------------------------------------------------------
    def start(self):
        reason = ganesha_available()
        if reason:
            raise RuntimeError(reason)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        if self.squashed_dir:
            self.squashed_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "recovery").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "ganesha.conf"
        config.write_text(self.config_text())
        ganesha_argv = [GANESHA, "-F", "-f", config, "-L", self.workdir / "ganesha.log", "-p",
                        self.workdir / "ganesha.pid", "-N", "NIV_EVENT"]
        try:
            if self.isolated:
                self._start_isolated(ganesha_argv)
            else:
                if 3 in self.versions and not _port_open(HOST, 111):
                    self.rpcbind_pid = _spawn_detached([RPCBIND, "-f"], self.workdir / "rpcbind.log")
                    self._wait(lambda: _port_open(HOST, 111), "rpcbind to listen on port 111")
                if _port_open(HOST, NFS_PORT):
                    raise RuntimeError("port %d on %s is taken by another NFS server" % (NFS_PORT, HOST))
                self.ganesha_pid = _spawn_detached(ganesha_argv, self.workdir / "ganesha.stdout")
            self._wait(self._answers, "nfs-ganesha to answer nfs-ls")
        except BaseException:
            self.close()
            raise
        return self

    def _start_isolated(self, ganesha_argv):
        rpcbind_pid_file = self.workdir / "rpcbind.pid"
        lines = [
            "set -e",
            "mount -t tmpfs tmpfs /run",  # a private /run: our own rpcbind socket and lock, not the host's
            "ip link set lo up",
        ]
        if 3 in self.versions:
            lines += [
                '%s -f >"%s" 2>&1 </dev/null &' % (RPCBIND, self.workdir / "rpcbind.log"),
                'echo $! >"%s"' % rpcbind_pid_file,
                "i=0; while [ ! -S /run/rpcbind.sock ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done",
            ]
        lines.append("exec " + " ".join('"%s"' % a for a in ganesha_argv))
        script = self.workdir / "isolated.sh"
        script.write_text("\n".join(lines) + "\n")
        self.ganesha_pid = _spawn_detached(
            ["unshare", "--net", "--mount", "--propagation", "private", "sh", script], self.workdir / "ganesha.stdout")
        self._wait(lambda: "ganesha.nfsd" in cmdline(self.ganesha_pid), "the namespace to start ganesha")
        self._netns_fd = os.open("/proc/%d/ns/net" % self.ganesha_pid, os.O_RDONLY)
        if 3 in self.versions:
            self._wait(rpcbind_pid_file.exists, "the private rpcbind")
            self.rpcbind_pid = int(rpcbind_pid_file.read_text().strip())

    def _answers(self):
        if not pid_alive(self.ganesha_pid):
            raise RuntimeError("nfs-ganesha exited during start-up:\n%s" % self.log_tail())
        for version in self.versions:
            argv = [NFS_LS, "nfs://%s%s?version=%d" % (HOST, self.export_dir, version)]
            if self.isolated:
                argv = ["nsenter", "--net=/proc/%d/ns/net" % self.ganesha_pid] + argv
            if subprocess.run(argv, capture_output=True, check=False, timeout=30).returncode != 0:
                return False
        return True

    @staticmethod
    def _wait(predicate, what):
        deadline = time.monotonic() + START_TIMEOUT
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for %s" % what)
            time.sleep(0.05)

    def log_tail(self, lines=30):
        try:
            return "\n".join((self.workdir / "ganesha.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no ganesha log)"

    def freeze(self):
        """SIGSTOP the NFS server: clients stall until it is stopped (or sent SIGCONT)."""
        if self.ganesha_pid and "ganesha.nfsd" in cmdline(self.ganesha_pid):
            os.kill(self.ganesha_pid, signal.SIGSTOP)

    def stop_ganesha(self):
        """Stop the NFS server only (rpcbind stays): what "the server went away mid-transfer" means."""
        stop_pid(self.ganesha_pid, "ganesha.nfsd")

    def close(self):
        self.stop_ganesha()
        stop_pid(self.rpcbind_pid, "rpcbind")
        self.rpcbind_pid = None
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def state(self):
        return {"ganesha_pid": self.ganesha_pid, "rpcbind_pid": self.rpcbind_pid, "workdir": str(self.workdir)}

    @contextlib.contextmanager
    def client_namespace(self):
        """Run the block (and the processes it starts) in the isolated server's network namespace."""
        if self._netns_fd is None:
            yield
            return
        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            if libc.setns(self._netns_fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the NFS server's network namespace failed")
            try:
                yield
            finally:
                if libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the test's network namespace failed")
        finally:
            os.close(home)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class ExportDir:
    """A fresh directory inside an export, with URL helpers."""

    def __init__(self, server, path):
        self.server = server
        self.path = Path(path)

    def write(self, name, data):
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def url(self, name, version=None, port=None):
        return self.server.url(name, version=version, port=port, base=self.path)


class SharedGanesha:
    """The machine-wide test server (see the module docstring). ``acquire()`` once per process, ``release()`` at
    the end; the last process out stops the server."""

    def __init__(self, root=SHARED_ROOT):
        self.root = Path(root)
        self.export_dir = self.root / "export"
        self.squashed_dir = self.root / "squashed"
        self._user_file = None
        self._server = None

    @contextlib.contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _live_users(self):
        users = self.root / "users"
        users.mkdir(exist_ok=True)
        live = []
        for entry in users.iterdir():
            try:
                pid = int(entry.name.split("-", 1)[0])
            except ValueError:
                pid = 0
            if pid_alive(pid):
                live.append(entry)
            else:
                entry.unlink()  # a crashed test process: its claim is void
        return live

    def _state(self):
        try:
            return json.loads((self.root / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def _server_from(self, state):
        server = GaneshaServer(self.export_dir, versions=(3, 4), workdir=state["workdir"],
                               squashed_dir=self.squashed_dir)
        server.ganesha_pid, server.rpcbind_pid = state["ganesha_pid"], state["rpcbind_pid"]
        return server

    def acquire(self):
        with self._locked():
            self._live_users()
            state = self._state()
            server = self._server_from(state) if state else None
            if server is None or not pid_alive(server.ganesha_pid) or not server._answers():
                if server is not None:
                    server.close()
                server = GaneshaServer(self.export_dir, versions=(3, 4), workdir=self.root / "run",
                                       squashed_dir=self.squashed_dir)
                server.start()
                (self.root / "state.json").write_text(json.dumps(server.state()))
            self._server = server
            self._user_file = self.root / "users" / ("%d-%s" % (os.getpid(), uuid.uuid4().hex))
            self._user_file.touch()
        return self

    def release(self):
        with self._locked():
            if self._user_file is not None:
                self._user_file.unlink()
                self._user_file = None
            if not self._live_users():
                state = self._state()
                if state:
                    self._server_from(state).close()
                    (self.root / "state.json").unlink()

    @property
    def server(self):
        return self._server

    def make_dir(self, squashed=False):
        """A new empty directory inside the export (``squashed``: inside the all-squash export)."""
        base = self.squashed_dir if squashed else self.export_dir
        path = base / ("t-" + uuid.uuid4().hex[:12])
        path.mkdir(parents=True)
        return ExportDir(self._server, path)

    def url(self, relative, version=None, port=None):
        return self._server.url(relative, version=version, port=port)


@pytest.fixture(scope="session")
def nfs_server():
    """The shared nfs-ganesha server (``require``: skips the test when this machine cannot run one, fails it under
    CI=true)."""
    require(ganesha_available())
    shared = SharedGanesha().acquire()
    try:
        yield shared
    finally:
        shared.release()


@pytest.fixture
def nfs_export(nfs_server):
    """A fresh directory inside the shared export; removed after the test."""
    export = nfs_server.make_dir()
    try:
        yield export
    finally:
        shutil.rmtree(export.path, ignore_errors=True)
