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
import shutil
from pathlib import Path

import pytest

from ansible_collections.directdownload.kvm.tests.integration.conftest import namespaced_hosts
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA

HOST_COUNT = 3
# A hung playbook fails the test (and the fixtures still tear the hosts down) instead of blocking the run.
PLAYBOOK_TIMEOUT = 300
KEYSTORE_SECRET = "test-keystore-secret"


@pytest.fixture(scope="module")
def kvm_hosts(tmp_path_factory):
    yield from namespaced_hosts(tmp_path_factory, "kvmhosts", HOST_COUNT)


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
        # Same bytes under another name: a second template for the host-down part of the story.
        shutil.copyfile(root / "tiny.qcow2", root / "tiny-b.qcow2")
        yield server


PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"


def _changed_hosts(run, task):
    return sorted(record["host"] for record in run.tasks(task) if record["status"] == "changed")


def _vol_list(hosts, name, pool):
    out = hosts.ssh(name, f"virsh -q vol-list {pool}").stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def _image_gets(server, path):
    """Full-body GETs of ``path`` the mirror answered (probes read a range: 206)."""
    return [r for r in server.requests if r.method == "GET" and r.path == path and r.status == 200]


def _registry(run_playbook, registry, name):
    run = run_playbook([{"hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "Read the registry",
        "directdownload.kvm.template_info": {"registry": str(registry), "name": name}}]}])
    return run.task("Read the registry")["result"]


