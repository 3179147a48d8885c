# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The fleet decisions over plain registry documents: acquire (present / download / busy / same run), finish
(record or release, report row, error summary), the attempts of a loop over hosts, the report table."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _fleet as fleet
from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg

NOW = reg.parse_timestamp("2026-01-31T12:00:00Z")
TEMPLATE = {"id": "tid-1", "name": "debian-12", "format": "qcow2", "url": "https://m.example/d.qcow2"}


def document(*copies, claims=()):
    doc = reg.empty_document()
    doc["templates"]["debian-12"] = dict(TEMPLATE)
    doc["copies"] = [dict(c) for c in copies]
    doc["claims"] = [dict(c) for c in claims]
    return doc


def a_copy(host="kvm1", pool="p", shared=False):
    return {"template_id": "tid-1", "template_name": "debian-12", "host": host, "pool": pool, "shared": shared,
            "install_path": "/pool/tid-1", "size": 10, "virtual_size": 100, "checksum": "{SHA-256}aa", "format": "qcow2",
            "state": "Ready", "download_state": "DOWNLOADED", "downloaded_at": "2026-01-30T00:00:00Z"}


def ok(host, changed=True, moved=1000, **extra):
    result = {"ansible_loop_var": "__deploy_candidate", "__deploy_candidate": host, "changed": changed,
              "path": "/pool/tid-1", "size": 2000, "virtual_size": 100, "checksum": "{SHA-256}bb", "format": "qcow2",
              "bytes_downloaded": moved, "resumed_from": 0, "elapsed": 2.0, "rate": 500000, "url": "https://m/d"}
    result.update(extra)
    return result


def failed(host, msg="connection refused", elsewhere=True):
    return {"ansible_loop_var": "__deploy_candidate", "__deploy_candidate": host, "failed": True, "msg": msg,
            "retry_elsewhere": elsewhere}


def unreachable(host):
    return {"ansible_loop_var": "__deploy_candidate", "__deploy_candidate": host, "unreachable": True,
            "msg": "ssh: connect to host port 22: Connection refused", "changed": False}


def take(doc, host="kvm1", pool="p", shared=False, run_id="run-a", now=NOW, ttl=3600, token=None):
    return fleet.acquire(doc, "tid-1", host, pool, shared=shared, run_id=run_id, holder="h " + host, ttl=ttl, now=now,
                         token=token)


# --------------------------------------------------------------------------------------------------------------
# acquire


def test_acquire_without_copy_or_claim_downloads_and_stores_the_run_in_the_claim():
    doc = document()
    decision = take(doc)
    assert decision["action"] == fleet.DOWNLOAD and decision["copy"] is None
    [claim] = doc["claims"]
    assert claim["run_id"] == "run-a" and claim["token"] == decision["claim"]["token"]
    assert decision["claim"]["run_id"] == "run-a" and claim["holder"] == "h kvm1"


def test_acquire_with_a_recorded_copy_is_present_and_claims_nothing():
    doc = document(a_copy())
    decision = take(doc)
    assert decision["action"] == fleet.PRESENT and decision["copy"]["install_path"] == "/pool/tid-1"
    assert decision["claim"] is None and doc["claims"] == []


def test_a_copy_on_a_shared_pool_is_present_for_every_host_but_a_local_one_only_for_its_host():
    shared = document(a_copy(host="kvm1", shared=True))
    assert take(shared, host="kvm2", shared=True)["action"] == fleet.PRESENT
    local = document(a_copy(host="kvm1"))
    assert take(local, host="kvm2")["action"] == fleet.DOWNLOAD


def test_acquire_a_claim_of_another_run_is_busy_and_of_this_run_same_run():
    doc = document()
    first = take(doc, host="kvm1", shared=True, run_id="run-a")
    other_run = take(doc, host="kvm2", shared=True, run_id="run-b")
    same_run = take(doc, host="kvm3", shared=True, run_id="run-a")
    assert other_run["action"] == fleet.BUSY and other_run["claim"]["token"] == first["claim"]["token"]
    assert same_run["action"] == fleet.SAME_RUN and same_run["claim"]["host"] == "kvm1"
    assert len(doc["claims"]) == 1
    assert not fleet.wait_over(other_run) and fleet.wait_over(same_run)


