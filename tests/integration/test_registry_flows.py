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

import itertools
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import yaml

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


def task(run, name, host=None):
    """The one result record of the task ``name`` (module tests only: flows are checked by what they did)."""
    found = [r for r in run.results if name in (r["task"], r.get("name")) and (host is None or r["host"] == host)]
    assert len(found) == 1, "expected one result for %r (host=%s), got %d\n%s" % (
        name,
        host,
        len(found),
        run.output_tail(),
    )
    return found[0]


def loop_items(run, action, host=None):
    """The items that ran (not skipped) of every loop task running the module ``action``, in run order; each item
    gets ``tried_on`` (its loop variable: the host it was delegated to) and ``play_host``."""
    items = []
    for record in run.results:
        if record["action"] != action or (host is not None and record["host"] != host):
            continue
        for item in record["result"].get("results", []):
            if item.get("skipped"):
                continue
            items.append(dict(item, tried_on=item.get(item.get("ansible_loop_var", "item")), play_host=record["host"]))
    return items


def probes(run):
    """The url_check probes, in order."""
    return loop_items(run, "directdownload.kvm.url_check")


def download_attempts(run, host=None):
    """The download attempts for the pools of ``host`` (every host when None), in order."""
    return loop_items(run, "directdownload.kvm.download", host)


def claims(run, host):
    """The decisions template_copy state=claimed returned for ``host``, in order (action: present, download, busy,
    same_run)."""
    return [r["result"] for r in run.results
            if r["host"] == host and r["action"] == "directdownload.kvm.template_copy" and "action" in r["result"]]


def failure_messages(run):
    return [r["result"].get("msg", "") for r in run.failed_tasks()]


def rows_by_host(run):
    """{host: report row} of a deployment of one pool per host (the JSON report the role wrote)."""
    rows = {}
    for row in run.report:
        assert row["host"] not in rows, "one row per host x pool"
        rows[row["host"]] = row
    return rows


def register(run_playbook, inv, registry, url, expect_rc=0, **extra):
    extra_vars = {
        "directdownload_registry": str(registry),
        "template_name": extra.pop("name", "disk"),
        "template_url": url,
        "template_format": extra.pop("format", "qcow2"),
    }
    extra_vars.update(extra)
    return run_playbook(PLAYBOOKS / "register_template.yml", inventory=inv, extra_vars=extra_vars, expect_rc=expect_rc)


def deploy(run_playbook, inv, registry, expect_rc=0, timeout=900, extra_args=(), check=False, **extra):
    """Run deploy_template.yml; ``run.report`` holds the rows of the JSON report the role wrote."""
    report = Path(registry).parent / ("report-%s.json" % next(_REPORTS))
    extra_vars = {
        "directdownload_registry": str(registry),
        "template_name": extra.pop("name", "disk"),
        "deploy_claim_delay": 1,
        "deploy_download_retries": 0,
        "deploy_report_path": str(report),
    }
    extra_vars.update(extra)
    run = run_playbook(
        PLAYBOOKS / "deploy_template.yml",
        inventory=inv,
        extra_vars=extra_vars,
        expect_rc=expect_rc,
        timeout=timeout,
        extra_args=extra_args,
        check=check,
    )
    run.report = json.loads(report.read_text()) if report.exists() else None
    return run


_REPORTS = itertools.count()


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
    # One name per idea: `headers` as in download and url_check (http_headers is its alias), hypervisor in any case
    by_new_name = {k: v for k, v in args.items() if k != "http_headers"}
    renamed, _unused = run_module("directdownload.kvm.template", dict(
        by_new_name, headers={"Authorization": SECRET + "x"}, checked_on="kvm2", hypervisor="KVM"))
    assert renamed["status"] == "ok", renamed["result"]
    assert renamed["result"]["template"]["hypervisor"] == "kvm"

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


