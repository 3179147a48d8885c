# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_records: template_copy's states and waiter (state=claimed with wait_timeout), certificate_registry's states and
template_info's view, over a real registry file.

The waiter's clock and sleep are injected so that the test controls time: a fake sleep advances the fake clock, and
can act as the other run (release its claim) at a chosen moment. Everything else is real: the registry file, its
lock, the transactions."""

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
from ansible_collections.directdownload.kvm.plugins.module_utils import _records
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput


class FakeTime:
    def __init__(self, on_sleep=None):
        self.now = 0.0
        self.sleeps = []
        self.on_sleep = on_sleep

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(len(self.sleeps))


def params(**overrides):
    base = {"template": "t", "template_id": None, "host": "kvm2", "pool": "p", "shared": True, "state": "claimed",
            "install_path": None, "size": None, "virtual_size": None, "checksum": None, "format": None,
            "claim_token": None, "claim_ttl": 3600, "holder": None, "run_id": "mine", "wait_timeout": 0,
            "wait_delay": 5.0, "acquired": None, "attempts": []}
    base.update(overrides)
    return base


@pytest.fixture(name="registry")
def registry_fixture(tmp_path):
    registry = reg.Registry(str(tmp_path / "registry.json"))
    with registry.transaction() as doc:
        reg.upsert_template(doc, {"name": "t", "url": "https://m.example/t.qcow2", "format": "qcow2", "size": 1})
    return registry


def run_once(registry, wanted, check_mode):
    return registry.apply(lambda doc: _records.copy_state(doc, wanted, check_mode), check_mode)


def hold(registry, run_id="other", host="kvm1"):
    """Another run takes the claim."""
    with registry.transaction() as doc:
        return _records.state_claimed(doc, params(host=host, run_id=run_id))


def test_the_waiter_returns_busy_at_its_timeout_after_polling_every_delay(registry):
    hold(registry)
    fake = FakeTime()
    result = _records.claim_waiting(registry, params(wait_timeout=12, wait_delay=5), False, fake.sleep, fake.clock)
    assert (result["action"], result["timed_out"], result["waited"]) == ("busy", True, 12.0)
    assert fake.sleeps == [5, 5, 2], "the last sleep ends at the timeout"
    assert len(registry.read()["claims"]) == 1


def test_the_waiter_takes_the_claim_once_the_other_run_released_it(registry):
    other = hold(registry)

    def other_run_gives_up(count):
        if count == 3:
            with registry.transaction() as doc:
                reg.release_claim(doc, other["claim"]["token"])

    fake = FakeTime(on_sleep=other_run_gives_up)
    result = _records.claim_waiting(registry, params(wait_timeout=3600, wait_delay=5), False, fake.sleep,
                                    fake.clock)
    outcome = (result["action"], result["timed_out"], result["waited"], result["changed"])
    assert outcome == ("download", False, 15.0, True)
    [claim] = registry.read()["claims"]
    assert (claim["run_id"], claim["host"]) == ("mine", "kvm2")


def test_the_waiter_finds_the_copy_the_other_run_recorded(registry):
    other = hold(registry)

    def other_run_records(count):
        with registry.transaction() as doc:
            attempts = [{"item": "kvm1", "changed": True, "path": "/p/x", "bytes_downloaded": 5}]
            _records.state_finished(doc, params(host="kvm1", state="finished", run_id="other", acquired=other,
                                                attempts=attempts), False)

    fake = FakeTime(on_sleep=other_run_records)
    result = _records.claim_waiting(registry, params(wait_timeout=60), False, fake.sleep, fake.clock)
    assert result["action"] == "present" and result["template_copy"]["host"] == "kvm1"
    assert result["claim_status"] == "exists" and registry.read()["claims"] == []


def test_a_claim_of_the_same_run_is_never_waited_for(registry):
    hold(registry, run_id="mine", host="kvm1")
    fake = FakeTime()
    result = _records.claim_waiting(registry, params(wait_timeout=3600), False, fake.sleep, fake.clock)
    assert result["action"] == "same_run" and fake.sleeps == [] and result["timed_out"] is False


def test_check_mode_neither_waits_nor_claims(registry):
    hold(registry)
    fake = FakeTime()
    busy = _records.claim_waiting(registry, params(wait_timeout=3600), True, fake.sleep, fake.clock)
    assert busy["action"] == "busy" and fake.sleeps == [] and busy["timed_out"] is False
    free = _records.claim_waiting(registry, params(pool="q"), True, fake.sleep, fake.clock)
    assert free["action"] == "download" and [c["pool"] for c in registry.read()["claims"]] == ["p"]


def test_finished_needs_the_result_of_the_claim(registry):
    with pytest.raises(InvalidInput, match="state=finished needs acquired"):
        run_once(registry, params(state="finished", acquired={"changed": False}), False)


def test_finished_in_check_mode_writes_nothing(registry):
    acquired = run_once(registry, params(), False)
    before = registry.read()
    result = run_once(registry, params(state="finished", acquired=acquired, attempts=[
        {"item": "kvm2", "changed": True, "path": "/p/x", "bytes_downloaded": 0}]), True)
    assert result["report"]["status"] == "would download" and result["changed"] is True
    assert registry.read() == before


def test_present_records_the_copy_and_releases_the_claim_in_one_write(registry):
    acquired = run_once(registry, params(), False)
    token = acquired["claim"]["token"]
    result = run_once(registry, params(state="present", install_path="/p/t", size=5, format=None,
                                       claim_token=token), False)
    assert result["changed"] is True and result["before"] is None
    assert result["template_copy"]["format"] == "qcow2", "the template's format when the copy names none"
    doc = registry.read()
    assert doc["claims"] == [] and [c["install_path"] for c in doc["copies"]] == ["/p/t"]
    again = run_once(registry, params(state="present", install_path="/p/t", size=5), False)
    assert again["changed"] is False and again["before"] == again["template_copy"]
    assert _records.copy_diff("present", again) == {"before": again["before"], "after": again["template_copy"]}


def test_present_needs_an_install_path_and_a_registered_template(registry):
    with pytest.raises(InvalidInput, match="needs install_path"):
        run_once(registry, params(state="present"), False)
    with pytest.raises(InvalidInput, match="no template nope in the registry"):
        run_once(registry, params(state="present", template="nope", install_path="/x"), False)


def test_absent_finds_the_copies_of_an_unregistered_template_by_id(registry):
    run_once(registry, params(state="present", install_path="/p/t"), False)
    template_id = registry.read()["copies"][0]["template_id"]
    with registry.transaction() as doc:
        reg.remove_template(doc, name="t")
    gone = run_once(registry, params(state="absent", template=None, template_id=template_id), False)
    assert gone["changed"] is True and gone["template_copy"]["install_path"] == "/p/t" and "template" not in gone
    assert _records.copy_diff("absent", gone) == {"before": gone["before"], "after": {}}
    assert registry.read()["copies"] == []
    assert run_once(registry, params(state="absent", template=None, template_id=template_id), False)["changed"] is False


def test_released_drops_the_claim_once(registry):
    token = run_once(registry, params(), False)["claim"]["token"]
    first = run_once(registry, params(state="released", claim_token=token), False)
    second = run_once(registry, params(state="released", claim_token=token), False)
    assert (first["changed"], first["claim"]["token"]) == (True, token)
    assert (second["changed"], second["claim"]) == (False, {})
    with pytest.raises(InvalidInput, match="needs claim_token"):
        _records.copy_state(registry.read(), params(state="released"))


def test_check_mode_writes_nothing_for_every_state(registry):
    before = registry.read()
    for state in ("present", "claimed"):
        run_once(registry, params(state=state, install_path="/p/t"), True)
    assert registry.read() == before
    with pytest.raises(InvalidInput, match="state must be one of"):
        _records.copy_state(before, params(state="bogus"))


def cert_params(**overrides):
    base = {"state": "present", "host": None, "status": None, "details": None, "fingerprint": None}
    base.update(overrides)
    return base


def test_certificate_state_records_a_status_only_for_the_fingerprint_of_the_registry():
    doc = reg.empty_document()
    record = ("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
              {"fingerprint_sha256": "AB:CD", "subject": "CN=ca", "hypervisor": "KVM"})
    before, after = _records.certificate_state(doc, cert_params(), "ca", record)
    assert before is None and after["fingerprint"] == "AB:CD" and "pem" not in after
    assert _records.certificate_writes(cert_params(), record) is True
    assert _records.certificate_writes(cert_params(), None) is False, "nothing given: only a read"
    with pytest.raises(InvalidInput, match="status not recorded"):
        _records.certificate_state(doc, cert_params(host="kvm1", status="UPLOADED", fingerprint="EF:01"), "ca", None)
    _before, after = _records.certificate_state(doc, cert_params(host="kvm1", status="UPLOADED", fingerprint="ab:cd"),
                                                "ca", None)
    assert after["hosts"]["kvm1"]["status"] == "UPLOADED" and after["hosts"]["kvm1"]["details"] == "OK"
    _before, after = _records.certificate_state(doc, cert_params(host="kvm2", status="FAILED"), "ca", None)
    assert after["hosts"]["kvm2"]["details"] is None, "a failure has no default details"
    before, after = _records.certificate_state(doc, cert_params(state="absent"), "ca", None)
    assert before["fingerprint"] == "AB:CD"
    assert after is None and doc["certificates"] == {}
    with pytest.raises(InvalidInput, match="record it"):
        _records.certificate_state(doc, cert_params(host="kvm1", status="UPLOADED"), "ca", None)


@pytest.mark.parametrize("value", ["kvm", "KVM", " Kvm "])
def test_hypervisor_is_kvm_in_any_case(value):
    assert _records.hypervisor(value) == "KVM"


def test_hypervisor_other_than_kvm_is_refused():
    with pytest.raises(InvalidInput, match="only the KVM hypervisor"):
        _records.hypervisor("xen")


def test_select_filters_templates_copies_claims_and_masks_headers(registry):
    with registry.transaction() as doc:
        reg.upsert_template(doc, {"name": "u", "url": "https://m.example/u.qcow2", "format": "qcow2", "size": 1,
                                  "http_headers": {"X-Key": "s3cret"}})
    run_once(registry, params(state="present", install_path="/p/t"), False)
    run_once(registry, params(template="u", state="present", host="kvm1", install_path="/p/u"), False)
    run_once(registry, params(template="u", pool="q"), False)
    doc = registry.read()
    everything = _records.select(doc)
    assert sorted(t["name"] for t in everything["templates"]) == ["t", "u"] and "template" not in everything
    assert len(everything["copies"]) == 2 and len(everything["claims"]) == 1
    assert "s3cret" not in repr(everything)
    only_u = _records.select(doc, name="u")
    assert only_u["template"]["name"] == "u" and [c["host"] for c in only_u["copies"]] == ["kvm1"]
    assert [c["pool"] for c in only_u["claims"]] == ["q"]
    assert "s3cret" in repr(_records.select(doc, name="u", reveal_secrets=True)["template"])
    on_kvm2 = _records.select(doc, host="kvm2", pool="p")
    assert [c["template_name"] for c in on_kvm2["copies"]] == ["t"] and on_kvm2["claims"] == []
    assert _records.select(doc, template_id="gone")["copies"] == [] and everything["schema_version"] == 1
