# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Python side of ``start.sh``/``stop.sh``: several "KVM hosts" on this machine, reachable over real SSH.

::

    from ansible_collections.directdownload.kvm.tests.integration.hosts.kvmhosts import KvmHosts
    with KvmHosts(tmp_dir, count=3) as hosts:
        hosts.inventory             # path of an INI inventory: group kvm_hosts = kvmhost1..N, python /usr/bin/python3
        hosts.ansible_env()         # environment for ansible-playbook: pipelining, control sockets under tmp_dir
        hosts.ssh("kvmhost2", "virsh -q vol-list primary")
        hosts.link_down("kvmhost2") # the host drops off the network (its veth goes down); link_up() restores it
        hosts.mirror_popen([...])   # a process in the mirror namespace (address hosts.mirror_address)

Each host is a network namespace with its own sshd and libvirtd in a private view of /etc, /var and /run
(``sysview.sh``); /tmp, /usr and /root are shared. The controller reaches the hosts through a bridge that only
exists on this machine (``hosts.bridge_address``). ``stop()`` (also at interpreter exit, and safe to call twice)
kills every process of the namespaces by PID and removes namespaces, veths and bridge, even after a crash.

Several harnesses may run at once (a test run and a benchmark, two developers' ``make test``): each takes a free
*slot* - an exclusive ``flock`` on /tmp/directdownload-kvmhosts/slot-N.lock, held until ``stop()`` or until the
process dies - and slot N owns the interface prefix ``ddN`` and the subnet ``10.213.(100+N).0/24``. Whatever a
crashed run left in a slot is removed when the slot is taken again; a live run's hosts are never touched.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import signal
import subprocess
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLOT_DIR = Path("/tmp/directdownload-kvmhosts")
SLOTS = 16
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3"]


class KvmHosts:
    """``count`` namespaced KVM hosts named kvmhost1..N; see the module docstring."""

    def __init__(self, base_dir, count=3, libvirt=True):
        self.base_dir = Path(base_dir).resolve()
        self.count = count
        self.libvirt = libvirt
        self.names = [f"kvmhost{i}" for i in range(1, count + 1)]
        self.inventory = self.base_dir / "inventory.ini"
        # Known once start() took a slot.
        self.slot = None
        self.prefix = None
        self.subnet = None
        self.bridge_address = None
        self.mirror_address = None
        self.mirror_namespace = None
        self._slot_lock = None
        self._started = False

    def _take_slot(self):
        SLOT_DIR.mkdir(mode=0o755, exist_ok=True)
        for slot in range(SLOTS):
            handle = open(SLOT_DIR / f"slot-{slot}.lock", "a+", encoding="ascii")  # pylint: disable=consider-using-with
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._slot_lock = handle
            self.slot = slot
            self.prefix = f"dd{slot}"
            self.subnet = f"10.213.{100 + slot}"
            self.bridge_address = f"{self.subnet}.1"
            self.mirror_address = f"{self.subnet}.5"
            self.mirror_namespace = f"{self.prefix}m"
            return
        raise RuntimeError(f"all {SLOTS} KVM host slots are in use (locks in {SLOT_DIR})")

    def _release_slot(self):
        if self._slot_lock is not None:
            self._slot_lock.close()
            self._slot_lock = None

    def address(self, name):
        return f"{self.subnet}.{10 + self._index(name)}"

    def _index(self, name):
        if name not in self.names:
            raise ValueError(f"no host {name!r}; hosts are {self.names}")
        return self.names.index(name) + 1

    def start(self):
        self._take_slot()
        argv = [str(HERE / "start.sh"), "-b", str(self.base_dir), "-n", str(self.count), "-p", self.prefix,
                "-s", self.subnet]
        if not self.libvirt:
            argv.append("--no-libvirt")
        # Registered before starting: a start that fails half-way is cleaned up too.
        atexit.register(self.stop)
        _exit_on_sigterm()
        self._started = True
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"start.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return self

    def stop(self):
        if not self._started:
            return
        subprocess.run([str(HERE / "stop.sh"), "-b", str(self.base_dir), "-p", self.prefix],
                       capture_output=True, text=True, check=False, timeout=60)
        self._started = False
        self._release_slot()
        atexit.unregister(self.stop)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def ansible_env(self, forks=None):
        """Environment for ansible-playbook runs against these hosts."""
        env = {
            "ANSIBLE_PIPELINING": "True",
            # Control sockets under base_dir: stop.sh closes them, and no stale master of an earlier run is reused.
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.base_dir / "cp"),
            # Keepalives make a master whose host went off the network give up in seconds, not minutes.
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s -o ServerAliveInterval=1 "
                                "-o ServerAliveCountMax=3",
            "ANSIBLE_TIMEOUT": "5",
        }
        if forks is not None:
            env["ANSIBLE_FORKS"] = str(forks)
        return env

    def ssh(self, name, command, check=True, timeout=60):
        """Run a shell command on host ``name`` as root; returns the CompletedProcess (text)."""
        argv = ["ssh", *SSH_OPTIONS, "-i", str(self.base_dir / "client_key"), f"root@{self.address(name)}", command]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"ssh {name} {command!r} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def link_down(self, name):
        """Take host ``name`` off the network: its processes keep running, nothing reaches it any more."""
        subprocess.run(["ip", "link", "set", f"{self.prefix}v{self._index(name)}", "down"], check=True)

    def link_up(self, name):
        subprocess.run(["ip", "link", "set", f"{self.prefix}v{self._index(name)}", "up"], check=True)

    def mirror_popen(self, argv, **kwargs):
        """Start ``argv`` in the mirror namespace (address ``mirror_address``); stop() kills it with the rest."""
        return subprocess.Popen(["ip", "netns", "exec", self.mirror_namespace, *argv], **kwargs)


def _exit_on_sigterm():
    """Make SIGTERM (``timeout``, a CI runner cancelling) stop the run like Ctrl-C: fixture finalizers and atexit
    handlers run, so the hosts are torn down.

    Python's default SIGTERM action ends the process at once, without atexit handlers or fixture finalizers.
    Only installed over the default action, and only from the main thread (where signal handlers live).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt("SIGTERM")


def can_run():
    """Why these hosts cannot start on this machine, or None when they can (root, ip, sshd, libvirtd)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, mounts)"
    for tool in ("/usr/sbin/sshd", "/usr/sbin/libvirtd", "/usr/bin/virsh", "/usr/bin/python3"):
        if not os.path.exists(tool):
            return f"needs {tool}"
    for tool in ("ip", "unshare", "ssh", "ssh-keygen"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, check=False).returncode != 0:
            return f"needs {tool}"
    return None