def test_register_good_url_then_rerun_changes_nothing_and_probes_nothing(run_playbook, tmp_path, mirror):
    inv = inventory(tmp_path, local_pools(tmp_path, ["kvm1", "kvm2", "kvm3"]))
    registry = tmp_path / "registry.json"
    first = register(run_playbook, inv, registry, mirror.url("disk.qcow2.gz"))
    tried = probes(first)
    assert len(tried) == 1 and tried[0]["reachable"] is True, "the loop stops at the first host that reaches it"
    template = read_registry(registry)["templates"]["disk"]
    assert template["virtual_size"] == VIRTUAL and template["size"] > 0
    assert template["checked_on"] == tried[0]["tried_on"] and template["checked_on"] in ("kvm1", "kvm2", "kvm3")
    assert first.changed_tasks() != []

    second = register(run_playbook, inv, registry, mirror.url("disk.qcow2.gz"))
    assert second.changed_tasks() == []
    assert probes(second) == []
    assert read_registry(registry)["templates"]["disk"] == template


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
    tried = probes(run)
    assert [(r["tried_on"], r["reachable"]) for r in tried] == [("kvm1", False), ("kvm2", False), ("kvm3", True)]
    assert "certificate" in tried[0]["error"].lower()
    template = read_registry(registry)["templates"]["disk"]
    assert template["checked_on"] == "kvm3" and template["virtual_size"] == VIRTUAL
    # the template's headers were sent on the probe (CloudStack never sends them), and never shown
    assert requests and all(r.headers.get("authorization") == SECRET for r in requests)
    assert "integration-secret-token" not in run.stdout


def test_register_reachable_from_none_names_every_host(run_playbook, tmp_path, mirror):
    inv = inventory(tmp_path, local_pools(tmp_path, ["kvm1", "kvm2", "kvm3", "kvm4"]))
    registry = tmp_path / "registry.json"
    run = register(run_playbook, inv, registry, mirror.url("missing.qcow2"), expect_rc=2)
    [msg] = failure_messages(run)
    tried = [r["tried_on"] for r in probes(run)]
    assert len(tried) == 3 and len(set(tried)) == 3, "up to three distinct hosts, not all four"
    for host in tried:
        assert "%s: %s answered HTTP 404" % (host, mirror.url("missing.qcow2")) in msg
    assert "validation failed on every host tried (3)" in msg
    assert not registry.exists() or read_registry(registry)["templates"] == {}


def test_register_probes_past_a_host_that_cannot_be_reached(run_playbook, tmp_path, mirror):
    """kvm1 is down (its SSH port is closed): the probe goes on to kvm2, and kvm1 is named as unreachable."""
    hosts = local_pools(tmp_path, ["kvm1", "kvm2"])
    inv = inventory(tmp_path, hosts)
    doc = json.loads(Path(inv).read_text())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    doc["all"]["children"]["kvm_hosts"]["hosts"]["kvm1"].update(
        ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=closed_port)
    Path(inv).write_text(json.dumps(doc))
    registry = tmp_path / "registry.json"
    run = register(run_playbook, inv, registry, mirror.url("disk.qcow2.gz"), probe_hosts=["kvm1", "kvm2"])
    tried = probes(run)
    assert [r["tried_on"] for r in tried] == ["kvm1", "kvm2"]
    assert tried[0]["unreachable"] is True and tried[1]["reachable"] is True
    assert read_registry(registry)["templates"]["disk"]["checked_on"] == "kvm2"


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
    [msg] = failure_messages(run)
    assert message in msg
    assert probes(run) == [] and mirror.requests == []


def test_register_refuses_size_zero(run_playbook, tmp_path, mirror):
    inv = inventory(tmp_path, local_pools(tmp_path, ["kvm1"]))
    registry = tmp_path / "registry.json"
    run = register(run_playbook, inv, registry, mirror.url("empty.raw"), expect_rc=2, format="raw")
    [msg] = failure_messages(run)
    assert "size is 0 or unknown" in msg
    assert not registry.exists() or read_registry(registry)["templates"] == {}
    register(run_playbook, inv, registry, mirror.url("empty.raw"), format="raw", template_allow_unknown_size=True)
    assert read_registry(registry)["templates"]["disk"]["size"] in (0, None)


def test_register_refuses_a_url_that_serves_another_format(run_playbook, tmp_path, mirror):
    inv = inventory(tmp_path, local_pools(tmp_path, ["kvm1"]))
    registry = tmp_path / "registry.json"
    run = register(run_playbook, inv, registry, mirror.url("disk.img"), expect_rc=2, format="raw")
    [msg] = failure_messages(run)
    assert "serves a qcow2 image (kvm1 read its first bytes), not raw" in msg
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


