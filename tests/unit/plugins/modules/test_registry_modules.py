# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What is left in the registry modules (template, template_copy, template_info, certificate_registry): the
argument specs (format in any case, the shared registry option), the results and diffs they build, and the shape
of their failures (_module.failures). The states themselves are tested in module_utils/test_records.py."""

from __future__ import annotations

import json

from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
from ansible_collections.directdownload.kvm.plugins.modules import (
    certificate_registry,
    template,
    template_copy,
    template_info,
)

URL = "https://m.example/debian-12.qcow2"


def register(run, path, **extra):
    args = {"registry": str(path), "name": "debian-12", "url": URL, "format": "qcow2", "size": 5}
    args.update(extra)
    return run(template, args)


def test_template_takes_the_format_as_cloudstack_writes_it(tmp_path, run):
    path = tmp_path / "registry.json"
    result = register(run, path, format="QCOW2")
    assert result["changed"] is True and result["template"]["format"] == "qcow2"
    assert register(run, path, format="qcow2")["changed"] is False, "QCOW2 and qcow2 are the same template"
    refused = register(run, path, format="vmdk")
    assert refused["failed"] is True and "format must be one of qcow2, raw, iso" in refused["msg"]
    assert (refused["retry_here"], refused["retry_elsewhere"], refused["registry"]) == (False, False, str(path))


def test_template_diff_and_check_mode(tmp_path, run):
    path = tmp_path / "registry.json"
    would = run(template, {"registry": str(path), "name": "t", "url": URL, "format": "qcow2", "size": 5,
                           "headers": {"X-Key": "s3cret"}}, check_mode=True, diff=True)
    assert would["changed"] is True and not path.exists(), "check mode writes nothing"
    assert would["diff"]["before"] == {} and would["diff"]["after"]["name"] == "t"
    assert "s3cret" not in json.dumps(would["diff"])
    register(run, path)
    gone = run(template, {"registry": str(path), "name": "debian-12", "state": "absent"}, diff=True)
    assert gone["changed"] is True and gone["changed_fields"] == ["state"] and gone["diff"]["after"] == {}
    again = run(template, {"registry": str(path), "name": "debian-12", "state": "absent"})
    assert again["changed"] is False and again["copies"] == [] and "template" not in again


def test_template_copy_format_diff_and_failure_shape(tmp_path, run):
    path = tmp_path / "registry.json"
    register(run, path)
    args = {"registry": str(path), "template": "debian-12", "host": "kvm1", "pool": "p", "install_path": "/p/x",
            "format": "RAW"}
    recorded = run(template_copy, args, diff=True)
    assert recorded["changed"] is True and recorded["template_copy"]["format"] == "raw"
    assert recorded["diff"] == {"before": {}, "after": recorded["template_copy"]} and "before" not in recorded
    missing = run(template_copy, dict(args, template="nope"))
    assert missing["failed"] is True and "no template nope" in missing["msg"]
    assert (missing["retry_here"], missing["retry_elsewhere"], missing["registry"]) == (False, False, str(path))


def test_template_copy_claim_in_check_mode_takes_nothing(tmp_path, run):
    path = tmp_path / "registry.json"
    register(run, path)
    args = {"registry": str(path), "template": "debian-12", "host": "kvm1", "pool": "p", "state": "claimed"}
    would = run(template_copy, args, check_mode=True)
    assert (would["action"], would["claim_status"], would["timed_out"]) == ("download", "granted", False)
    assert reg.Registry(str(path)).read()["claims"] == []


def test_template_info_selects_and_fails_like_every_module(tmp_path, run):
    path = tmp_path / "registry.json"
    register(run, path)
    found = run(template_info, {"registry": str(path), "name": "debian-12"})
    assert found["exists"] is True and found["template"]["name"] == "debian-12" and found["registry"] == str(path)
    path.write_text("{not json")
    broken = run(template_info, {"registry": str(path)})
    assert broken["failed"] is True and "left untouched" in broken["msg"]
    assert (broken["retry_here"], broken["retry_elsewhere"], broken["registry"]) == (False, False, str(path))


def test_certificate_registry_status_without_a_certificate_fails_with_the_alias(tmp_path, run):
    path = tmp_path / "registry.json"
    failed = run(certificate_registry, {"registry": str(path), "alias": "CA", "host": "kvm1", "status": "UPLOADED"})
    assert failed["failed"] is True and "record it (content or src)" in failed["msg"]
    assert (failed["alias"], failed["registry"], failed["retry_elsewhere"]) == ("CA", str(path), False)
    read_only = run(certificate_registry, {"registry": str(path), "alias": "ca"})
    assert read_only["changed"] is False and read_only["exists"] is False and not path.exists()
    unreadable = run(certificate_registry, {"registry": str(path), "alias": "ca", "src": str(tmp_path / "none.pem")})
    assert unreadable["failed"] is True and "cannot read the certificate file" in unreadable["msg"]
    assert unreadable["path"] == str(tmp_path / "none.pem")
