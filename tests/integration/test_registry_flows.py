# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The registry modules and the register / deploy / unregister flows, through real ansible-playbook runs.

KVM hosts are inventory hosts with the local connection (kvm1, kvm2, kvm3 on this machine), each with its own pool
directory or a shared one. What makes hosts differ is what really differs between KVM hosts: their trust (a
per-host ``directdownload_ca_path`` / ``directdownload_trust_dir`` used by url_check and download) and their network
path (a per-host ``directdownload_proxy`` pointing at a dead proxy makes a host unable to reach the mirror).
Images are made with qemu-img at run time and served by the loopback ImageServer, which counts the requests.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from ansible_collections.directdownload.kvm.tests.integration.conftest import REPO_ROOT, VENV_PYTHON, run_playbook_in
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA

MiB = images.MiB
VIRTUAL = 32 * MiB
SECRET = "Bearer integration-secret-token-0123456789"
PLAYBOOKS = REPO_ROOT / "playbooks"


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(name="mirror_root", scope="module")
def mirror_root_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    disk = images.qcow2(root / "disk.qcow2", VIRTUAL, writes=[(0, MiB, 0x5A)])
    images.compress(disk, root / "disk.qcow2.gz", "gzip")
    (root / "disk.img").write_bytes(Path(disk).read_bytes())  # a qcow2 under a name that is valid for raw too
    (root / "empty.raw").write_bytes(b"")
    return root


@pytest.fixture(name="mirror")
def mirror_fixture(mirror_root):
    with ImageServer(mirror_root) as server:
        yield server