def test_deploy_two_hosts_local_pools_then_nothing_to_do(run_playbook, tmp_path, mirror, mirror_root):
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
    # the report: one row per host x pool, with what moved and from where
    gz_size = os.path.getsize(mirror_root / "disk.qcow2.gz")
    rows = rows_by_host(run)
    for host in ("kvm1", "kvm2"):
        row = rows[host]
        assert (row["status"], row["downloaded_on"], row["pool"]) == ("downloaded", host, str(tmp_path / ("pool-" + host)))
        assert row["bytes"] == gz_size and row["seconds"] > 0 and row["rate_mb_s"] > 0 and row["resumed_from"] == 0
        assert row["source"] == mirror.url("disk.qcow2.gz")
        assert row["attempts"] == [{"host": host, "outcome": "ok", "error": None}]
    # ... and as a table in the play output
    table = [line for line in run.stdout.splitlines() if "  downloaded  " in line]
    assert "HOST  POOL" in run.stdout and len(table) == 2
    assert all("1.6 KiB" in line and "MB/s" in line and mirror.url("disk.qcow2.gz") in line for line in table)

    again = deploy(run_playbook, inv, registry)
    assert again.changed_tasks() == []
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 2, "the second run downloads nothing"
    assert [a["changed"] for a in download_attempts(again)] == [False, False], "the files were checked in place"
    assert {h: r["status"] for h, r in rows_by_host(again).items()} == {"kvm1": "present", "kvm2": "present"}
    assert all(r["bytes"] == 0 for r in again.report)


def test_deploy_origin_rate_is_shared_among_the_hosts_downloading_at_once(run_playbook, tmp_path, mirror):
    inv, registry, _template = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1", "kvm2"]))
    run = deploy(run_playbook, inv, registry, deploy_origin_rate="2M")
    attempts = download_attempts(run)
    assert len(attempts) == 2 and all(item.get("changed") for item in attempts), attempts
    # Two hosts in the batch (forks 5): each download gets half of the 2 MiB/s budget.
    assert [item["invocation"]["module_args"]["max_rate"] for item in attempts] == ["1048576", "1048576"]
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 2


def test_deploy_check_real_check(run_playbook, tmp_path, mirror):
    inv, registry, template = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1"]))
    image = tmp_path / "pool-kvm1" / template["id"]

    pre = deploy(run_playbook, inv, registry, check=True)
    assert [r["status"] for r in pre.report] == ["would download"]
    assert "would download" in pre.stdout
    assert image_gets(mirror, "disk.qcow2.gz") == [] and not image.exists()
    assert read_registry(registry)["copies"] == [] and read_registry(registry)["claims"] == []

    real = deploy(run_playbook, inv, registry)
    assert [r["status"] for r in real.report] == ["downloaded"] and image.is_file()

    post = deploy(run_playbook, inv, registry, check=True)
    assert post.changed_tasks() == [] and len(image_gets(mirror, "disk.qcow2.gz")) == 1
    assert [r["status"] for r in post.report] == ["present"]

    # check mode notices a vanished file too
    image.unlink()
    vanished = deploy(run_playbook, inv, registry, check=True)
    assert [r["status"] for r in vanished.report] == ["would download"]
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
    run = deploy(run_playbook, inv, registry, extra_args=["--limit", "kvm1"])
    attempts = download_attempts(run)
    assert attempts[0]["tried_on"] == "kvm1" and attempts[0]["failed"] and "127.0.0.1" in attempts[0]["msg"]
    assert len(attempts) == 2 and attempts[1]["changed"], "the loop stops at the first host that succeeds"
    downloader = attempts[1]["tried_on"]
    assert downloader in ("kvm2", "kvm3")
    copies = read_registry(registry)["copies"]
    assert len(copies) == 1 and copies[0]["host"] == downloader and copies[0]["shared"] is True
    assert copies[0]["pool"] == "nfs-primary" and Path(copies[0]["install_path"]).parent == shared
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 1
    [row] = run.report
    assert (row["host"], row["status"], row["downloaded_on"]) == ("kvm1", "downloaded", downloader)
    assert [(a["host"], a["outcome"]) for a in row["attempts"]] == [("kvm1", "failed"), (downloader, "ok")]
    assert "127.0.0.1" in row["attempts"][0]["error"]

    # every host of the cluster now sees the shared copy: nothing more to download
    everyone = deploy(run_playbook, inv, registry)
    assert everyone.changed_tasks() == [] and len(image_gets(mirror, "disk.qcow2.gz")) == 1
    assert {h: (r["status"], r["downloaded_on"]) for h, r in rows_by_host(everyone).items()} == {
        h: ("present", downloader) for h in ("kvm1", "kvm2", "kvm3")
    }


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
    run = deploy(run_playbook, inv, registry, extra_args=["--limit", "kvm1"], expect_rc=2)
    attempts = download_attempts(run)
    assert [a["tried_on"] for a in attempts] == ["kvm1"], "a checksum mismatch is not retried on other hosts"
    assert attempts[0]["retryable"] is False
    [row] = run.report
    assert row["status"] == "failed"
    assert "after trying kvm1 (stopped: the error is not retryable on another host)" in row["error"]
    assert failure_messages(run) == [row["error"]]
    assert read_registry(registry)["copies"] == [] and read_registry(registry)["claims"] == [], "claim released"
    assert [p.name for p in shared.iterdir() if not p.name.startswith(".")] == []