def test_the_run_is_a_field_never_read_from_the_holder_text():
    doc = document(claims=[{"template_id": "tid-1", "pool": "p", "host": "kvm9", "shared": True, "token": "t",
                            "holder": "deploy_template run run-a for kvm9", "claimed_at": "2026-01-31T11:00:00Z",
                            "expires_at": "2026-01-31T13:00:00Z"}])
    assert take(doc, host="kvm1", shared=True, run_id="run-a")["action"] == fleet.BUSY


def test_acquire_takes_over_an_expired_claim_and_regrants_the_callers_own_token():
    doc = document()
    old = take(doc, host="kvm1", shared=True, run_id="dead", ttl=60)
    later = take(doc, host="kvm2", shared=True, run_id="run-b", now=NOW + timedelta(seconds=61))
    assert later["action"] == fleet.DOWNLOAD and later["claim"]["token"] != old["claim"]["token"]
    assert [c["run_id"] for c in doc["claims"]] == ["run-b"]
    again = take(doc, host="kvm2", shared=True, run_id="run-b", token=later["claim"]["token"],
                 now=NOW + timedelta(seconds=62))
    assert again["action"] == fleet.DOWNLOAD and again["claim"]["token"] == later["claim"]["token"]
    assert len(doc["claims"]) == 1


def test_acquire_on_a_host_local_pool_does_not_see_the_claim_of_another_host():
    doc = document()
    take(doc, host="kvm1", run_id="run-a")
    assert take(doc, host="kvm2", run_id="run-b")["action"] == fleet.DOWNLOAD
    assert len(doc["claims"]) == 2


# --------------------------------------------------------------------------------------------------------------
# attempts


def test_summarize_attempts_keeps_the_order_skips_skipped_and_finds_the_success():
    results = [failed("kvm1"), unreachable("kvm3"), ok("kvm2"), {"skipped": True, "item": "kvm4"}]
    tried, success = fleet.summarize_attempts(results)
    assert [(t["host"], t["outcome"]) for t in tried] == [("kvm1", "failed"), ("kvm3", "unreachable"), ("kvm2", "ok")]
    assert tried[0]["error"] == "connection refused"
    assert tried[1]["error"].startswith("host unreachable: ssh: connect") and tried[1]["retry_elsewhere"] is True
    assert success["__deploy_candidate"] == "kvm2"


def test_a_probe_that_ran_but_did_not_reach_the_url_failed_with_its_error():
    tried, success = fleet.summarize_attempts([
        {"item": "kvm1", "reachable": False, "error": "https://m/x answered HTTP 404"},
        {"item": "kvm2", "reachable": True, "size": 5},
    ])
    assert [(t["host"], t["outcome"], t["error"]) for t in tried] == [
        ("kvm1", "failed", "https://m/x answered HTTP 404"), ("kvm2", "ok", None)]
    assert success["size"] == 5


# --------------------------------------------------------------------------------------------------------------
# finish


def finish(doc, decision, attempts, host="kvm1", pool="p", shared=False, **kwargs):
    return fleet.finish(doc, TEMPLATE, host, pool, shared, decision, attempts, now=NOW, **kwargs)


def test_finish_records_the_copy_from_the_host_that_served_it_and_releases_the_claim():
    doc = document()
    decision = take(doc, shared=True)
    outcome = finish(doc, decision, [failed("kvm1"), ok("kvm2")], shared=True)
    assert outcome["changed"] and doc["claims"] == [] and outcome["released"]["token"] == decision["claim"]["token"]
    [copy] = doc["copies"]
    assert (copy["host"], copy["pool"], copy["shared"], copy["size"], copy["checksum"]) == (
        "kvm2", "p", True, 2000, "{SHA-256}bb")
    row = outcome["row"]
    assert (row["host"], row["status"], row["downloaded_on"], row["bytes"], row["seconds"]) == (
        "kvm1", fleet.DOWNLOADED, "kvm2", 1000, 2.0)
    assert row["rate_mb_s"] == 0.5 and row["source"] == "https://m/d" and row["error"] is None
    assert row["attempts"] == [{"host": "kvm1", "outcome": "failed", "error": "connection refused"},
                               {"host": "kvm2", "outcome": "ok", "error": None}]