@pytest.fixture(name="dead_proxy")
def dead_proxy_fixture():
    """A loopback port with nobody listening: a host configured with it as proxy cannot reach anything."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d" % sock.getsockname()[1]


def inventory(tmp_path, hosts, groups=None):
    """A YAML inventory: ``hosts`` maps host name -> host vars, all in the group kvm_hosts; ``groups`` maps more
    group names -> member host names."""

    def host_vars(name):
        return dict(hosts[name], ansible_connection="local", ansible_python_interpreter=VENV_PYTHON)

    children = {"kvm_hosts": {"hosts": {name: host_vars(name) for name in hosts}}}
    for group, members in (groups or {}).items():
        children[group] = {"hosts": {name: {} for name in members}}
    path = tmp_path / "inventory.yml"
    path.write_text(json.dumps({"all": {"children": children}}, indent=2))  # JSON is YAML
    return path


def local_pools(tmp_path, names):
    """Each host gets its own pool directory."""
    hosts = {}
    for name in names:
        pool = tmp_path / ("pool-" + name)
        pool.mkdir(exist_ok=True)
        hosts[name] = {"directdownload_pools": [{"path": str(pool)}]}
    return hosts


def read_registry(path):
    return json.loads(Path(path).read_text())


def image_gets(server, name):
    """Full downloads of ``name`` (the probe's ranged GETs of the first KiBs do not count)."""
    return [r for r in server.requests_for("/" + name, "GET") if "range" not in r.headers]


def task_records(run, name, host=None):
    """Result records of the task ``name``, with or without its role prefix (``directdownload.kvm.deploy : ``)."""
    return [
        r
        for r in run.results
        if (r["task"] == name or r["task"].split(" : ", 1)[-1] == name) and (host is None or r["host"] == host)
    ]


def task(run, name, host=None):
    """The one result record of the task ``name`` (see :func:`task_records`)."""
    found = task_records(run, name, host)
    assert len(found) == 1, "expected one result for %r (host=%s), got %d\n%s" % (
        name,
        host,
        len(found),
        run.output_tail(),
    )
    return found[0]


def tasks_starting(run, prefix):
    """Records of the tasks whose name (without role prefix) starts with ``prefix``, not skipped."""
    return [r for r in run.results if r["task"].split(" : ", 1)[-1].startswith(prefix) and r["status"] != "skipped"]


def register(run_playbook, inv, registry, url, expect_rc=0, **extra):
    extra_vars = {
        "directdownload_registry": str(registry),
        "template_name": extra.pop("name", "disk"),
        "template_url": url,
        "template_format": extra.pop("format", "qcow2"),
    }
    extra_vars.update(extra)
    return run_playbook(PLAYBOOKS / "register_template.yml", inventory=inv, extra_vars=extra_vars, expect_rc=expect_rc)


def deploy(run_playbook, inv, registry, expect_rc=0, timeout=900, extra_args=(), **extra):
    extra_vars = {
        "directdownload_registry": str(registry),
        "template_name": extra.pop("name", "disk"),
        "deploy_claim_delay": 1,
        "deploy_download_retries": 0,
    }
    extra_vars.update(extra)
    return run_playbook(
        PLAYBOOKS / "deploy_template.yml",
        inventory=inv,
        extra_vars=extra_vars,
        expect_rc=expect_rc,
        timeout=timeout,
        extra_args=extra_args,
    )


# ---------------------------------------------------------------------------------------------------------------
# modules: check-mode triple, idempotence, diff
# ---------------------------------------------------------------------------------------------------------------


def test_template_module_check_real_check_idempotence_and_diff(run_module, tmp_path):
    registry = tmp_path / "state" / "registry.json"
    args = {
        "registry": str(registry),
        "name": "debian",
        "url": "https://user:pa55w0rd@m.example/debian.qcow2?sig=abcdef0123456789",
        "format": "qcow2",
        "checksum": "sha256:" + "ab" * 32,
        "http_headers": {"Authorization": SECRET},
        "size": 1000,
        "virtual_size": VIRTUAL,
        "checked_on": "kvm1",
    }

    pre, _unused = run_module("directdownload.kvm.template", args, check=True, diff=True)
    assert pre["status"] == "changed" and not registry.exists(), "check mode must not write"
    real, run = run_module("directdownload.kvm.template", args, diff=True)
    assert real["status"] == "changed"
    template = real["result"]["template"]
    assert template["state"] == "Ready" and template["download_state"] == "BYPASSED"
    assert template["status"] == "Bypassed Secondary Storage" and len(template["id"]) == 36
    assert template["http_headers"] == {"Authorization": "********"}
    assert real["result"]["diff"]["before"] == {} and real["result"]["diff"]["after"]["name"] == "debian"
    for output in (run.stdout, json.dumps(real)):
        assert (
            "integration-secret-token" not in output and "pa55w0rd" not in output and "abcdef0123456789" not in output
        )
    post, _unused = run_module("directdownload.kvm.template", args, check=True)
    assert post["status"] == "ok"
    again, _unused = run_module("directdownload.kvm.template", args)
    assert again["status"] == "ok" and again["result"]["template"]["id"] == template["id"]

    # private file, secret stored for the downloads
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600
    assert read_registry(registry)["templates"]["debian"]["http_headers"] == {"Authorization": SECRET}

    # other content: changed, shown in the diff, secret still masked; probing from another host with the same
    # size changes nothing
    changed, run = run_module(
        "directdownload.kvm.template",
        dict(args, http_headers={"Authorization": SECRET + "x"}, checked_on="kvm3"),
        diff=True,
    )
    # headers are probe-relevant: the probe facts that came with them are recorded too
    assert changed["status"] == "changed"
    assert changed["result"]["changed_fields"] == ["checked_at", "checked_on", "http_headers"]
    assert changed["result"]["diff"]["after"]["http_headers"] == {"Authorization": "******** (changed)"}
    assert "integration-secret-token" not in run.stdout
    same, _unused = run_module(
        "directdownload.kvm.template", dict(args, http_headers={"Authorization": SECRET + "x"}, checked_on="kvm2")
    )
    assert same["status"] == "ok"

    # absent: check, real, check
    gone_args = {"registry": str(registry), "name": "debian", "state": "absent"}
    assert run_module("directdownload.kvm.template", gone_args, check=True)[0]["status"] == "changed"
    assert "debian" in read_registry(registry)["templates"]
    assert run_module("directdownload.kvm.template", gone_args, diff=True)[0]["status"] == "changed"
    assert run_module("directdownload.kvm.template", gone_args, check=True)[0]["status"] == "ok"
    assert read_registry(registry)["templates"] == {}


@pytest.mark.parametrize(
    "args, message",
    [
        ({"url": "https://m.example/debian.vhd"}, "please specify a valid qcow2 URL"),
        ({"checksum": "{SHA-256}abc"}, "a SHA-256 checksum has 64 hex characters, got 3"),
        ({"size": 0}, "size is 0 or unknown"),
        ({"direct_download": False}, "only direct download templates are supported"),
        ({"hypervisor": "vmware"}, "only allowed for KVM templates"),
        ({"format": "iso"}, "invalid for the format iso"),
    ],
)
def test_template_module_refuses_bad_input(run_module, tmp_path, args, message):
    base = {
        "registry": str(tmp_path / "registry.json"),
        "name": "t",
        "url": "https://m.example/t.qcow2",
        "format": "qcow2",
        "size": 10,
    }
    record, _unused = run_module("directdownload.kvm.template", dict(base, **args))
    assert record["status"] == "failed"
    assert message in record["result"]["msg"]
    assert not (tmp_path / "registry.json").exists()


def test_registry_errors_reach_the_operator(run_module, tmp_path):
    registry = tmp_path / "registry.json"
    registry.write_text('{"schema_version": 1, "templates": {')
    record, _unused = run_module(
        "directdownload.kvm.template",
        {"registry": str(registry), "name": "t", "url": "https://m.example/t.qcow2", "format": "qcow2", "size": 1},
    )
    assert record["status"] == "failed" and "is not valid JSON" in record["result"]["msg"]
    assert registry.read_text() == '{"schema_version": 1, "templates": {'
    registry.write_text('{"schema_version": 99}')
    record, _unused = run_module("directdownload.kvm.template_info", {"registry": str(registry)})
    assert record["status"] == "failed" and "newer than this collection understands" in record["result"]["msg"]


def test_template_copy_and_info_check_real_check(run_module, tmp_path):
    registry = str(tmp_path / "registry.json")
    template, _unused = run_module(
        "directdownload.kvm.template",
        {
            "registry": registry,
            "name": "t",
            "size": 10,
            "url": "https://m.example/t.qcow2",
            "format": "qcow2",
            "http_headers": {"X-Token": SECRET},
        },
    )
    template_id = template["result"]["template"]["id"]
    args = {
        "registry": registry,
        "template": "t",
        "host": "kvm1",
        "pool": "/pool",
        "install_path": "/pool/" + template_id,
        "size": 100,
        "virtual_size": VIRTUAL,
        "checksum": "{SHA-256}" + "a" * 64,
    }
    assert run_module("directdownload.kvm.template_copy", args, check=True)[0]["status"] == "changed"
    assert read_registry(registry)["copies"] == []
    real, _unused = run_module("directdownload.kvm.template_copy", args, diff=True)
    assert real["status"] == "changed"
    copy = real["result"]["template_copy"]
    assert (copy["template_id"], copy["state"], copy["download_state"]) == (template_id, "Ready", "DOWNLOADED")
    assert real["result"]["diff"]["before"] == {} and real["result"]["diff"]["after"]["host"] == "kvm1"
    assert run_module("directdownload.kvm.template_copy", args, check=True)[0]["status"] == "ok"
    assert run_module("directdownload.kvm.template_copy", args)[0]["status"] == "ok"

    # info: never changes anything, in or out of check mode; filters; secrets masked unless asked
    info_args = {"registry": registry, "host": "kvm1"}
    results = [
        run_module("directdownload.kvm.template_info", info_args, check=check)[0] for check in (True, False, True)
    ]
    assert [r["status"] for r in results] == ["ok", "ok", "ok"]
    info = results[1]["result"]
    assert [c["host"] for c in info["copies"]] == ["kvm1"] and info["exists"] is True
    assert info["templates"][0]["http_headers"] == {"X-Token": "********"}
    assert (
        run_module("directdownload.kvm.template_info", {"registry": registry, "host": "kvm9"})[0]["result"]["copies"]
        == []
    )
    revealed, run = run_module(
        "directdownload.kvm.template_info", {"registry": registry, "name": "t", "reveal_secrets": True}
    )
    assert revealed["result"]["template"]["http_headers"] == {"X-Token": SECRET}

    # absent by id, check-mode triple
    gone = {"registry": registry, "template_id": template_id, "host": "kvm1", "pool": "/pool", "state": "absent"}
    assert [
        run_module("directdownload.kvm.template_copy", gone, check=c)[0]["status"] for c in (True, False, True)
    ] == ["changed", "changed", "ok"]


def test_template_copy_needs_a_registered_template(run_module, tmp_path):
    record, _unused = run_module(
        "directdownload.kvm.template_copy",
        {"registry": str(tmp_path / "r.json"), "template": "nope", "host": "h", "pool": "p", "install_path": "/p/x"},
    )
    assert record["status"] == "failed" and "no template nope in the registry" in record["result"]["msg"]


def test_lookup_returns_the_record_masked(run_playbook, tmp_path, run_module):
    registry = str(tmp_path / "registry.json")
    run_module(
        "directdownload.kvm.template",
        {
            "registry": registry,
            "name": "t",
            "size": 10,
            "format": "qcow2",
            "url": "https://m.example/t.qcow2",
            "http_headers": {"X-Token": SECRET},
        },
    )
    run = run_playbook(
        [
            {
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": [
                    {
                        "name": "Look up",
                        "ansible.builtin.set_fact": {
                            "found": "{{ lookup('directdownload.kvm.template', 't', registry='%s') }}" % registry,
                            "missing": "{{ lookup('directdownload.kvm.template', 'nope', registry='%s', missing='empty') }}"
                            % registry,
                        },
                    },
                ],
            }
        ]
    )
    facts = task(run, "Look up")["result"]["ansible_facts"]
    assert facts["found"]["name"] == "t" and facts["found"]["http_headers"] == {"X-Token": "********"}
    assert facts["missing"] == {}