def test_deploy_reports_an_unreachable_host_as_unreachable(run_playbook, tmp_path, mirror):
    """kvm1 is down (its SSH port is closed) and may not rotate: its pool is reported unreachable, and kvm2 is
    deployed all the same."""
    inv, registry, _unused = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1", "kvm2"]))
    doc = json.loads(Path(inv).read_text())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    doc["all"]["children"]["kvm_hosts"]["hosts"]["kvm1"].update(
        ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=closed_port)
    Path(inv).write_text(json.dumps(doc))
    run = deploy(run_playbook, inv, registry, expect_rc=2)
    rows = rows_by_host(run)
    assert rows["kvm1"]["status"] == "unreachable" and rows["kvm1"]["attempts"][0]["outcome"] == "unreachable"
    assert rows["kvm2"]["status"] == "downloaded"
    assert [c["host"] for c in read_registry(registry)["copies"]] == ["kvm2"]
    assert read_registry(registry)["claims"] == []
    assert "unreachable" in run.stdout


def test_deploy_vanished_copy_is_downloaded_again(run_playbook, tmp_path, mirror):
    inv, registry, template = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1", "kvm2"]))
    deploy(run_playbook, inv, registry)
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 2
    vanished = tmp_path / "pool-kvm1" / template["id"]
    vanished.unlink()
    run = deploy(run_playbook, inv, registry)
    assert {h: r["status"] for h, r in rows_by_host(run).items()} == {"kvm1": "downloaded", "kvm2": "present"}
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
    for host, row in rows_by_host(run).items():
        assert (row["status"], row["downloaded_on"]) == ("downloaded" if host == downloader else "present", downloader)
    for host in names:
        if host != downloader:
            assert claims(run, host)[0]["action"] == "same_run", "a neighbour's claim is never waited for"


