# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""``certificate`` and ``certificate_registry`` run in this process as Ansible runs them (arguments from
``basic._ANSIBLE_ARGS``, result on stdout): a certificate that cannot sign is refused unless ``allow_non_ca``."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils import basic

from ansible_collections.directdownload.kvm.plugins.modules import certificate, certificate_registry
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA, make_self_signed_server_pem


def run_module(module, args, capsys, monkeypatch):
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode())
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def leaves():
    """A lazy mirror's self-signed server certificate (no basicConstraints), and a CA-issued leaf (CA:FALSE)."""
    return {"self-signed": make_self_signed_server_pem()[0], "issued": TestCA().issue_cert_pem()[0]}


@pytest.mark.parametrize("kind, words", [("self-signed", "no basicConstraints"), ("issued", "CA:FALSE")])
def test_certificate_refuses_a_leaf_unless_pinned(tmp_path, capsys, monkeypatch, leaves, kind, words):
    trust = tmp_path / "trust"
    args = {"alias": "mirror", "content": leaves[kind], "manage_keystore": False, "trust_dir": str(trust)}
    refused = run_module(certificate, args, capsys, monkeypatch)
    assert refused["failed"] is True and "cannot sign other certificates" in refused["msg"] and words in refused["msg"]
    assert not trust.exists()
    pinned = run_module(certificate, dict(args, allow_non_ca=True), capsys, monkeypatch)
    assert pinned["changed"] is True and pinned["trust_dir"] == "imported" and pinned["is_ca"] is False
    assert (trust / "mirror.pem").exists()


def test_certificate_registry_refuses_a_leaf_unless_pinned(tmp_path, capsys, monkeypatch, leaves):
    registry = tmp_path / "registry.json"
    args = {"registry": str(registry), "alias": "mirror", "content": leaves["self-signed"]}
    refused = run_module(certificate_registry, args, capsys, monkeypatch)
    assert refused["failed"] is True and "allow_non_ca=true" in refused["msg"]
    assert not registry.exists()
    recorded = run_module(certificate_registry, dict(args, allow_non_ca=True), capsys, monkeypatch)
    assert recorded["changed"] is True and recorded["certificate"]["is_ca"] is False
    ca = run_module(certificate_registry, dict(args, alias="ca", content=TestCA().cert_pem), capsys, monkeypatch)
    assert ca["changed"] is True and ca["certificate"]["is_ca"] is True