def test_url_check_module_is_read_only_and_reports(run_module, mirror, mirror_root):
    args = {"url": mirror.url("disk.qcow2.gz"), "format": "qcow2"}
    results = [run_module("directdownload.kvm.url_check", args, check=check)[0] for check in (True, False, True)]
    assert [r["status"] for r in results] == ["ok", "ok", "ok"]
    result = results[1]["result"]
    assert result["reachable"] is True and result["virtual_size"] == VIRTUAL
    assert result["size"] == os.path.getsize(mirror_root / "disk.qcow2.gz") and result["compression"] == "gzip"
    unreachable, _unused = run_module(
        "directdownload.kvm.url_check", {"url": mirror.url("missing.qcow2"), "format": "qcow2"}
    )
    assert unreachable["status"] == "ok" and unreachable["result"]["reachable"] is False
    assert "HTTP 404" in unreachable["result"]["error"]
    failing, _unused = run_module(
        "directdownload.kvm.url_check", {"url": mirror.url("missing.qcow2"), "fail_on_unreachable": True}
    )
    assert failing["status"] == "failed" and "cannot reach" in failing["result"]["msg"]


# ---------------------------------------------------------------------------------------------------------------
# registration flow
# ---------------------------------------------------------------------------------------------------------------


def probe_records(run):
    return tasks_starting(run, "Probe the URL from kvm")