def test_host_of_one_play_downloads_when_its_neighbour_holding_the_claim_fails(
    run_playbook, tmp_path, mirror, dead_proxy
):
    """kvm1 cannot reach the mirror and may not rotate to another host (deploy_other_hosts=0). With one fork the
    hosts run each task in inventory order, so kvm1 takes the claim first; kvm2 finds it held by this run, and once
    kvm1 failed and released it, kvm2 downloads the template itself."""
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
    assert [c["action"] for c in claims(run, "kvm1")] == ["download"]
    assert [c["action"] for c in claims(run, "kvm2")] == ["same_run", "download"]
    rows = rows_by_host(run)
    assert rows["kvm1"]["status"] == "failed" and "could not be downloaded" in rows["kvm1"]["error"]
    assert (rows["kvm2"]["status"], rows["kvm2"]["downloaded_on"]) == ("downloaded", "kvm2")
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
        "run_id": "a-controller-that-crashed",
        "holder": "deploy_template run of a controller that crashed",
        # still held when the play claims (ansible-playbook takes seconds to start, more on a busy machine)
        "claim_ttl": 20,
    }
    assert run_module("directdownload.kvm.template_copy", stale)[0]["result"]["action"] == "download"


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
    assert len(image_gets(mirror, "disk.qcow2.gz")) == 1
    copies = read_registry(registry)["copies"]
    assert len(copies) == 1 and read_registry(registry)["claims"] == []
    downloader = copies[0]["host"]
    other = "kvm2" if downloader == "kvm1" else "kvm1"
    first, waited = claims(run, downloader)
    assert first["action"] == "busy" and waited["action"] == "download" and waited["waited"] > 0
    assert [c["action"] for c in claims(run, other)] == ["busy", "same_run"], "not waiting for its neighbour"
    rows = rows_by_host(run)
    assert (rows[downloader]["status"], rows[other]["status"]) == ("downloaded", "present")
    assert rows[other]["downloaded_on"] == downloader


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
    rows = rows_by_host(run)
    assert rows["kvm1"]["status"] == "failed" and "could not be downloaded" in rows["kvm1"]["error"]
    assert rows["kvm2"]["status"] == "failed"
    assert "kvm1 claimed its download in this run and did not record a copy" in rows["kvm2"]["error"]
    assert sorted(failure_messages(run)) == sorted([rows["kvm1"]["error"], rows["kvm2"]["error"]])
    assert image_gets(mirror, "disk.qcow2.gz") == []
    assert read_registry(registry)["copies"] == [] and read_registry(registry)["claims"] == []


def test_two_concurrent_deploys_of_one_template_to_one_pool_download_once(run_playbook, tmp_path, mirror):
    inv, registry, _unused = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1"]))
    # slow the image down so that both runs overlap: the second must wait for the first one's claim
    mirror.set_fault("/disk.qcow2.gz", rate=1 * MiB)
    runs, reports = {}, {}

    def run_in(name):
        reports[name] = tmp_path / (name + "-report.json")
        extra = {"directdownload_registry": str(registry), "template_name": "disk", "deploy_claim_delay": 1,
                 "deploy_report_path": str(reports[name])}
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
    statuses = sorted(json.loads(reports[name].read_text())[0]["status"] for name in runs)
    assert statuses == ["downloaded", "present"]
    waiter = [name for name in runs if json.loads(reports[name].read_text())[0]["status"] == "present"][0]
    decisions = claims(runs[waiter], "kvm1")
    assert [c["action"] for c in decisions] == ["busy", "present"] and decisions[1]["waited"] > 0
    assert len(read_registry(registry)["copies"]) == 1 and read_registry(registry)["claims"] == []


