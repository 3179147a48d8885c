# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Source choice: order, failover, connection caps, quarantine of a source that served bad bytes, the report."""

from __future__ import annotations

from ansible_collections.directdownload.kvm.plugins.module_utils._description import SourceRef
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import SourceError
from ansible_collections.directdownload.kvm.plugins.module_utils._selector import SourceSelector


def refs(*urls, **caps):
    return [SourceRef(url, rank, max_connections=caps.get(url.split("/")[2])) for rank, url in enumerate(urls)]


def test_candidates_keep_the_order_put_slow_sources_last_and_drop_quarantined_ones():
    selector = SourceSelector(refs("http://a/x", "http://b/x", "http://c/x"))
    assert [r.url for r in selector.candidates()] == ["http://a/x", "http://b/x", "http://c/x"]
    selector.set_aside_slow("http://a/x")
    assert [r.url for r in selector.candidates()] == ["http://b/x", "http://c/x", "http://a/x"]
    assert selector.quarantine("http://b/x", "checksum mismatch") is True
    assert selector.quarantine("http://b/x", "again") is False
    assert [r.url for r in selector.candidates()] == ["http://c/x", "http://a/x"]
    assert selector.errors == [{"url": "http://b/x", "error": "checksum mismatch"}]
    assert selector.scopes == [(False, False)]


def test_pick_spreads_connections_and_honours_server_caps():
    selector = SourceSelector(refs("http://a/x", "http://b/x", b=1))
    picked = []
    for _index in range(3):
        ref = selector.pick(4)
        selector.started(ref)
        picked.append(ref.url)
    # The least busy first (ties by rank); an even share is 2 each, and b allows 1: a 4th has nowhere to go.
    assert picked == ["http://a/x", "http://b/x", "http://a/x"]
    assert selector.pick(4) is None
    selector.stopped(selector.refs[0])
    assert selector.pick(4).url == "http://a/x"


def test_avoid_is_a_preference_and_failures_set_a_source_aside():
    selector = SourceSelector(refs("http://a/x", "http://b/x"), max_failures=2)
    assert selector.pick(2, avoid={"http://a/x"}).url == "http://b/x"
    error = SourceError("timed out")
    assert selector.failed(selector.refs[1], error) is False
    assert selector.failed(selector.refs[1], error) is True
    assert selector.pick(2, avoid={"http://a/x"}).url == "http://a/x"  # nothing else is alive
    assert selector.failed(selector.refs[0], SourceError("no ranges"), fatal=True) is True
    assert selector.pick(2) is False


def test_a_rejected_piece_quarantines_the_source_and_the_report_names_it():
    selector = SourceSelector(refs("http://user:pw@a/x", "http://b/x"))
    selector.count_bytes("http://user:pw@a/x", 100)
    selector.count_bytes("http://b/x", 300)
    selector.piece_rejected(selector.refs[0], "piece 1 (bytes 10-19) failed its sha1 check")
    assert not selector.usable("http://user:pw@a/x")
    report = selector.report()
    assert report[0]["url"] != "http://user:pw@a/x" and "pw" not in report[0]["url"]
    assert report[0]["bytes"] == 100 and report[0]["pieces_rejected"] == 1 and "piece 1" in report[0]["error"]
    assert report[1] == {"url": "http://b/x", "bytes": 300, "pieces_rejected": 0, "error": None, "peer": False}


def test_merge_takes_in_what_a_transfer_saw():
    parent = SourceSelector(refs("http://a/x", "http://b/x"))
    child = SourceSelector(parent.candidates())
    child.count_bytes("http://b/x", 5)
    child.failed(child.refs[0], SourceError("refused"), fatal=True)
    child.piece_rejected(child.refs[1], "piece 0 failed")
    parent.merge(child)
    assert [e["url"] for e in parent.errors] == ["http://a/x", "http://b/x"]
    assert parent.state("http://b/x").quarantined and parent.state("http://b/x").bytes == 5
    assert parent.usable("http://a/x"), "a source set aside by one transfer may be tried by the next"
    assert parent.report()[0]["error"] == "refused"