def test_register_good_url_then_rerun_changes_nothing_and_probes_nothing(run_playbook, tmp_path, mirror):
    inv = inventory(tmp_path, local_pools(tmp_path, ["kvm1", "kvm2", "kvm3"]))
    registry = tmp_path / "registry.json"
    first = register(run_playbook, inv, registry, mirror.url("disk.qcow2.gz"))
    probes = probe_records(first)
    assert len(probes) == 1 and probes[0]["result"]["reachable"] is True
    template = task(first, "Register the template")["result"]["template"]
    assert task(first, "Register the template")["status"] == "changed"
    assert template["virtual_size"] == VIRTUAL and template["size"] > 0
    assert template["checked_on"] in ("kvm1", "kvm2", "kvm3")

    second = register(run_playbook, inv, registry, mirror.url("disk.qcow2.gz"))
    assert second.changed_tasks() == []
    assert probe_records(second) == []
    assert read_registry(registry)["templates"]["disk"]["id"] == template["id"]


def test_register_reachable_only_from_the_third_host(run_playbook, tmp_path, mirror_root):
    """kvm1 and kvm2 trust only an empty trust directory (the mirror's CA was never uploaded to them); kvm3 has the
    CA as directdownload_ca_path. The probe order is fixed with probe_hosts so that the third host is the one."""
    ca = TestCA()
    empty_trust = tmp_path / "empty-trust.d"
    empty_trust.mkdir()
    hosts = local_pools(tmp_path, ["kvm1", "kvm2", "kvm3"])
    hosts["kvm1"]["directdownload_trust_dir"] = str(empty_trust)
    hosts["kvm2"]["directdownload_trust_dir"] = str(empty_trust)
    hosts["kvm3"]["directdownload_trust_dir"] = str(empty_trust)
    hosts["kvm3"]["directdownload_ca_path"] = ca.ca_pem_path(tmp_path)
    inv = inventory(tmp_path, hosts)
    registry = tmp_path / "registry.json"
    with ImageServer(mirror_root, ssl_context=ca.server_context()) as server:
        run = register(
            run_playbook,
            inv,
            registry,
            server.url("disk.qcow2"),
            probe_hosts=["kvm1", "kvm2", "kvm3"],
            template_http_headers={"Authorization": SECRET},
        )
        requests = list(server.requests)
    probes = probe_records(run)
    assert [(r["task"][-4:], r["result"]["reachable"]) for r in probes] == [
        ("kvm1", False),
        ("kvm2", False),
        ("kvm3", True),
    ]
    assert "certificate" in probes[0]["result"]["error"].lower()
    template = task(run, "Register the template")["result"]["template"]
    assert template["checked_on"] == "kvm3" and template["virtual_size"] == VIRTUAL
    # the template's headers were sent on the probe (CloudStack never sends them), and never shown
    assert requests and all(r.headers.get("authorization") == SECRET for r in requests)
    assert "integration-secret-token" not in run.stdout


def test_register_reachable_from_none_names_every_host(run_playbook, tmp_path, mirror):
    inv = inventory(tmp_path, local_pools(tmp_path, ["kvm1", "kvm2", "kvm3", "kvm4"]))
    registry = tmp_path / "registry.json"
    run = register(run_playbook, inv, registry, mirror.url("missing.qcow2"), expect_rc=2)
    failure = task(run, "Fail when no host could reach the URL")
    msg = failure["result"]["msg"]
    probes = probe_records(run)
    assert len(probes) == 3, "up to three distinct hosts, not all four"
    tried = [r["task"][-4:] for r in probes]
    assert len(set(tried)) == 3
    for host in tried:
        assert "%s: %s answered HTTP 404" % (host, mirror.url("missing.qcow2")) in msg
    assert "validation failed on every host tried (3)" in msg
    assert not registry.exists() or read_registry(registry)["templates"] == {}


@pytest.mark.parametrize(
    "name, extra, message",
    [
        ("disk.vhd", {}, "please specify a valid qcow2 URL"),
        ("disk.qcow2", {"template_checksum": "{SHA-256}0123"}, "a SHA-256 checksum has 64 hex characters, got 4"),
        ("disk.qcow2", {"template_checksum": "{SHA-256}" + "g" * 64}, "must be hexadecimal"),
    ],
)
def test_register_refuses_bad_input_before_probing(run_playbook, tmp_path, mirror, name, extra, message):
    inv = inventory(tmp_path, local_pools(tmp_path, ["kvm1"]))
    run = register(run_playbook, inv, tmp_path / "registry.json", mirror.url(name), expect_rc=2, **extra)
    assert message in task(run, "Validate the registration (nothing written, no host contacted)")["result"]["msg"]
    assert probe_records(run) == [] and mirror.requests == []