def test_finish_after_no_success_releases_the_claim_and_summarises_every_host():
    doc = document()
    decision = take(doc, shared=True)
    outcome = finish(doc, decision, [failed("kvm1"), failed("kvm3", "HTTP 500")], shared=True)
    assert doc["claims"] == [] and doc["copies"] == [] and outcome["changed"]
    row = outcome["row"]
    assert row["status"] == fleet.FAILED
    assert row["error"] == ("Template debian-12 could not be downloaded on pool p of kvm1, after trying kvm1, kvm3. "
                            "Details: kvm1: connection refused; kvm3: HTTP 500")


def test_finish_says_when_a_non_retryable_error_stopped_the_rotation():
    doc = document()
    outcome = finish(doc, take(doc), [failed("kvm1", "checksum mismatch", elsewhere=False)])
    assert "after trying kvm1 (stopped: the error is not retryable on another host)" in outcome["row"]["error"]


def test_finish_reports_unreachable_when_every_host_tried_was_unreachable():
    doc = document()
    assert finish(doc, take(doc), [unreachable("kvm1")])["row"]["status"] == fleet.UNREACHABLE
    doc = document()
    mixed = finish(doc, take(doc, shared=True), [unreachable("kvm1"), failed("kvm2")], shared=True)
    assert mixed["row"]["status"] == fleet.FAILED


def test_finish_present_with_the_file_in_place_changes_nothing():
    doc = document(a_copy(host="kvm1", shared=True))
    decision = take(doc, host="kvm2", shared=True)
    before = reg.serialize(doc)
    outcome = finish(doc, decision, [ok("kvm2", changed=False, moved=0)], host="kvm2", shared=True)
    assert not outcome["changed"] and reg.serialize(doc) == before
    assert (outcome["row"]["status"], outcome["row"]["downloaded_on"], outcome["row"]["bytes"]) == (
        fleet.PRESENT, "kvm1", 0)
    assert outcome["row"]["rate_mb_s"] is None


def test_finish_present_whose_file_vanished_records_the_new_download():
    doc = document(a_copy(host="kvm1"))
    outcome = finish(doc, take(doc), [ok("kvm1", changed=True, moved=2000)])
    assert outcome["changed"] and outcome["row"]["status"] == fleet.DOWNLOADED
    assert doc["copies"][0]["checksum"] == "{SHA-256}bb" and doc["copies"][0]["downloaded_at"] == reg.timestamp(NOW)


def test_finish_download_of_a_file_already_in_place_records_it_as_present():
    doc = document()
    outcome = finish(doc, take(doc), [ok("kvm1", changed=False, moved=0)])
    assert outcome["row"]["status"] == fleet.PRESENT and len(doc["copies"]) == 1 and doc["claims"] == []


def test_finish_in_check_mode_would_download():
    doc = document()
    check = {"ansible_loop_var": "item", "item": "kvm1", "changed": True, "path": "/pool/tid-1",
             "msg": "would download: not installed"}
    outcome = finish(doc, take(doc), [check], check_mode=True)
    assert outcome["row"]["status"] == fleet.WOULD_DOWNLOAD and outcome["row"]["bytes"] == 0
    doc = document(a_copy())
    present = finish(doc, take(doc), [dict(check, changed=False)], check_mode=True)
    assert present["row"]["status"] == fleet.PRESENT


def test_finish_after_waiting_finds_the_copy_another_run_or_host_recorded():
    doc = document()
    holder = take(doc, host="kvm1", shared=True, run_id="run-a")
    waiting = take(doc, host="kvm2", shared=True, run_id="run-a")
    finish(doc, holder, [ok("kvm1")], shared=True)
    outcome = finish(doc, waiting, [], host="kvm2", shared=True)
    assert (outcome["row"]["status"], outcome["row"]["downloaded_on"]) == (fleet.PRESENT, "kvm1")
    assert not outcome["changed"]


