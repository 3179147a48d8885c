# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fan-out peers as sources of the multi-source engine: ``mirrors`` entries with ``peer: true`` and their own
``fingerprint``, opened with ``SourceOptions.for_peer`` (token and pin, nothing of the origin's); a peer that
refuses (403, 410, pin mismatch) is set aside, a busy one (503) asked again after Retry-After, and a peer whose
bytes fail the checksum is the one quarantined. Real TLS peer servers (``_peer.PeerServer``) and a real origin
(``ImageServer``) on loopback."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import types

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _download, _peer
from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import Checksum
from ansible_collections.directdownload.kvm.plugins.module_utils._description import (
    SourceRef,
    from_urls,
    parse_mirrors,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import HTTPStatusError, InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._http import SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._selector import SourceSelector
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import open_source as engine_source
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

NAME = "img.raw"
SIZE = 4 * 1024 * 1024 + 999
TOKEN = "deployment-token-0123456789abcdef"
ORIGIN_OPTIONS = SourceOptions(connect_timeout=3, read_timeout=10, headers={"X-Origin-Only": "secret-origin"})


class Peer:
    """An in-process peer_server (TLS, token, pin) serving ``path``."""

    def __init__(self, tmp_path, label, path, max_uploads=4):
        entries = _peer.describe_files([str(path)])
        cert_pem, key_pem, self.fingerprint = _peer.make_certificate("127.0.0.1")
        cert, key = tmp_path / ("%s-cert.pem" % label), tmp_path / ("%s-key.pem" % label)
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        self.log = tmp_path / ("%s.log" % label)
        self.server = _peer.PeerServer("127.0.0.1", 0, _peer.entries_from_config({"files": entries}), TOKEN,
                                       str(cert), str(key), max_uploads=max_uploads, log_file=str(self.log))
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self):
        return "https://127.0.0.1:%d/%s" % (self.server.server_address[1], NAME)

    def mirror(self, fingerprint=None, priority=None):
        entry = dict(url=self.url(), peer=True, fingerprint=fingerprint or self.fingerprint)
        if priority:
            entry["priority"] = priority
        return entry

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture()
def world(tmp_path):
    data = os.urandom(SIZE)
    www = tmp_path / "www"
    www.mkdir()
    (www / NAME).write_bytes(data)
    pool = tmp_path / "pool"
    pool.mkdir()
    opened = []

    def peer(label, content=None, **kwargs):
        holder = tmp_path / ("holder-" + label)
        holder.mkdir()
        (holder / NAME).write_bytes(data)
        started = Peer(tmp_path, label, holder / NAME, **kwargs)
        opened.append(started)
        if content is not None:
            # Changed in place after the peer started, size and mtime kept: the peer cannot tell, the receiver must.
            info = os.stat(holder / NAME)
            with open(holder / NAME, "r+b") as handle:
                handle.write(content)
            os.utime(holder / NAME, ns=(info.st_atime_ns, info.st_mtime_ns))
        return started

    origin = ImageServer(www)
    yield types.SimpleNamespace(data=data, sha256=hashlib.sha256(data).hexdigest(), pool=pool, origin=origin,
                                peer=peer, holder=lambda label: tmp_path / ("holder-" + label) / NAME)
    origin.close()
    for started in opened:
        started.close()


def request_for(world, mirrors, token=TOKEN, **kwargs):
    kwargs.setdefault("retry_delay", 0)
    kwargs.setdefault("image_format", "raw")
    kwargs.setdefault("connections", 3)
    kwargs.setdefault("checksum", Checksum("sha256", world.sha256))
    request = _download.DownloadRequest(world.origin.url(NAME), str(world.pool), name=NAME, mirrors=mirrors,
                                        source_options=ORIGIN_OPTIONS, **kwargs)
    # What download.py sets from peer_token / peer_fingerprint.
    request.peer_token = token
    request.peer_source_options = None
    request.origin_source_options = ORIGIN_OPTIONS
    return request


def pool_bytes(world):
    with open(os.path.join(str(world.pool), NAME), "rb") as handle:
        return handle.read()


def by_url(result):
    return {entry["url"]: entry for entry in result["sources"]}


# -- the mirrors option ---------------------------------------------------------------------------------------------

def test_parse_mirrors_reads_peer_entries_and_keeps_the_old_shape_by_default():
    mirrors = ["http://a/x", dict(url="https://10.0.0.2:8473/x", peer=True, fingerprint=" AB:CD "),
               dict(url="https://10.0.0.3:8473/x", peer="yes", priority=5)]
    assert parse_mirrors(mirrors) == [("http://a/x", None, None), ("https://10.0.0.2:8473/x", None, None),
                                      ("https://10.0.0.3:8473/x", 5, None)]
    assert parse_mirrors(mirrors, peers=True) == [
        ("http://a/x", None, None, False, None), ("https://10.0.0.2:8473/x", None, None, True, "AB:CD"),
        ("https://10.0.0.3:8473/x", 5, None, True, None)]
    refs = from_urls("http://origin/x", "x", mirrors).sources
    # The URL first, then by priority (the peer with priority 5), then the others in the order given.
    assert [(r.peer, r.fingerprint) for r in refs] == [(False, None), (True, None), (False, None), (True, "AB:CD")]
    assert refs[3].as_dict()["peer"] is True


@pytest.mark.parametrize("entry, message", [
    (dict(url="http://10.0.0.2:8473/x", peer=True), "https only"),
    (dict(url="https://10.0.0.2:8473/x", fingerprint="AB"), "only for a peer"),
    (dict(url="https://10.0.0.2:8473/x", peer="maybe"), "true or false"),
])
def test_bad_peer_entries_are_refused(entry, message):
    with pytest.raises(InvalidInput, match=message):
        parse_mirrors([entry])


# -- the engine with peers --------------------------------------------------------------------------------------------

def test_origin_and_peers_share_the_file_each_with_its_own_options(world):
    first, second = world.peer("one"), world.peer("two")
    world.origin.set_fault("/" + NAME, rate=2 * 1024 * 1024)  # slow origin: the peers do most of the work
    result = _download.run(request_for(world, [first.mirror(), second.mirror()]), engine_source)
    assert pool_bytes(world) == world.data
    sources = by_url(result)
    assert sources[world.origin.url(NAME)]["peer"] is False
    assert sources[first.url()]["peer"] is True and sources[second.url()]["peer"] is True
    assert sum(entry["bytes"] for entry in result["sources"]) == SIZE
    # The origin is the fallback: with live peers it serves no byte of the file (a HEAD for the size at most).
    assert sources[world.origin.url(NAME)]["bytes"] == 0
    assert sources[first.url()]["bytes"] > 0 and sources[second.url()]["bytes"] > 0
    # The origin never saw the token; the peers never saw the origin's header (their logs hold no header at all).
    for record in world.origin.requests:
        assert "authorization" not in record.headers
        assert record.headers.get("x-origin-only") == "secret-origin"
    for peer in (first, second):
        assert TOKEN not in peer.log.read_text()


def test_a_peer_without_a_token_is_refused_before_any_connection(world):
    first = world.peer("one")
    with pytest.raises(InvalidInput, match="needs peer_token"):
        _download.run(request_for(world, [first.mirror()], token=None), engine_source)
    assert world.origin.requests == []


def test_a_peer_without_a_fingerprint_uses_the_request_pin_or_is_refused(world):
    first = world.peer("one")
    entry = dict(url=first.url(), peer=True)
    with pytest.raises(InvalidInput, match="needs a fingerprint"):
        _download.run(request_for(world, [entry]), engine_source)
    request = request_for(world, [entry])
    request.peer_source_options = SourceOptions.for_peer(ORIGIN_OPTIONS, TOKEN, first.fingerprint)
    result = _download.run(request, engine_source)
    assert pool_bytes(world) == world.data and by_url(result)[first.url()]["peer"] is True


@pytest.mark.parametrize("fault", ["pin", "token", "changed"])
def test_a_refusing_peer_is_set_aside_and_the_others_finish(world, fault):
    good, bad = world.peer("good"), world.peer("bad")
    mirrors = [bad.mirror(fingerprint=good.fingerprint if fault == "pin" else None), good.mirror()]
    world.origin.set_fault("/" + NAME, rate=2 * 1024 * 1024)  # the download lasts long enough for all to be asked
    request = request_for(world, mirrors)
    if fault == "token":  # the bad peer runs with another deployment's token: 403
        bad.server.token = b"another-deployment-token"
    if fault == "changed":  # its file replaced after it started: 410 on every request
        path = world.holder("bad")
        os.unlink(path)
        path.write_bytes(world.data)
    result = _download.run(request, engine_source)
    assert pool_bytes(world) == world.data
    entry = by_url(result)[bad.url()]
    assert entry["bytes"] == 0 and entry["error"]
    assert {"pin": "not the pinned one", "token": "403", "changed": "410"}[fault] in entry["error"]


def test_a_peer_serving_corrupt_bytes_is_quarantined_not_the_origin(world):
    corrupt = world.peer("corrupt", content=os.urandom(SIZE))
    world.origin.set_fault("/" + NAME, rate=4 * 1024 * 1024)
    logged = []
    result = _download.run(request_for(world, [corrupt.mirror()], connections=2), engine_source, log=logged.append)
    assert pool_bytes(world) == world.data
    sources = by_url(result)
    assert "checksum mismatch" in sources[corrupt.url()]["error"]
    assert sources[world.origin.url(NAME)]["error"] is None
    assert any("checksum mismatch from" in line for line in logged)


def test_the_origin_finishes_when_every_peer_is_gone(world):
    gone = world.peer("gone")
    os.unlink(world.holder("gone"))  # 410 for every request
    result = _download.run(request_for(world, [gone.mirror()]), engine_source)
    assert pool_bytes(world) == world.data
    sources = by_url(result)
    assert sources[world.origin.url(NAME)]["bytes"] == SIZE and "410" in sources[gone.url()]["error"]


def test_a_busy_source_waits_for_its_retry_after_then_comes_back():
    refs = [SourceRef("https://peer-a/x", 0, peer=True), SourceRef("https://peer-b/x", 1, peer=True),
            SourceRef("http://origin/x", 2)]
    selector = SourceSelector(refs)
    busy = HTTPStatusError("busy", 503, retry_after="1")
    assert selector.failed(refs[0], busy, fatal=True) is False  # busy is never fatal
    assert selector.pick(4) is refs[1]
    selector.started(refs[1])
    selector.started(refs[1])
    # peer-b is at its cap (2 of 4 over the two live peers), peer-a busy, the origin only a fallback: nobody now.
    assert selector.pick(4) is None
    time.sleep(1.1)
    assert selector.pick(4) is refs[0]


def test_a_refusal_sets_a_peer_aside_for_the_whole_download_but_not_the_origin():
    refs = [SourceRef("https://peer/x", 0, peer=True), SourceRef("http://origin/x", 1)]
    selector = SourceSelector(refs)
    selector.record_error(refs[0], HTTPStatusError("gone", 410))
    selector.record_error(refs[1], HTTPStatusError("gone", 404))
    assert [r.url for r in selector.candidates()] == ["http://origin/x"]
    assert selector.report()[0]["peer"] is True and selector.report()[1]["peer"] is False