def test_register_refuses_size_zero(run_playbook, tmp_path, mirror):
    inv = inventory(tmp_path, local_pools(tmp_path, ["kvm1"]))
    registry = tmp_path / "registry.json"
    run = register(run_playbook, inv, registry, mirror.url("empty.raw"), expect_rc=2, format="raw")
    assert "size is 0 or unknown" in task(run, "Register the template")["result"]["msg"]
    assert not registry.exists() or read_registry(registry)["templates"] == {}
    allowed = register(
        run_playbook, inv, registry, mirror.url("empty.raw"), format="raw", template_allow_unknown_size=True
    )
    assert task(allowed, "Register the template")["status"] == "changed"


def test_register_refuses_a_url_that_serves_another_format(run_playbook, tmp_path, mirror):
    inv = inventory(tmp_path, local_pools(tmp_path, ["kvm1"]))
    registry = tmp_path / "registry.json"
    run = register(run_playbook, inv, registry, mirror.url("disk.img"), expect_rc=2, format="raw")
    assert (
        "serves a qcow2 image (kvm1 read its first bytes), not raw"
        in task(run, "Refuse a URL that serves another format")["result"]["msg"]
    )
    assert not registry.exists() or read_registry(registry)["templates"] == {}


# ---------------------------------------------------------------------------------------------------------------
# deploy flow
# ---------------------------------------------------------------------------------------------------------------


def registered(run_playbook, tmp_path, mirror, hosts, groups=None, probe_host=None, **extra):
    """Inventory with ``hosts``, and the template ``disk`` (the gzip qcow2) registered, probed from ``probe_host``
    (default the first host). The mirror's request log is cleared afterwards."""
    inv = inventory(tmp_path, hosts, groups)
    registry = tmp_path / "registry.json"
    register(
        run_playbook, inv, registry, mirror.url("disk.qcow2.gz"), probe_hosts=[probe_host or next(iter(hosts))], **extra
    )
    template = read_registry(registry)["templates"]["disk"]
    mirror.clear_requests()
    return inv, registry, template


def test_deploy_two_hosts_local_pools_then_nothing_to_do(run_playbook, tmp_path, mirror):
    inv, registry, template = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1", "kvm2"]))
    run = deploy(run_playbook, inv, registry)
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 2
    copies = read_registry(registry)["copies"]
    expected = [("kvm1", str(tmp_path / "pool-kvm1")), ("kvm2", str(tmp_path / "pool-kvm2"))]
    assert sorted((c["host"], c["pool"]) for c in copies) == expected
    for copy in copies:
        assert copy["install_path"] == str(tmp_path / ("pool-" + copy["host"]) / template["id"])
        assert Path(copy["install_path"]).is_file()
        assert copy["virtual_size"] == VIRTUAL and copy["format"] == "qcow2" and copy["state"] == "Ready"
        assert copy["checksum"].startswith("{SHA-256}")
    assert read_registry(registry)["claims"] == []
    assert {r["host"] for r in task_records(run, "Record the copy")} == {"kvm1", "kvm2"}

    again = deploy(run_playbook, inv, registry)
    assert again.changed_tasks() == []
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 2, "the second run downloads nothing"
    assert tasks_starting(again, "Download the template into") == []


def test_deploy_check_real_check(run_playbook, tmp_path, mirror):
    inv, registry, template = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1"]))
    extra = {"directdownload_registry": str(registry), "template_name": "disk"}
    image = tmp_path / "pool-kvm1" / template["id"]

    pre = run_playbook(PLAYBOOKS / "deploy_template.yml", inventory=inv, check=True, extra_vars=extra)
    assert task(pre, "Record the copy", host="kvm1")["status"] == "changed"
    assert image_gets(mirror, "disk.qcow2.gz") == [] and not image.exists()
    assert read_registry(registry)["copies"] == [] and read_registry(registry)["claims"] == []

    real = run_playbook(PLAYBOOKS / "deploy_template.yml", inventory=inv, extra_vars=extra)
    assert task(real, "Record the copy", host="kvm1")["status"] == "changed" and image.is_file()

    post = run_playbook(PLAYBOOKS / "deploy_template.yml", inventory=inv, check=True, extra_vars=extra)
    assert post.changed_tasks() == [] and len(image_gets(mirror, "disk.qcow2.gz")) == 1

    # check mode notices a vanished file too
    image.unlink()
    vanished = run_playbook(PLAYBOOKS / "deploy_template.yml", inventory=inv, check=True, extra_vars=extra)
    assert task(vanished, "Record the copy", host="kvm1")["status"] == "changed"
    assert len(read_registry(registry)["copies"]) == 1 and len(image_gets(mirror, "disk.qcow2.gz")) == 1