def test_finish_after_the_neighbour_of_this_run_recorded_nothing_names_it():
    doc = document()
    holder = take(doc, host="kvm1", shared=True, run_id="run-a")
    waiting = take(doc, host="kvm2", shared=True, run_id="run-a")
    finish(doc, holder, [failed("kvm1")], shared=True)
    row = finish(doc, waiting, [], host="kvm2", shared=True)["row"]
    assert row["status"] == fleet.FAILED
    assert "kvm1 claimed its download in this run and did not record a copy" in row["error"]


def test_finish_after_a_wait_that_timed_out_says_whose_claim():
    doc = document()
    take(doc, host="kvm9", shared=True, run_id="run-x")
    waiting = take(doc, host="kvm2", shared=True, run_id="run-a")
    row = finish(doc, waiting, [], host="kvm2", shared=True, wait_timed_out=True)["row"]
    assert row["status"] == fleet.FAILED and "timed out waiting for the claim of another run (h kvm9, run run-x)" in \
        row["error"]
    assert len(doc["claims"]) == 1, "another run's claim is never released by the waiter"


def test_finish_busy_in_check_mode_would_download():
    doc = document()
    take(doc, host="kvm9", shared=True, run_id="run-x")
    waiting = take(doc, host="kvm2", shared=True, run_id="run-a")
    assert finish(doc, waiting, [], host="kvm2", shared=True, check_mode=True)["row"]["status"] == \
        fleet.WOULD_DOWNLOAD


def test_finish_never_releases_a_claim_it_does_not_hold():
    doc = document()
    take(doc, host="kvm1", shared=True, run_id="run-a")
    busy = take(doc, host="kvm2", shared=True, run_id="run-b")
    finish(doc, busy, [failed("kvm2")], host="kvm2", shared=True)
    assert len(doc["claims"]) == 1


# --------------------------------------------------------------------------------------------------------------
# report


@pytest.mark.parametrize("count, text", [(0, "-"), (512, "0.5 KiB"), (3 * fleet.MiB, "3.0 MiB"),
                                         (5 * 1024 * fleet.MiB, "5.00 GiB")])
def test_human_bytes(count, text):
    assert fleet.human_bytes(count) == text


def test_rate_from_the_engine_or_from_bytes_over_seconds():
    assert fleet.rate_mb_s(10, rate=2500000) == 2.5
    assert fleet.rate_mb_s(4000000, seconds=2.0) == 2.0
    assert fleet.rate_mb_s(0, rate=100) is None and fleet.rate_mb_s(5) is None


def test_report_table_is_aligned_sorted_and_shows_errors_of_failed_pools():
    doc = document()
    attempts = [unreachable("kvm2"), ok("kvm1", moved=3 * fleet.MiB, rate=10 ** 7)]
    downloaded = finish(doc, take(doc, host="kvm2", shared=True), attempts, host="kvm2", shared=True)["row"]
    doc = document()
    failed_row = finish(doc, take(doc), [failed("kvm1", "HTTP 404")], host="kvm1", pool="local")["row"]
    lines = fleet.report_table([downloaded, failed_row])
    assert lines[0].split() == ["HOST", "POOL", "STATUS", "ON", "MOVED", "TIME", "RATE", "RESUMED", "SOURCE", "/",
                                "ATTEMPTS"]
    assert lines[1].startswith("kvm1  local") and "failed" in lines[1] and lines[1].endswith("kvm1: HTTP 404")
    assert lines[2].startswith("kvm2  p    ") and "downloaded" in lines[2] and "3.0 MiB" in lines[2]
    assert "10.0 MB/s" in lines[2] and "2.0 s" in lines[2]
    assert lines[2].endswith("https://m/d (after kvm2: host unreachable: ssh: connect to host port 22: Connection "
                             "refused)")
    status_column = lines[0].index("STATUS")
    assert all(line[status_column - 2:status_column] == "  " for line in lines)
    assert lines[1].index("failed") == lines[2].index("downloaded") == status_column
    assert fleet.report_table([])[0].split() == lines[0].split() and len(fleet.report_table([])) == 1
