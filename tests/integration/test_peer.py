# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""peer_server under real ansible-playbook over SSH: one namespaced host serves, another fetches pinned.

Two namespaced hosts (tests/integration/hosts/, without libvirtd): kvmhost1 starts the peer server on its own address,
kvmhost2 downloads the template from it with the token and the pinned fingerprint, byte-exact. Then: a wrong token
is refused, ``state=stopped`` leaves no process (by PID and port), a play killed with SIGKILL while its server runs is
followed by a run that finds and stops that server, and the token appears in no output, log or file outside the
peer's private state directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from ansible_collections.directdownload.kvm.plugins.module_utils import _peer
from ansible_collections.directdownload.kvm.tests.integration.conftest import kill_tree, namespaced_hosts, playbook_env
from ansible_collections.directdownload.kvm.tests.unit.lib import images

PLAYBOOK_TIMEOUT = 300
TOKEN = "fanout-token-4b7e9a510f2f0d5e2b11"
OTHER_TOKEN = "fanout-token-second-deployment-77"
PORT = 8473


@pytest.fixture(scope="module")
def kvm_hosts(tmp_path_factory):
    yield from namespaced_hosts(tmp_path_factory, "peerhosts", 2, libvirt=False)


def _port_open(address, port):
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def _running(pid):
    """The process exists and is not a zombie (this machine's PID 1 may reap orphans late)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _servers_running():
    """PIDs of every peer server process on this machine (the hosts share its PID namespace)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if _peer.SERVER_MARKER.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _files_with(root, needle):
    """Files under ``root`` holding ``needle``, but the test's own inputs (the extra-vars files it wrote: the
    operator's vault in real life)."""
    hits = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            if name.startswith("extra-vars-") or name == "vars.yml":
                continue
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as handle:
                    if needle.encode() in handle.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