def test_deploy_shared_pool_rotates_when_the_first_host_cannot_reach_the_mirror(
    run_playbook, tmp_path, mirror, dead_proxy
):
    shared = tmp_path / "shared-pool"
    shared.mkdir()
    pools = [{"path": str(shared), "name": "nfs-primary", "shared": True, "cluster": "cluster1"}]
    hosts = {name: {"directdownload_pools": pools} for name in ("kvm1", "kvm2", "kvm3")}
    hosts["kvm1"]["directdownload_proxy"] = dead_proxy  # kvm1's network path to the mirror is broken
    inv, registry, _unused = registered(
        run_playbook, tmp_path, mirror, hosts, groups={"cluster1": ["kvm1", "kvm2", "kvm3"]}, probe_host="kvm2"
    )
    run = deploy(run_playbook, inv, registry, deploy_hosts="kvm1")
    attempts = tasks_starting(run, "Download the template into the pool on")
    assert attempts[0]["task"].endswith("kvm1") and attempts[0]["status"] == "failed"
    assert "127.0.0.1" in attempts[0]["result"]["msg"]
    assert len(attempts) == 2 and attempts[1]["status"] == "changed"
    downloader = attempts[1]["task"][-4:]
    assert downloader in ("kvm2", "kvm3")
    copies = read_registry(registry)["copies"]
    assert len(copies) == 1 and copies[0]["host"] == downloader and copies[0]["shared"] is True
    assert copies[0]["pool"] == "nfs-primary" and Path(copies[0]["install_path"]).parent == shared
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 1

    # every host of the cluster now sees the shared copy: nothing more to download
    everyone = deploy(run_playbook, inv, registry)
    assert everyone.changed_tasks() == [] and len(image_gets(mirror, "disk.qcow2.gz")) == 1
    for host in ("kvm1", "kvm2", "kvm3"):
        assert task(everyone, "Show what was done", host=host)["result"]["msg"] == [
            "nfs-primary | present | " + downloader
        ]


def test_deploy_checksum_mismatch_stops_without_rotation(run_playbook, tmp_path, mirror):
    shared = tmp_path / "shared-pool"
    shared.mkdir()
    pools = [{"path": str(shared), "name": "nfs-primary", "shared": True, "cluster": "cluster1"}]
    hosts = {name: {"directdownload_pools": pools} for name in ("kvm1", "kvm2", "kvm3")}
    inv, registry, _unused = registered(
        run_playbook,
        tmp_path,
        mirror,
        hosts,
        groups={"cluster1": ["kvm1", "kvm2", "kvm3"]},
        template_checksum="sha256:" + "0" * 64,
    )
    run = deploy(run_playbook, inv, registry, deploy_hosts="kvm1", expect_rc=2)
    attempts = tasks_starting(run, "Download the template into the pool on")
    assert [a["task"][-4:] for a in attempts] == ["kvm1"], "a checksum mismatch is not retried on other hosts"
    assert attempts[0]["result"]["retryable"] is False
    failure = task(run, "Fail when no host could download the template", host="kvm1")["result"]["msg"]
    assert "after trying kvm1 (stopped: the error is not retryable on another host)" in failure
    assert read_registry(registry)["copies"] == [] and read_registry(registry)["claims"] == [], "claim released"
    assert [p.name for p in shared.iterdir() if not p.name.startswith(".")] == []


def test_deploy_vanished_copy_is_downloaded_again(run_playbook, tmp_path, mirror):
    inv, registry, template = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1", "kvm2"]))
    deploy(run_playbook, inv, registry)
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 2
    vanished = tmp_path / "pool-kvm1" / template["id"]
    vanished.unlink()
    run = deploy(run_playbook, inv, registry)
    assert task(run, "Forget the recorded copy whose file has vanished", host="kvm1")["status"] == "changed"
    assert task(run, "Forget the recorded copy whose file has vanished", host="kvm2")["status"] == "skipped"
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 3
    assert vanished.is_file()
    assert len(read_registry(registry)["copies"]) == 2


def shared_pool_hosts(tmp_path, names):
    """Hosts that all mount one shared pool directory ``nfs-primary``, their cluster group being ``cluster1``."""
    shared = tmp_path / "shared-pool"
    shared.mkdir()
    pools = [{"path": str(shared), "name": "nfs-primary", "shared": True, "cluster": "cluster1"}]
    return shared, {name: {"directdownload_pools": pools} for name in names}


# A deployment that waited for its neighbour in the same play used to hang the play (the linear strategy keeps the
# claim holder from its download while the other host retries): a run that does not finish well within this fails.
NO_HANG_TIMEOUT = 120