def test_story_across_three_hosts(kvm_hosts, mirror, run_playbook, tmp_path):
    hosts = kvm_hosts
    env = hosts.ansible_env(forks=HOST_COUNT)
    registry = tmp_path / "registry" / "registry.json"
    shared_pool = tmp_path / "shared-pool"
    shared = {"libvirt_pool": "shared", "name": "shared", "shared": True, "cluster": "kvm_hosts"}
    # Claim waits bounded well below the test's time limit.
    common = {"directdownload_registry": str(registry), "deploy_claim_delay": 1, "deploy_claim_timeout": 60}
    report = tmp_path / "deploy-report.json"

    def play(playbook, extra_vars=None, **kwargs):
        return run_playbook(playbook, inventory=hosts.inventory, env=env, extra_vars={**common, **(extra_vars or {})},
                            timeout=PLAYBOOK_TIMEOUT, **kwargs)

    agent_play = [{
        "name": "Prepare the KVM hosts",
        "hosts": "kvm_hosts",
        "gather_facts": False,
        "roles": [{
            "role": "directdownload.kvm.agent",
            "vars": {"agent_libvirt_pools": [{"name": "primary", "path": "/var/lib/libvirt/images"},
                                             {"name": "shared", "path": str(shared_pool)}]},
        }],
    }]
    certificate_vars = {
        "certificate_alias": "mirror-ca",
        "certificate_src": str(mirror.ca_file),
        "certificates_create_keystore": True,
    }
    template_a = {"template_name": "tiny", "template_format": "qcow2",
                  "template_url": mirror.url("tiny.qcow2", host=hosts.bridge_address),
                  "template_checksum": f"sha256:{mirror.image_sha256}"}
    # Every host's own pool. (Several hosts of one play deploying to one shared pool at once is not part of this
    # story: under the linear strategy the claim waiters hold the claim holder at the task barrier.)
    deploy_a = {"template_name": "tiny", "directdownload_pools": [{"libvirt_pool": "primary", "name": "primary"}]}

    # A CloudStack agent is installed on each host: its keystore password lives in agent.properties.
    for name in hosts.names:
        hosts.ssh(name, f"mkdir -p /etc/cloudstack/agent && echo keystore.passphrase={KEYSTORE_SECRET}"
                        " > /etc/cloudstack/agent/agent.properties")

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

    # 2. The mirror's CA goes to every host (keystore and trust directory); the status is recorded per host.
    run = play(PLAYBOOKS / "upload_certificate.yml", extra_vars=certificate_vars)
    statuses = json.loads(registry.read_text())["certificates"]["mirror-ca"]["hosts"]
    assert {name: statuses[name]["status"] for name in hosts.names} == {name: "UPLOADED" for name in hosts.names}
    assert KEYSTORE_SECRET not in run.stdout + run.stderr
    for name in hosts.names:
        assert hosts.ssh(name, "ls /etc/directdownload/trust.d").stdout.split() != []
        assert "mirror-ca" in hosts.ssh(name, f"keytool -list -storepass {KEYSTORE_SECRET} "
                                              "-keystore /etc/cloudstack/agent/cloud.jks").stdout

    # 3. Register: the URL is probed over HTTPS from a random KVM host, which trusts the uploaded CA.
    run = play(PLAYBOOKS / "register_template.yml", extra_vars=template_a)
    view = _registry(run_playbook, registry, "tiny")
    assert view["template"]["state"] == "Ready"
    assert view["template"]["download_state"] == "BYPASSED"
    assert view["template"]["checked_on"] in hosts.names

    # 4. Deploy to the three hosts' pools in parallel (forks=3): one download per host, one copy recorded per host.
    gets_before = len(_image_gets(mirror, "/tiny.qcow2"))
    run = play(PLAYBOOKS / "deploy_template.yml", extra_vars={**deploy_a, "deploy_report_path": str(report)})
    assert len(_image_gets(mirror, "/tiny.qcow2")) - gets_before == HOST_COUNT
    rows = json.loads(report.read_text())
    assert sorted((r["host"], r["status"], r["downloaded_on"]) for r in rows) == [
        (name, "downloaded", name) for name in hosts.names]
    assert all(r["bytes"] > 0 and r["rate_mb_s"] > 0 and r["source"].startswith("https://") for r in rows)
    view = _registry(run_playbook, registry, "tiny")
    assert sorted((c["host"], c["pool"]) for c in view["copies"]) == [(name, "primary") for name in hosts.names]
    install_name = view["template"]["id"]
    for name in hosts.names:
        # The pool was refreshed by the download module: libvirt lists the image at once, and no partial file.
        volumes = _vol_list(hosts, name, "primary")
        assert install_name in volumes, volumes
        assert not [v for v in volumes if v.endswith(".part")]

    # 5. Everything again: nothing changes anywhere, nothing is downloaded.
    gets_before = len(_image_gets(mirror, "/tiny.qcow2"))
    for playbook, extra in ((agent_play, None), (PLAYBOOKS / "upload_certificate.yml", certificate_vars),
                            (PLAYBOOKS / "register_template.yml", template_a),
                            (PLAYBOOKS / "deploy_template.yml", deploy_a)):
        run = play(playbook, extra_vars=extra)
        assert run.changed_tasks() == [], [(r["host"], r["task"]) for r in run.changed_tasks()]
    assert len(_image_gets(mirror, "/tiny.qcow2")) == gets_before

    # 6. kvmhost2 drops off the network. Registration still succeeds through another host, and a deployment from
    #    kvmhost2 onto the shared pool rotates to a live host of the cluster.
    hosts.link_down("kvmhost2")
    template_b = {**template_a, "template_name": "tiny-b", "template_url": mirror.url("tiny-b.qcow2", host=hosts.bridge_address),
                  "probe_hosts": ["kvmhost2", "kvmhost1", "kvmhost3"]}
    run = play(PLAYBOOKS / "register_template.yml", extra_vars=template_b)
    view = _registry(run_playbook, registry, "tiny-b")
    assert view["template"]["checked_on"] in ("kvmhost1", "kvmhost3")
    run = play(PLAYBOOKS / "deploy_template.yml", extra_args=["--limit", "kvmhost2"],
               extra_vars={"template_name": "tiny-b", "directdownload_pools": [shared],
                           "deploy_report_path": str(report)})
    view = _registry(run_playbook, registry, "tiny-b")
    [row] = json.loads(report.read_text())
    assert (row["host"], row["status"]) == ("kvmhost2", "downloaded")
    assert row["attempts"][0]["host"] == "kvmhost2" and row["attempts"][0]["outcome"] == "unreachable"
    assert row["downloaded_on"] == row["attempts"][-1]["host"]
    assert [c["pool"] for c in view["copies"]] == ["shared"]
    downloaded_on = view["copies"][0]["host"]
    assert downloaded_on in ("kvmhost1", "kvmhost3")
    assert Path(view["copies"][0]["install_path"]).parent == shared_pool
    assert Path(view["copies"][0]["install_path"]).name in _vol_list(hosts, downloaded_on, "shared")
    hosts.link_up("kvmhost2")
