# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""template_copy's waiter (state=claimed with wait_timeout) and state=finished, over a real registry file.

The waiter's clock and sleep are injected so that the test controls time: a fake sleep advances the fake clock, and
can act as the other run (release its claim) at a chosen moment. Everything else is real: the registry file, its
lock, the transactions."""

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
from ansible_collections.directdownload.kvm.plugins.modules import template_copy


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


def hold(registry, run_id="other", host="kvm1"):
    """Another run takes the claim."""
    with registry.transaction() as doc:
        return template_copy.claim(doc, params(host=host, run_id=run_id))


def test_the_waiter_returns_busy_at_its_timeout_after_polling_every_delay(registry):
    hold(registry)
    fake = FakeTime()
    result = template_copy.claim_waiting(registry, params(wait_timeout=12, wait_delay=5), False, fake.sleep, fake.clock)
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
    result = template_copy.claim_waiting(registry, params(wait_timeout=3600, wait_delay=5), False, fake.sleep,
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
            template_copy.finish(doc, params(host="kvm1", state="finished", run_id="other", acquired=other,
                                             attempts=attempts), False)

    fake = FakeTime(on_sleep=other_run_records)
    result = template_copy.claim_waiting(registry, params(wait_timeout=60), False, fake.sleep, fake.clock)
    assert result["action"] == "present" and result["template_copy"]["host"] == "kvm1"
    assert result["claim_status"] == "exists" and registry.read()["claims"] == []


def test_a_claim_of_the_same_run_is_never_waited_for(registry):
    hold(registry, run_id="mine", host="kvm1")
    fake = FakeTime()
    result = template_copy.claim_waiting(registry, params(wait_timeout=3600), False, fake.sleep, fake.clock)
    assert result["action"] == "same_run" and fake.sleeps == [] and result["timed_out"] is False


def test_check_mode_neither_waits_nor_claims(registry):
    hold(registry)
    fake = FakeTime()
    busy = template_copy.claim_waiting(registry, params(wait_timeout=3600), True, fake.sleep, fake.clock)
    assert busy["action"] == "busy" and fake.sleeps == [] and busy["timed_out"] is False
    free = template_copy.claim_waiting(registry, params(pool="q"), True, fake.sleep, fake.clock)
    assert free["action"] == "download" and [c["pool"] for c in registry.read()["claims"]] == ["p"]


def test_finished_needs_the_result_of_the_claim(registry):
    with pytest.raises(template_copy.InvalidInput, match="state=finished needs acquired"):
        template_copy.run_once(registry, params(state="finished", acquired={"changed": False}), False)


def test_finished_in_check_mode_writes_nothing(registry):
    acquired = template_copy.run_once(registry, params(), False)
    before = registry.read()
    result = template_copy.run_once(registry, params(state="finished", acquired=acquired, attempts=[
        {"item": "kvm2", "changed": True, "path": "/p/x", "bytes_downloaded": 0}]), True)
    assert result["report"]["status"] == "would download" and result["changed"] is True
    assert registry.read() == before
