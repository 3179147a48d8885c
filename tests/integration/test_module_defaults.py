# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The module_defaults groups of meta/runtime.yml through a real ``ansible-playbook`` run: each group carries an
option its members share, set once in ``module_defaults`` and used by every member (the earlier single group
could carry no key at all: no option was accepted by all eight modules)."""

from __future__ import annotations

import json

import yaml

from ansible_collections.directdownload.kvm.tests.integration.conftest import REPO_ROOT
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import make_ca_certificate_pem

TOKEN = "group-token-5e1f-not-in-output"


def test_runtime_groups_are_the_documented_ones():
    groups = yaml.safe_load((REPO_ROOT / "meta" / "runtime.yml").read_text())["action_groups"]
    assert groups == {
        "registry": ["template", "template_copy", "template_info", "certificate_registry"],
        "transfer": ["download", "url_check"],
        "certificates": ["certificate", "certificate_info"],
    }


def test_each_group_carries_a_shared_option(run_playbook, tmp_path, www, pool):
    image = www / "disk.qcow2"
    images.qcow2(str(image), size=8 * 1024 * 1024, writes=[(0, 65536, 0x5A)])
    registry = tmp_path / "state" / "registry.json"
    trust_dir = tmp_path / "trust.d"
    ca_pem = make_ca_certificate_pem(common_name="module_defaults test CA")
    with ImageServer(www) as server:
        server.set_fault("/disk.qcow2", require_headers={"X-Token": TOKEN})
        play = {
            "hosts": "all",
            "gather_facts": False,
            "module_defaults": {
                "group/directdownload.kvm.registry": {"registry": str(registry)},
                "group/directdownload.kvm.transfer": {"headers": {"X-Token": TOKEN}},
                "group/directdownload.kvm.certificates": {"trust_dir": str(trust_dir),
                                                          "keystore": str(tmp_path / "no-keystore.jks")},
            },
            "tasks": [
                {"name": "Probe", "register": "probe",
                 "directdownload.kvm.url_check": {"url": server.url("disk.qcow2"), "fail_on_unreachable": True}},
                {"name": "Download", "register": "downloaded",
                 "directdownload.kvm.download": {"url": server.url("disk.qcow2"), "pool_path": str(pool)}},
                {"name": "Register", "directdownload.kvm.template": {
                    "name": "t", "url": server.url("disk.qcow2"), "format": "qcow2",
                    "size": "{{ probe.size }}", "virtual_size": "{{ probe.virtual_size }}"}},
                {"name": "Record the copy", "directdownload.kvm.template_copy": {
                    "template": "t", "host": "localhost", "pool": str(pool), "install_path": "{{ downloaded.path }}"}},
                {"name": "Record the CA", "directdownload.kvm.certificate_registry": {
                    "alias": "group-ca", "content": ca_pem}},
                {"name": "Read", "directdownload.kvm.template_info": {"name": "t"}},
                {"name": "Trust the CA", "directdownload.kvm.certificate": {
                    "alias": "group-ca", "content": ca_pem, "manage_keystore": False}},
                {"name": "List the trust", "directdownload.kvm.certificate_info": {"include_keystore": False}},
            ],
        }
        run = run_playbook([play])
    statuses = {name: run.task(name)["status"] for name in (
        "Probe", "Download", "Register", "Record the copy", "Record the CA", "Read", "Trust the CA",
        "List the trust")}
    assert statuses == {"Probe": "ok", "Download": "changed", "Register": "changed", "Record the copy": "changed",
                        "Record the CA": "changed", "Read": "ok", "Trust the CA": "changed",
                        "List the trust": "ok"}, run.stdout
    # transfer: both members sent the header the server demands
    assert all(r.headers.get("x-token") == TOKEN for r in server.requests_for("/disk.qcow2"))
    assert run.task("Probe")["result"]["reachable"] is True
    # registry: every member used the one registry file
    doc = json.loads(registry.read_text())
    assert list(doc["templates"]) == ["t"] and len(doc["copies"]) == 1 and list(doc["certificates"]) == ["group-ca"]
    read = run.task("Read")["result"]
    assert read["registry"] == str(registry) and read["template"]["name"] == "t"
    assert [c["alias"] for c in read["certificates"]] == ["group-ca"]
    # certificates: both members used the trust directory of the group
    assert sorted(p.name for p in trust_dir.iterdir() if not p.name.startswith("."))
    listed = run.task("List the trust")["result"]
    assert "group-ca" in json.dumps(listed) and str(trust_dir) in json.dumps(listed)
    assert TOKEN not in run.stdout
