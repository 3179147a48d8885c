# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The whole story across three real "KVM hosts" over SSH.

Three network namespaces on this machine, each with its own sshd and libvirtd (tests/integration/hosts/), an HTTPS
mirror signed by a private CA on the bridge address, and the real playbooks run by ansible-playbook over SSH with
pipelining and forks=3. Everything stays inside this machine; teardown kills the hosts' processes by PID and
removes the namespaces, even when the test fails (fixture finalizer, plus ``atexit`` in KvmHosts).

One test function on purpose: the steps build on each other (a registered template, then its copies), and the hosts
are shared state that parallel workers must not start twice.
"""

from __future__ import annotations

import json

import pytest

from ansible_collections.directdownload.kvm.tests.integration.hosts.kvmhosts import KvmHosts, can_run
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA

HOST_COUNT = 3
# Used by no other test or benchmark (benchmarks/bench_scale.py uses "ddbs" and 10.213.78).
PREFIX = "ddmh"
SUBNET = "10.213.77"


@pytest.fixture(scope="module")
def kvm_hosts(tmp_path_factory):
    reason = can_run()
    if reason == "needs root (network namespaces, mounts)":
        pytest.skip(reason)
    if reason:
        pytest.fail(f"the namespaced KVM hosts cannot start: {reason} (see bindep.txt)")
    hosts = KvmHosts(tmp_path_factory.mktemp("kvmhosts"), count=HOST_COUNT, prefix=PREFIX, subnet=SUBNET)
    hosts.start()
    yield hosts
    hosts.stop()


@pytest.fixture(scope="module")
def mirror(kvm_hosts, tmp_path_factory):
    """An HTTPS mirror on the bridge address, with a certificate from a private CA the hosts do not trust yet."""
    root = tmp_path_factory.mktemp("mirror")
    ca = TestCA()
    images.qcow2(root / "tiny.qcow2", 32 * images.MiB, writes=[(0, images.MiB, 0xA5), (8 * images.MiB, images.MiB, 0x5A)])
    with ImageServer(root, ssl_context=ca.server_context(hostnames=(kvm_hosts.bridge_address,)),
                     host=kvm_hosts.bridge_address) as server:
        server.ca = ca
        server.ca_file = ca.ca_pem_path(root.parent)
        server.image_sha256 = images.sha256_file(root / "tiny.qcow2")
        yield server


def _changed_hosts(run, task):
    return sorted(record["host"] for record in run.tasks(task) if record["status"] == "changed")


def _vol_list(hosts, name, pool):
    out = hosts.ssh(name, f"virsh -q vol-list {pool}").stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def test_story_across_three_hosts(kvm_hosts, mirror, run_playbook, tmp_path):
    hosts = kvm_hosts
    env = hosts.ansible_env(forks=HOST_COUNT)
    shared_pool = tmp_path / "shared-pool"
    agent_play = [{
        "name": "Prepare the KVM hosts",
        "hosts": "kvm_hosts",
        "gather_facts": False,
        "roles": [{
            "role": "directdownload.kvm.agent",
            "vars": {
                "agent_libvirt_pools": [
                    {"name": "primary", "path": "/var/lib/libvirt/images"},
                    {"name": "shared", "path": str(shared_pool)},
                ],
            },
        }],
    }]

    def play(playbook, **kwargs):
        return run_playbook(playbook, inventory=hosts.inventory, env=env, **kwargs)

    # 1. The agent role over SSH: packages already present (ok), settings, trust directory, both pools.
    run = play(agent_play)
    assert _changed_hosts(run, "directdownload.kvm.agent : Write the agent settings file") == hosts.names
    for name in hosts.names:
        settings = json.loads(hosts.ssh(name, "cat /etc/directdownload/agent.json").stdout)
        assert settings["trust_dir"] == "/etc/directdownload/trust.d"
        pools = hosts.ssh(name, "virsh -q pool-list --autostart").stdout
        assert "primary" in pools and "shared" in pools
        # Each host has its own libvirtd and its own /etc: the pools are defined on every host separately.
        assert hosts.ssh(name, "hostname").stdout.strip() == name

    # 2. The template's image lands in every host's own pool, three hosts in parallel.
    url = mirror.url("tiny.qcow2", host=hosts.bridge_address)
    download_play = [{
        "name": "Download into every host's pool",
        "hosts": "kvm_hosts",
        "gather_facts": False,
        "tasks": [{
            "name": "Download",
            "directdownload.kvm.download": {
                "url": url,
                "checksum": f"sha256:{mirror.image_sha256}",
                "pool": "primary",
                "name": "tiny.qcow2",
                "ca_path": str(mirror.ca_file),
            },
        }],
    }]
    run = play(download_play)
    assert _changed_hosts(run, "Download") == hosts.names
    for name in hosts.names:
        # The pool was refreshed by the download module: libvirt lists the image at once, and no partial file.
        volumes = _vol_list(hosts, name, "primary")
        assert "tiny.qcow2" in volumes
        assert not [v for v in volumes if v.endswith(".part")]
        assert run.task("Download", host=name)["result"]["format"] == "qcow2"

    # 3. Everything again: nothing changes anywhere.
    for playbook in (agent_play, download_play):
        run = play(playbook)
        assert run.changed_tasks() == [], [(r["host"], r["task"]) for r in run.changed_tasks()]