def test_hosts_of_one_play_sharing_a_pool_download_once(run_playbook, tmp_path, mirror):
    names = ["kvm1", "kvm2", "kvm3"]
    shared, hosts = shared_pool_hosts(tmp_path, names)
    inv, registry, template = registered(run_playbook, tmp_path, mirror, hosts, groups={"cluster1": names})
    run = deploy(run_playbook, inv, registry, timeout=NO_HANG_TIMEOUT)
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 1, "one download for the three hosts"
    copies = read_registry(registry)["copies"]
    assert len(copies) == 1 and read_registry(registry)["claims"] == []
    downloader = copies[0]["host"]
    assert copies[0]["install_path"] == str(shared / template["id"]) and Path(copies[0]["install_path"]).is_file()
    assert [r["host"] for r in task_records(run, "Record the copy")] == [downloader]
    for host in names:
        status = "downloaded" if host == downloader else "present"
        report = task(run, "Show what was done", host=host)["result"]["msg"]
        assert report == ["nfs-primary | %s | %s" % (status, downloader)]


def test_host_of_one_play_downloads_when_its_neighbour_holding_the_claim_fails(
    run_playbook, tmp_path, mirror, dead_proxy
):
    """kvm1 cannot reach the mirror and may not rotate to another host (deploy_other_hosts=0). With one fork the
    hosts run each task in inventory order, so kvm1 takes the claim first; kvm2 finds it busy, and once kvm1 failed
    and released it, kvm2 downloads the template itself."""
    names = ["kvm1", "kvm2"]
    _shared, hosts = shared_pool_hosts(tmp_path, names)
    hosts["kvm1"]["directdownload_proxy"] = dead_proxy
    inv, registry, _unused = registered(
        run_playbook, tmp_path, mirror, hosts, groups={"cluster1": names}, probe_host="kvm2"
    )
    run = deploy(
        run_playbook,
        inv,
        registry,
        expect_rc=2,
        timeout=NO_HANG_TIMEOUT,
        extra_args=["--forks", "1"],
        deploy_other_hosts=0,
    )
    assert task(run, "Claim the download onto the pool", host="kvm1")["result"]["claim_status"] == "granted"
    assert task(run, "Claim the download onto the pool", host="kvm2")["result"]["claim_status"] == "busy"
    assert task(run, "Release the claim so that another deployment can try", host="kvm1")["status"] == "changed"
    waited = task(run, "Wait while a deployment of another run downloads the template onto the pool", host="kvm2")
    assert waited["result"]["claim_status"] == "granted"
    assert task(run, "Record the copy", host="kvm2")["status"] == "changed"
    assert task(run, "Show what was done", host="kvm2")["result"]["msg"] == ["nfs-primary | downloaded | kvm2"]
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 1
    copies = read_registry(registry)["copies"]
    assert [c["host"] for c in copies] == ["kvm2"] and read_registry(registry)["claims"] == []


def claim_for_a_dead_deployment(run_module, registry, template):
    """A claim of the download of ``template`` onto nfs-primary by another run that crashed: it expires soon."""
    stale = {
        "registry": str(registry),
        "template_id": template["id"],
        "host": "kvm9",
        "pool": "nfs-primary",
        "shared": True,
        "state": "claimed",
        "holder": "deploy_template run of a controller that crashed",
        # still held when the play claims (ansible-playbook takes seconds to start, more on a busy machine)
        "claim_ttl": 20,
    }
    assert run_module("directdownload.kvm.template_copy", stale)[0]["result"]["claim_status"] == "granted"


def test_hosts_of_one_play_take_over_the_expired_claim_of_a_dead_deployment_once(
    run_playbook, run_module, tmp_path, mirror
):
    """Another run claimed the download and died: both hosts of this play wait for its claim to expire, then one of
    them downloads and the other finds its copy (it does not wait for its neighbour)."""
    names = ["kvm1", "kvm2"]
    _shared, hosts = shared_pool_hosts(tmp_path, names)
    inv, registry, template = registered(run_playbook, tmp_path, mirror, hosts, groups={"cluster1": names})
    claim_for_a_dead_deployment(run_module, registry, template)
    run = deploy(run_playbook, inv, registry, timeout=NO_HANG_TIMEOUT)
    for host in names:
        assert task(run, "Claim the download onto the pool", host=host)["result"]["claim_status"] == "busy"
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 1
    copies = read_registry(registry)["copies"]
    assert len(copies) == 1 and read_registry(registry)["claims"] == []
    downloader = copies[0]["host"]
    other = "kvm2" if downloader == "kvm1" else "kvm1"
    waits = "Wait while a deployment of another run downloads the template onto the pool"
    assert task(run, waits, host=downloader)["result"]["claim_status"] == "granted"
    assert task(run, waits, host=other)["result"]["claim_status"] == "busy", "not waiting for its neighbour"
    found = task(run, "Find the copy that another host of this play downloaded after waiting", host=other)
    assert found["status"] == "ok" and found["result"]["copies"][0]["host"] == downloader
    for host, status in ((downloader, "downloaded"), (other, "present")):
        report = task(run, "Show what was done", host=host)["result"]["msg"]
        assert report == ["nfs-primary | %s | %s" % (status, downloader)]