def test_peer_serves_pinned_and_stops_cleanly(kvm_hosts, run_playbook, tmp_path):
    hosts = kvm_hosts
    env = hosts.ansible_env(forks=2)
    peer_address = hosts.address("kvmhost1")
    state_dir = tmp_path / "peer-state"  # kvmhost1's private state (on the shared /tmp, so the test can read it)
    pool1, pool2 = tmp_path / "pool1", tmp_path / "pool2"
    pool1.mkdir()
    pool2.mkdir()
    images.qcow2(pool1 / "tiny.qcow2", 16 * images.MiB, writes=[(0, images.MiB, 0xA5), (4 * images.MiB, images.MiB, 0x5A)])
    digest = images.sha256_file(pool1 / "tiny.qcow2")
    server_vars = {"peer_files": [{"path": str(pool1 / "tiny.qcow2"), "sha256": digest}],
                   "peer_state_dir": str(state_dir), "peer_address": peer_address, "peer_port": PORT}

    start_play = {
        "name": "Serve and fetch", "hosts": "kvm_hosts", "gather_facts": False,
        "tasks": [
            {"name": "Start the peer server", "when": "inventory_hostname == 'kvmhost1'",
             "directdownload.kvm.peer_server": {
                 "files": "{{ peer_files }}", "token": "{{ peer_token }}", "address": "{{ peer_address }}",
                 "port": "{{ peer_port }}", "state_dir": "{{ peer_state_dir }}", "lifetime": 600},
             "register": "peer"},
            {"name": "Fetch from the peer", "when": "inventory_hostname == 'kvmhost2'",
             "directdownload.kvm.download": {
                 "url": "{{ hostvars['kvmhost1'].peer.urls['tiny.qcow2'] }}", "url_is_peer": True,
                 "peer_token": "{{ receiver_token | default(peer_token) }}",
                 "peer_fingerprint": "{{ hostvars['kvmhost1'].peer.fingerprint }}",
                 "checksum": "sha256:" + digest, "pool_path": str(pool2), "retries": 0},
             "register": "fetched", "ignore_errors": "{{ receiver_token is defined }}"},
        ],
    }
    stop_play = {"name": "Stop", "hosts": "kvmhost1", "gather_facts": False,
                 "tasks": [{"name": "Stop the peer server",
                            "directdownload.kvm.peer_server": {"state": "stopped", "state_dir": "{{ peer_state_dir }}"}}]}
    outputs = []

    def play(playbook, extra_vars, **kwargs):
        run = run_playbook(playbook, inventory=hosts.inventory, env=env, extra_vars=extra_vars, timeout=PLAYBOOK_TIMEOUT,
                           extra_args=("-v",), **kwargs)
        outputs.append(run.stdout + run.stderr)
        return run

    # 1. kvmhost1 serves, kvmhost2 fetches pinned and authenticated: byte-exact, checksum verified.
    run = play([start_play], {**server_vars, "peer_token": TOKEN})
    started = run.task("Start the peer server", host="kvmhost1")
    assert started["status"] == "changed"
    fingerprint, pid = started["result"]["fingerprint"], started["result"]["pid"]
    assert started["result"]["urls"] == {"tiny.qcow2": f"https://{peer_address}:{PORT}/tiny.qcow2"}
    assert run.task("Fetch from the peer", host="kvmhost2")["status"] == "changed"
    assert images.sha256_file(pool2 / "tiny.qcow2") == digest
    assert _port_open(peer_address, PORT)
    assert _servers_running() == [pid]
    # While it runs, the token is in one file: the server's 0600 token file in its private state.
    assert _files_with(tmp_path, TOKEN) == [str(state_dir / _peer.TOKEN_FILE)]
    assert (state_dir / _peer.TOKEN_FILE).stat().st_mode & 0o777 == 0o600

    # 2. The same deployment again: the server is kept; a receiver with a wrong token is refused (403).
    os.unlink(pool2 / "tiny.qcow2")
    run = play([start_play], {**server_vars, "peer_token": TOKEN, "receiver_token": "wrong-token-0123456789abcdef"})
    again = run.task("Start the peer server", host="kvmhost1")
    assert again["status"] == "ok" and again["result"]["pid"] == pid and again["result"]["fingerprint"] == fingerprint
    refused = run.task("Fetch from the peer", host="kvmhost2")
    assert refused["status"] == "failed" and "403" in refused["result"]["msg"]
    assert not (pool2 / "tiny.qcow2").exists()
    log = (state_dir / _peer.LOG_FILE).read_text()
    assert " 403" in log and " 200" in log

    # 3. state=stopped: no process (PID and port), the secrets gone; a second stop changes nothing.
    run = play([stop_play], {**server_vars})
    stopped = run.task("Stop the peer server")
    assert stopped["status"] == "changed" and stopped["result"]["stopped"] == [pid]
    assert not _running(pid)
    assert not _port_open(peer_address, PORT)
    assert _servers_running() == []
    assert not (state_dir / _peer.TOKEN_FILE).exists() and not (state_dir / _peer.KEY_FILE).exists()
    assert play([stop_play], {**server_vars}).task("Stop the peer server")["status"] == "ok"

    # 4. A play killed with SIGKILL while its server runs: the next run finds and stops that server.
    killed_play = {"name": "Serve, then hang", "hosts": "kvmhost1", "gather_facts": False,
                   "tasks": [start_play["tasks"][0], {"name": "Hang", "ansible.builtin.command": "sleep 300"}]}
    workdir = tmp_path / "killed"
    workdir.mkdir()
    (workdir / "ansible.cfg").touch()
    (workdir / "play.yml").write_text(yaml.safe_dump([killed_play]))
    (workdir / "vars.yml").write_text(yaml.safe_dump({**server_vars, "peer_token": TOKEN}))
    with subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-v", "-i",
                           str(hosts.inventory), "-e", "@" + str(workdir / "vars.yml"), str(workdir / "play.yml")],
                          cwd=workdir, env=playbook_env(workdir, env=env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) as proc:
        deadline = time.time() + 120
        while not (_port_open(peer_address, PORT) and _servers_running()) and time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
        time.sleep(1)
        kill_tree(proc)
        outputs.append(proc.stdout.read().decode())
    orphans = _servers_running()
    assert len(orphans) == 1 and _port_open(peer_address, PORT)  # the server outlived its play
    # The next deployment (another token) starts over: the old server is found and stopped first.
    run = play([start_play], {**server_vars, "peer_token": OTHER_TOKEN})
    restarted = run.task("Start the peer server", host="kvmhost1")
    assert restarted["status"] == "changed" and restarted["result"]["stopped"] == orphans
    assert restarted["result"]["fingerprint"] != fingerprint
    assert _servers_running() == [restarted["result"]["pid"]]
    assert images.sha256_file(pool2 / "tiny.qcow2") == digest
    run = play([stop_play], {**server_vars})
    assert run.task("Stop the peer server")["result"]["stopped"] == [restarted["result"]["pid"]]
    # And a killed play followed directly by state=stopped.
    run = play([{**start_play, "hosts": "kvmhost1"}], {**server_vars, "peer_token": TOKEN})
    left = run.task("Start the peer server", host="kvmhost1")["result"]["pid"]
    os.unlink(state_dir / _peer.PID_FILE)  # even without its PID file
    assert play([stop_play], {**server_vars}).task("Stop the peer server")["result"]["stopped"] == [left]
    assert _servers_running() == [] and not _port_open(peer_address, PORT)

    # 5. The tokens appear in no play output and in no file outside the peer's private state (which is now
    # without the token file too): pools, the ansible work directories, the results, the server log.
    for token in (TOKEN, OTHER_TOKEN):
        for output in outputs:
            assert token not in output
        assert _files_with(tmp_path, token) == []
        assert _files_with(hosts.base_dir, token) == []


def test_fanout_waves_filter_in_a_play(run_playbook):
    run = run_playbook('''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Plan
      ansible.builtin.set_fact:
        plan: "{{ {'a': ['a1', 'a2', 'a3'], 'b': ['b1']} | directdownload.kvm.fanout_waves(holders=['a2']) }}"
    - name: Bad
      ansible.builtin.debug:
        msg: "{{ ['h1'] | directdownload.kvm.fanout_waves(per_holder=9) }}"
      ignore_errors: true
''')
    plan = run.task("Plan")["result"]["ansible_facts"]["plan"]
    assert plan == [{"wave": 0, "hosts": {"a1": {"cluster": "a", "peers": ["a2"]}, "b1": {"cluster": "b", "peers": []}}},
                    {"wave": 1, "hosts": {"a3": {"cluster": "a", "peers": ["a2", "a1"]}}}]
    bad = run.task("Bad")
    assert bad["status"] == "failed" and "per_holder" in bad["result"]["msg"]
