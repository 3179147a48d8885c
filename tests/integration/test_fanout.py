# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fan-out under real ansible-playbook over SSH: the deploy role with ``deploy_fanout: true`` on three namespaced hosts.

Three namespaced hosts (tests/integration/hosts/, without libvirtd), each with a host-local pool directory, an HTTP
origin on the bridge address that counts the bytes it sends, and the registry on the controller. The waves are
kvmhost1 (origin), kvmhost2 (from kvmhost1), kvmhost3 (from kvmhost1 and kvmhost2), the origin the fallback.

One test function per fault, each a fresh template (its own id, so its own copies): the plain deployment (origin
bytes, exact bytes everywhere, the report's origin/peer split, no peer server left, the token nowhere), a peer
killed mid-transfer, the origin gone after the first copy, a peer serving corrupt bytes (its verified file changed
in place, size and mtime kept: the peer cannot tell, the receiver's checksum does), and a play killed with SIGKILL
then run again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import yaml

from ansible_collections.directdownload.kvm.tests.integration.conftest import kill_tree, namespaced_hosts, playbook_env
from ansible_collections.directdownload.kvm.plugins.module_utils import _peer
from ansible_collections.directdownload.kvm.tests.integration.test_peer import _files_with, _port_open, _running
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

HOST_COUNT = 3
PLAYBOOK_TIMEOUT = 300
TOKEN = "fanout-deploy-token-8c1d55e0a9b34f27"
PORT = 8473
PLAYBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "playbooks")


@pytest.fixture(scope="module")
def kvm_hosts(tmp_path_factory):
    yield from namespaced_hosts(tmp_path_factory, "fanouthosts", HOST_COUNT, libvirt=False)


@pytest.fixture(scope="module")
def origin(kvm_hosts, tmp_path_factory):
    """The origin: plain HTTP on the bridge address, one distinct image per test (own template id)."""
    root = tmp_path_factory.mktemp("origin")
    with ImageServer(root, host=kvm_hosts.bridge_address) as server:
        server.root = root
        yield server


class Deployment:
    """One template registered and deployed with fan-out onto the hosts' own pool directories."""

    def __init__(self, hosts, origin, run_playbook, tmp_path, name, checksum=True):
        self.hosts, self.origin, self.run_playbook, self.tmp = hosts, origin, run_playbook, tmp_path
        self.name = name
        self.image = origin.root / f"{name}.qcow2"
        # About 24 MiB of allocated clusters with distinct patterns.
        images.qcow2(self.image, 64 * images.MiB, writes=[(i * 8 * images.MiB, 3 * images.MiB, 0x11 + i) for i in range(8)])
        self.size = self.image.stat().st_size
        self.sha256 = images.sha256_file(self.image)
        self.registry = tmp_path / "registry.json"
        self.report = tmp_path / "report.json"
        self.outputs = []
        self.common = {
            "directdownload_registry": str(self.registry),
            "directdownload_pools": [{"path": str(tmp_path / "pool-{{ inventory_hostname }}"), "name": "local"}],
            "directdownload_peer_state_dir": str(tmp_path / "peer-{{ inventory_hostname }}"),
            "deploy_claim_delay": 1, "deploy_claim_timeout": 60,
        }
        for host in hosts.names:
            (tmp_path / f"pool-{host}").mkdir()
        template = {"template_name": name, "template_format": "qcow2",
                    "template_url": origin.url(f"{name}.qcow2", host=hosts.bridge_address)}
        if checksum:
            template["template_checksum"] = f"sha256:{self.sha256}"
        self.play(os.path.join(PLAYBOOKS, "register_template.yml"), template)
        self.path_in_origin = f"/{name}.qcow2"

    def play(self, playbook, extra_vars=None, expect_rc=0):
        run = self.run_playbook(playbook, inventory=self.hosts.inventory, env=self.hosts.ansible_env(forks=HOST_COUNT),
                                extra_vars={**self.common, **(extra_vars or {})}, timeout=PLAYBOOK_TIMEOUT,
                                extra_args=("-v",), expect_rc=expect_rc)
        self.outputs.append(run.stdout + run.stderr)
        return run

    def deploy_vars(self, **extra):
        return {"template_name": self.name, "deploy_fanout": True, "deploy_peer_token": TOKEN,
                "deploy_report_path": str(self.report), "deploy_read_timeout": 30, "deploy_connect_timeout": 15,
                **extra}

    def deploy(self, expect_rc=0, **extra):
        return self.play(os.path.join(PLAYBOOKS, "deploy_template.yml"), self.deploy_vars(**extra), expect_rc=expect_rc)

    def pool_file(self, host):
        names = [n for n in os.listdir(self.tmp / f"pool-{host}") if not n.startswith(".")]
        return [self.tmp / f"pool-{host}" / n for n in names]

    def installed(self, host):
        files = [p for p in self.pool_file(host) if not p.name.endswith((".part", ".json"))]
        return files[0] if len(files) == 1 else None

    def origin_bytes(self):
        return sum(r.bytes_sent or 0 for r in self.origin.requests if r.path == self.path_in_origin and r.method == "GET")

    def rows(self):
        return {row["host"]: row for row in json.loads(self.report.read_text())}

    def assert_exact_everywhere(self):
        for host in self.hosts.names:
            path = self.installed(host)
            assert path is not None, (host, self.pool_file(host))
            assert images.sha256_file(path) == self.sha256, host

    def assert_no_peer_server(self):
        assert _servers_running(self.tmp) == []
        for host in self.hosts.names:
            assert not _port_open(self.hosts.address(host), PORT), host
            assert not (self.tmp / f"peer-{host}" / "token").exists()

    def assert_token_nowhere(self):
        for output in self.outputs:
            assert TOKEN not in output
        assert _files_with(self.tmp, TOKEN) == []
        assert _files_with(self.hosts.base_dir, TOKEN) == []


def _servers_running(under):
    """PIDs of the peer server processes whose state directory is under ``under`` (other tests on this machine may
    run peer servers of their own)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    argv = handle.read().split(b"\0")
            except OSError:
                continue
            if _peer.SERVER_MARKER.encode() in argv and any(arg.startswith(str(under).encode()) for arg in argv) \
                    and _running(int(entry)):
                found.append(int(entry))
    return found


def _wait_for(predicate, timeout=120, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_fanout_takes_the_origin_once_and_leaves_nothing_running(kvm_hosts, origin, run_playbook, tmp_path):
    deployment = Deployment(kvm_hosts, origin, run_playbook, tmp_path, "fan")
    before = deployment.origin_bytes()
    run = deployment.deploy()
    deployment.assert_exact_everywhere()
    moved = deployment.origin_bytes() - before
    assert moved <= 1.05 * deployment.size, (moved, deployment.size)
    rows = deployment.rows()
    assert rows["kvmhost1"]["origin_bytes"] == deployment.size and rows["kvmhost1"]["peer_bytes"] == 0
    for host in ("kvmhost2", "kvmhost3"):
        # From peers (a peer set aside on a very loaded machine would send a range to the origin: within 5 %).
        assert rows[host]["status"] == "downloaded"
        assert rows[host]["peer_bytes"] >= 0.95 * deployment.size, rows[host]
    table = "\n".join(run.task("directdownload.kvm.deploy : Show the deployment report")["result"]["msg"])
    assert "peers 2" in table or "peers" in table
    deployment.assert_no_peer_server()
    # Every copy recorded in the registry.
    copies = json.loads(deployment.registry.read_text())["copies"]
    assert sorted(c["host"] for c in copies) == kvm_hosts.names
    # Again: nothing is downloaded, nothing changes in the registry, no server is left.
    again = deployment.origin_bytes()
    deployment.deploy()
    assert deployment.origin_bytes() == again
    assert all(row["status"] == "present" for row in deployment.rows().values())
    deployment.assert_no_peer_server()
    deployment.assert_token_nowhere()


def _in_place(path, offset, length):
    """Change ``length`` bytes of ``path`` at ``offset`` in place, size and mtime kept (what a peer cannot see)."""
    info = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        data = handle.read(length)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def _watch(predicate, action):
    """Run ``action`` once ``predicate`` holds (polled in a thread); returns the thread and what it saw."""
    seen = {}

    def run():
        seen["fired"] = _wait_for(predicate, timeout=PLAYBOOK_TIMEOUT)
        if seen["fired"]:
            seen["result"] = action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, seen


def _parts(deployment, host):
    return [p for p in deployment.pool_file(host) if ".part" in p.name] + [
        deployment.tmp / f"pool-{host}" / n for n in os.listdir(deployment.tmp / f"pool-{host}") if ".part" in n]


def _server_pid(deployment, host):
    try:
        return int((deployment.tmp / f"peer-{host}" / "server.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def test_a_peer_killed_mid_transfer_costs_no_host_its_copy(kvm_hosts, origin, run_playbook, tmp_path):
    deployment = Deployment(kvm_hosts, origin, run_playbook, tmp_path, "killed-peer")
    before = deployment.origin_bytes()

    def kill_kvmhost1_server():
        finished = deployment.installed("kvmhost3") is not None
        pid = _server_pid(deployment, "kvmhost1")
        os.kill(pid, 9)
        return {"pid": pid, "finished_before": finished}

    # kvmhost3 (wave 2) fetches from kvmhost1 and kvmhost2; each download is held to 8 MiB/s (the origin budget of
    # 24 MiB/s over three hosts), so the kill lands while its .part is being filled.
    thread, seen = _watch(lambda: bool(_parts(deployment, "kvmhost3")) and _server_pid(deployment, "kvmhost1"),
                          kill_kvmhost1_server)
    deployment.deploy(deploy_origin_rate="24M")
    thread.join(10)
    assert seen.get("fired") and seen["result"]["finished_before"] is False
    assert not _running(seen["result"]["pid"])
    deployment.assert_exact_everywhere()
    rows = deployment.rows()
    # kvmhost1's share moved to kvmhost2: still (almost) no origin bytes for kvmhost3.
    assert rows["kvmhost3"]["peer_bytes"] >= 0.95 * deployment.size
    assert deployment.origin_bytes() - before <= 1.05 * deployment.size
    deployment.assert_no_peer_server()
    deployment.assert_token_nowhere()


def test_the_origin_gone_after_the_first_copy_the_rest_come_from_peers(kvm_hosts, origin, run_playbook, tmp_path):
    deployment = Deployment(kvm_hosts, origin, run_playbook, tmp_path, "no-origin")
    thread, seen = _watch(lambda: deployment.installed("kvmhost1") is not None,
                          lambda: origin.set_fault(deployment.path_in_origin, refuse=True))
    try:
        deployment.deploy()
    finally:
        thread.join(10)
        origin.clear_faults()
    assert seen.get("fired")
    deployment.assert_exact_everywhere()
    rows = deployment.rows()
    for host in ("kvmhost2", "kvmhost3"):
        assert rows[host]["status"] == "downloaded" and rows[host]["peer_bytes"] == deployment.size
        assert rows[host]["origin_bytes"] == 0
    deployment.assert_no_peer_server()


def test_a_peer_serving_corrupt_bytes_is_refused_and_set_aside(kvm_hosts, origin, run_playbook, tmp_path):
    # Registered without a checksum: the digest of the first verified copy (kvmhost1's, taken while downloading,
    # before the change below) is the reference the other hosts are verified against.
    deployment = Deployment(kvm_hosts, origin, run_playbook, tmp_path, "corrupt-peer", checksum=False)
    # kvmhost1's verified copy is changed in place once installed, size and mtime kept: its peer server cannot
    # tell (same device, inode, size, mtime) and serves the changed bytes; the receivers' checksum must.
    thread, seen = _watch(lambda: deployment.installed("kvmhost1") is not None,
                          lambda: _in_place(deployment.installed("kvmhost1"), 5 * images.MiB, 4096))
    deployment.deploy()
    thread.join(10)
    assert seen.get("fired")
    for host in ("kvmhost2", "kvmhost3"):
        assert images.sha256_file(deployment.installed(host)) == deployment.sha256, host
    assert images.sha256_file(deployment.installed("kvmhost1")) != deployment.sha256  # what the test did to it
    rows = deployment.rows()
    # kvmhost2 had only kvmhost1 as a peer: its bytes failed the checksum, the peer was set aside, the origin served.
    assert rows["kvmhost2"]["status"] == "downloaded" and rows["kvmhost2"]["origin_bytes"] == deployment.size
    assert " 20" in (tmp_path / "peer-kvmhost1" / "server.log").read_text()  # the peer did serve
    assert rows["kvmhost3"]["status"] == "downloaded"
    copies = json.loads(deployment.registry.read_text())["copies"]
    assert {c["checksum"] for c in copies} == {"{SHA-256}" + deployment.sha256}
    deployment.assert_no_peer_server()


def test_a_play_killed_with_sigkill_leaves_no_server_after_the_next_run(kvm_hosts, origin, run_playbook, tmp_path):
    deployment = Deployment(kvm_hosts, origin, run_playbook, tmp_path, "killed-play")
    workdir = tmp_path / "killed"
    workdir.mkdir()
    (workdir / "ansible.cfg").touch()
    # A claim of the killed run holds its pool until it expires (the fleet layer's rule): a short TTL here, so the
    # next run takes over after waiting for it instead of after three hours.
    (workdir / "vars.yml").write_text(yaml.safe_dump({**deployment.common, **deployment.deploy_vars(
        deploy_origin_rate="12M", deploy_claim_ttl=15)}))
    with subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-v", "-i",
                           str(kvm_hosts.inventory), "-e", "@" + str(workdir / "vars.yml"),
                           os.path.join(PLAYBOOKS, "deploy_template.yml")],
                          cwd=workdir, env=playbook_env(workdir, env=kvm_hosts.ansible_env(forks=HOST_COUNT)),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) as proc:
        started = _wait_for(lambda: _server_pid(deployment, "kvmhost1") and _servers_running(tmp_path), timeout=120)
        time.sleep(0.5)
        kill_tree(proc)
        deployment.outputs.append(proc.stdout.read().decode())
    assert started
    orphans = _servers_running(tmp_path)
    assert orphans and _port_open(kvm_hosts.address("kvmhost1"), PORT)  # the killed play's server outlived it
    deployment.deploy()
    assert not any(_running(pid) for pid in orphans)
    deployment.assert_exact_everywhere()
    deployment.assert_no_peer_server()
    deployment.assert_token_nowhere()