def test_host_of_one_play_fails_clearly_when_its_neighbour_took_over_the_claim_and_failed(
    run_playbook, run_module, tmp_path, mirror, dead_proxy
):
    """Neither host can reach the mirror. Both wait for the dead deployment's claim; with one fork kvm1 takes it over
    and fails; kvm2, which did not wait for kvm1, finds no copy and says who held the claim."""
    names = ["kvm1", "kvm2"]
    _shared, hosts = shared_pool_hosts(tmp_path, names)
    inv, registry, template = registered(run_playbook, tmp_path, mirror, hosts, groups={"cluster1": names})
    for host in names:
        hosts[host]["directdownload_proxy"] = dead_proxy
    inv = inventory(tmp_path, hosts, {"cluster1": names})
    claim_for_a_dead_deployment(run_module, registry, template)
    run = deploy(
        run_playbook,
        inv,
        registry,
        expect_rc=2,
        timeout=NO_HANG_TIMEOUT,
        extra_args=["--forks", "1"],
        deploy_other_hosts=0,
    )
    assert "could not be downloaded" in task(run, "Fail with the reason", host="kvm1")["result"]["msg"]
    failure = task(run, "Fail when the host of this play that claimed the download recorded no copy", host="kvm2")
    assert "claimed its download and did not record a copy" in failure["result"]["msg"]
    assert " for kvm1 " in failure["result"]["msg"]
    assert image_gets(mirror, "disk.qcow2.gz") == []
    assert read_registry(registry)["copies"] == [] and read_registry(registry)["claims"] == []


def test_two_concurrent_deploys_of_one_template_to_one_pool_download_once(run_playbook, tmp_path, mirror):
    inv, registry, _unused = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1"]))
    # slow the image down so that both runs overlap: the second must wait for the first one's claim
    mirror.set_fault("/disk.qcow2.gz", rate=1 * MiB)
    extra = {"directdownload_registry": str(registry), "template_name": "disk", "deploy_claim_delay": 1}
    runs = {}

    def run_in(name):
        runs[name] = run_playbook_in(
            tmp_path / name, PLAYBOOKS / "deploy_template.yml", inventory=inv, extra_vars=extra, expect_rc=None
        )

    threads = [threading.Thread(target=run_in, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert all(run.rc == 0 for run in runs.values()), [run.output_tail() for run in runs.values()]
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 1, "exactly one download"
    downloads = [name for name, run in runs.items() if task_records(run, "Record the copy", host="kvm1")]
    assert len(downloads) == 1
    assert task(runs[downloads[0]], "Record the copy", host="kvm1")["status"] == "changed"
    waiter = runs["second" if downloads == ["first"] else "first"]
    report = task(waiter, "Show what was done", host="kvm1")["result"]["msg"]
    assert report == [str(tmp_path / "pool-kvm1") + " | present | kvm1"]
    assert len(read_registry(registry)["copies"]) == 1 and read_registry(registry)["claims"] == []


# ---------------------------------------------------------------------------------------------------------------
# unregister flow
# ---------------------------------------------------------------------------------------------------------------


def test_unregister_keeps_copies_then_purge_by_id_deletes_them(run_playbook, tmp_path, mirror):
    inv, registry, template = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1", "kvm2"]))
    deploy(run_playbook, inv, registry)
    files = [tmp_path / ("pool-" + h) / template["id"] for h in ("kvm1", "kvm2")]
    assert all(f.is_file() for f in files)

    run = run_playbook(
        PLAYBOOKS / "unregister_template.yml",
        inventory=inv,
        extra_vars={"directdownload_registry": str(registry), "template_name": "disk"},
    )
    assert task(run, "Unregister the template")["status"] == "changed"
    doc = read_registry(registry)
    assert doc["templates"] == {} and len(doc["copies"]) == 2 and all(f.is_file() for f in files)

    purge = run_playbook(
        PLAYBOOKS / "unregister_template.yml",
        inventory=inv,
        extra_vars={"directdownload_registry": str(registry), "template_id": template["id"], "purge": True},
    )
    assert len(task_records(purge, "Delete the copies from their pools")) == 1
    assert read_registry(registry)["copies"] == [] and not any(f.exists() for f in files)
    assert not any(
        p.name.endswith(".ddinfo.json") for h in ("kvm1", "kvm2") for p in (tmp_path / ("pool-" + h)).iterdir()
    )


def test_unregister_with_purge_deletes_files_and_records(run_playbook, tmp_path, mirror):
    inv, registry, template = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1", "kvm2"]))
    deploy(run_playbook, inv, registry)
    extra = {"directdownload_registry": str(registry), "template_name": "disk", "purge": True}
    run = run_playbook(PLAYBOOKS / "unregister_template.yml", inventory=inv, extra_vars=extra)
    assert task(run, "Unregister the template")["status"] == "changed"
    doc = read_registry(registry)
    assert doc["templates"] == {} and doc["copies"] == []
    assert not (tmp_path / "pool-kvm1" / template["id"]).exists()
    assert not (tmp_path / "pool-kvm2" / template["id"]).exists()
    again = run_playbook(PLAYBOOKS / "unregister_template.yml", inventory=inv, extra_vars=extra)
    assert again.changed_tasks() == []