def test_claim_waits_inside_one_task_for_another_run(run_module, tmp_path):
    """The waiter polls inside one module run: it ends at its timeout with busy (the task does not fail), never
    waits for a claim of its own run, and takes the claim once the other run released it."""
    registry = str(tmp_path / "registry.json")
    run_module("directdownload.kvm.template", {"registry": registry, "name": "t", "size": 10, "format": "qcow2",
                                               "url": "https://m.example/t.qcow2"})
    base = {"registry": registry, "template": "t", "host": "kvm1", "pool": "p", "shared": True, "state": "claimed"}
    other = run_module("directdownload.kvm.template_copy", dict(base, run_id="other"))[0]["result"]
    assert other["action"] == "download" and other["claim"]["run_id"] == "other"
    timed_out = run_module("directdownload.kvm.template_copy",
                           dict(base, host="kvm2", run_id="mine", wait_timeout=1, wait_delay=0.2))[0]
    assert timed_out["status"] == "ok"
    assert (timed_out["result"]["action"], timed_out["result"]["timed_out"]) == ("busy", True)
    assert timed_out["result"]["waited"] >= 1
    same = run_module("directdownload.kvm.template_copy", dict(base, host="kvm2", run_id="other", wait_timeout=30))[0]
    assert same["result"]["action"] == "same_run" and same["result"]["waited"] < 1, "never waits for its own run"

    waiter = {}
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "Wait", "directdownload.kvm.template_copy": dict(base, host="kvm2", run_id="mine", wait_timeout=300,
                                                                 wait_delay=0.5)}]}]
    thread = threading.Thread(target=lambda: waiter.update(run=run_playbook_in(tmp_path / "waiter", play)))
    thread.start()
    try:
        # the waiter is polling (its run has started and not ended) when the other run gives up
        deadline = time.monotonic() + 120
        while not list((tmp_path / "waiter").glob("results-*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(10)  # ansible-playbook starting up, then polling
        assert thread.is_alive(), "the waiter must still be waiting"
        release = dict(base, state="released", claim_token=other["claim"]["token"])
        assert run_module("directdownload.kvm.template_copy", release)[0]["status"] == "changed"
    finally:
        thread.join(300)
    [record] = waiter["run"].results
    taken = record["result"]
    assert taken["action"] == "download" and taken["timed_out"] is False and taken["waited"] > 1
    [claim] = read_registry(registry)["claims"]
    assert (claim["run_id"], claim["host"], claim["token"]) == ("mine", "kvm2", taken["claim"]["token"])


# ---------------------------------------------------------------------------------------------------------------
# unregister flow
# ---------------------------------------------------------------------------------------------------------------


def test_unregister_keeps_copies_then_purge_by_id_deletes_them(run_playbook, tmp_path, mirror):
    inv, registry, template = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1", "kvm2"]))
    deploy(run_playbook, inv, registry)
    files = [tmp_path / ("pool-" + h) / template["id"] for h in ("kvm1", "kvm2")]
    assert all(f.is_file() for f in files)

    run_playbook(
        PLAYBOOKS / "unregister_template.yml",
        inventory=inv,
        extra_vars={"directdownload_registry": str(registry), "template_name": "disk"},
    )
    doc = read_registry(registry)
    assert doc["templates"] == {} and len(doc["copies"]) == 2 and all(f.is_file() for f in files)

    run_playbook(
        PLAYBOOKS / "unregister_template.yml",
        inventory=inv,
        extra_vars={"directdownload_registry": str(registry), "template_id": template["id"], "purge": True},
    )
    assert read_registry(registry)["copies"] == [] and not any(f.exists() for f in files)
    assert not any(
        p.name.endswith(".ddinfo.json") for h in ("kvm1", "kvm2") for p in (tmp_path / ("pool-" + h)).iterdir()
    )


def test_unregister_with_purge_deletes_files_and_records(run_playbook, tmp_path, mirror):
    inv, registry, template = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1", "kvm2"]))
    deploy(run_playbook, inv, registry)
    extra = {"directdownload_registry": str(registry), "template_name": "disk", "purge": True}
    run_playbook(PLAYBOOKS / "unregister_template.yml", inventory=inv, extra_vars=extra)
    doc = read_registry(registry)
    assert doc["templates"] == {} and doc["copies"] == []
    assert not (tmp_path / "pool-kvm1" / template["id"]).exists()
    assert not (tmp_path / "pool-kvm2" / template["id"]).exists()
    again = run_playbook(PLAYBOOKS / "unregister_template.yml", inventory=inv, extra_vars=extra)
    assert again.changed_tasks() == []


# ---------------------------------------------------------------------------------------------------------------
# one registry, set in the inventory only
# ---------------------------------------------------------------------------------------------------------------


def awx_inventory():
    """The inventory docs/awx.md shows (the first YAML block of its section 2)."""
    text = (REPO_ROOT / "docs" / "awx.md").read_text()
    section = text[text.index("## 2. Inventory"):]
    block = section[section.index("```yaml\n") + len("```yaml\n"):]
    return yaml.safe_load(block[:block.index("```")])


def test_every_playbook_uses_the_registry_set_in_the_inventory(run_playbook, tmp_path, mirror):
    """The AWX inventory of docs/awx.md, with local connections and paths: directdownload_registry and
    directdownload_registry_host are set there only (no -e). Upload a certificate, register, deploy, revoke and
    unregister: one registry file on the registry host holds all of it, and the default path stays empty."""
    doc = awx_inventory()
    top = doc["all"]["vars"]
    registry_host = top["directdownload_registry_host"]
    assert registry_host in doc["all"]["children"]["registry"]["hosts"]
    registry = tmp_path / "srv" / "registry.json"
    top["directdownload_registry"] = str(registry)
    kvm = doc["all"]["children"]["kvm_hosts"]
    names = list(kvm["hosts"])
    shared_dirs = {}
    for name in names:
        pools = []
        for pool in kvm["vars"]["directdownload_pools"]:
            if pool.get("shared"):
                path = shared_dirs.setdefault(pool["name"], tmp_path / ("shared-" + pool["name"]))
            else:
                path = tmp_path / ("%s-%s" % (name, pool["name"]))
            path.mkdir(exist_ok=True)
            local = {key: value for key, value in pool.items() if key != "libvirt_pool"}
            pools.append(dict(local, path=str(path)))
        (tmp_path / ("trust-" + name)).mkdir()
        kvm["hosts"][name] = {"directdownload_pools": pools, "certificates_manage_keystore": False,
                              "certificates_trust_dir": str(tmp_path / ("trust-" + name))}
    for group in doc["all"]["children"].values():
        for name in group["hosts"]:
            group["hosts"][name] = dict(group["hosts"][name] or {}, ansible_connection="local",
                                        ansible_python_interpreter=VENV_PYTHON)
    inv = tmp_path / "awx-inventory.yml"
    inv.write_text(yaml.safe_dump(doc))
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    ca = TestCA(common_name="Inventory Test CA")

    def play(name, **extra_vars):
        return run_playbook(PLAYBOOKS / name, inventory=inv, extra_vars=extra_vars, env=env)

    play("upload_certificate.yml", certificate_alias="mirror-ca", certificate_content=ca.cert_pem)
    play("register_template.yml", template_name="disk", template_url=mirror.url("disk.qcow2.gz"),
         template_format="qcow2")
    deployed = play("deploy_template.yml", template_name="disk")
    assert deployed.failed_tasks() == []

    held = read_registry(registry)
    template = held["templates"]["disk"]
    assert template["checked_on"] in names
    assert sorted((c["host"], c["pool"]) for c in held["copies"] if not c["shared"]) == [(n, "primary") for n in names]
    assert [c["pool"] for c in held["copies"] if c["shared"]] == ["nfs-primary"]
    assert all(Path(c["install_path"]).is_file() for c in held["copies"])
    assert {h: s["status"] for h, s in held["certificates"]["mirror-ca"]["hosts"].items()} == {
        n: "UPLOADED" for n in names}
    assert held["claims"] == []

    play("revoke_certificate.yml", certificate_alias="mirror-ca")
    assert {s["status"] for s in read_registry(registry)["certificates"]["mirror-ca"]["hosts"].values()} == {"REVOKED"}
    play("unregister_template.yml", template_name="disk", purge=True)
    after = read_registry(registry)
    assert after["templates"] == {} and after["copies"] == []
    assert not any(Path(c["install_path"]).exists() for c in held["copies"])

    default = home / ".local" / "state" / "directdownload"
    assert not default.exists() or list(default.iterdir()) == [], "nothing at the default registry path"
    assert sorted(p.name for p in registry.parent.iterdir()) == ["registry.json", "registry.json.lock"]


def test_deploy_passes_the_template_mirrors_on_to_download(run_playbook, run_module, tmp_path, mirror):
    inv, registry, template = registered(run_playbook, tmp_path, mirror, local_pools(tmp_path, ["kvm1"]))
    # The template URL now answers 404; the mirror recorded with it serves the same file.
    record = run_module("directdownload.kvm.template", {
        "registry": str(registry), "name": "disk", "url": mirror.url("gone/disk.qcow2.gz"), "format": "qcow2",
        "size": template["size"], "virtual_size": template["virtual_size"], "checksum": template.get("checksum"),
        "mirrors": [{"url": mirror.url("disk.qcow2.gz"), "priority": 1}]})[0]
    assert record["status"] == "changed", record["result"]
    assert read_registry(registry)["templates"]["disk"]["mirrors"] == [
        {"url": mirror.url("disk.qcow2.gz"), "priority": 1, "location": None}]
    run = deploy(run_playbook, inv, registry)
    [attempt] = download_attempts(run)
    assert attempt.get("changed"), attempt
    assert [entry["url"] for entry in attempt["sources"]] == [
        mirror.url("gone/disk.qcow2.gz"), mirror.url("disk.qcow2.gz")]
    assert attempt["sources"][1]["bytes"] > 0
    assert [r["status"] for r in run.report] == ["downloaded"]
