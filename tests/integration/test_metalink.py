# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``download`` module with a Metalink URL, through real ``ansible-playbook`` runs against several real
loopback mirrors (one refusing connections, one answering 404, one corrupt, good ones rate-limited)."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._metalink import NS_V4
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

from ansible_collections.directdownload.kvm.tests.integration.conftest import (
    kill_module,
    kill_tree,
    run_playbook_in,
    sidecar,
    start_playbook,
    wait_for_progress,
)

MiB = 1024 * 1024
PIECE = 256 * 1024
MODULE = "directdownload.kvm.download"


@pytest.fixture
def image(www):
    path = www / "disk.qcow2"
    images.qcow2(str(path), size=32 * MiB, writes=[(0, 3 * MiB, 0x11), (16 * MiB, 2 * MiB, 0x22)])
    return path


@pytest.fixture
def mirrors(www):
    started = []

    def start(**fault):
        server = ImageServer(www)
        started.append(server)
        if fault:
            server.set_fault("/disk.qcow2", **fault)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def refused_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return "http://127.0.0.1:%d/disk.qcow2" % port


def sha256(path):
    return images.sha256_file(str(path))


def write_metalink(path, urls, data, pieces=False, name="disk.qcow2", extra_file=""):
    parts = ["<size>%d</size>" % len(data), '<hash type="sha-256">%s</hash>' % hashlib.sha256(data).hexdigest()]
    if pieces:
        parts.append('<pieces length="%d" type="sha-1">%s</pieces>' % (PIECE, "".join(
            "<hash>%s</hash>" % hashlib.sha1(data[i:i + PIECE]).hexdigest() for i in range(0, len(data), PIECE))))
    parts += ['<url priority="%d">%s</url>' % (i + 1, url) for i, url in enumerate(urls)]
    path.write_bytes(('<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="%s"><file name="%s">%s</file>%s'
                      '</metalink>\n' % (NS_V4, name, "".join(parts), extra_file)).encode())


def args_for(url, pool, **extra):
    args = {"url": url, "pool_path": str(pool), "retry_delay": 0.1, "progress_interval": 0.2, "read_timeout": 2}
    args.update(extra)
    return args


def test_failover_to_the_first_good_mirror(run_module, mirrors, pool, www, image, refused_url):
    missing, good, spare = mirrors(status=404), mirrors(), mirrors()
    data = image.read_bytes()
    write_metalink(www / "disk.qcow2.meta4", [refused_url, missing.url("disk.qcow2"), good.url("disk.qcow2"),
                                              spare.url("disk.qcow2")], data)
    args = args_for(good.url("disk.qcow2.meta4"), pool, checksum="sha256:" + sha256(image), format="qcow2")
    record = run_module(MODULE, args)[0]
    result = record["result"]
    assert record["status"] == "changed", result
    assert result["path"] == str(pool / "disk.qcow2") and result["format"] == "qcow2"
    assert result["final_url"] == good.url("disk.qcow2")
    assert [e["url"] for e in result["mirror_errors"]] == [refused_url, missing.url("disk.qcow2")]
    assert sha256(pool / "disk.qcow2") == sha256(image)
    assert spare.requests_for("/disk.qcow2") == []
    again = run_module(MODULE, args)[0]
    assert again["status"] == "ok"


def test_hostile_metalinks_fail_clearly(run_module, mirrors, pool, www, image):
    server = mirrors()
    (www / "xxe.meta4").write_bytes(('<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                                     '<metalink xmlns="%s"><file name="disk.qcow2"><url>http://a/&x;</url></file>'
                                     '</metalink>' % NS_V4).encode())
    record = run_module(MODULE, args_for(server.url("xxe.meta4"), pool, name="disk.qcow2"))[0]
    assert record["status"] == "failed" and "DOCTYPE" in record["result"]["msg"]
    assert "root:" not in str(record["result"])

    write_metalink(www / "evil.meta4", [server.url("disk.qcow2")], image.read_bytes(), name="../../etc/cron.d/x")
    record = run_module(MODULE, args_for(server.url("evil.meta4"), pool, name="disk.qcow2"))[0]
    assert record["status"] == "failed" and "unsafe file name" in record["result"]["msg"]

    (www / "empty.meta4").write_bytes(('<metalink xmlns="%s"><file name="disk.qcow2"><size>5</size></file>'
                                       '</metalink>' % NS_V4).encode())
    record = run_module(MODULE, args_for(server.url("empty.meta4"), pool, name="disk.qcow2"))[0]
    assert record["status"] == "failed" and "no usable URL" in record["result"]["msg"]
    assert os.listdir(pool) == []


def test_several_files_need_metalink_name(run_module, mirrors, pool, www, image):
    server = mirrors()
    other = '<file name="other.iso"><url>%s</url></file>' % server.url("other.iso")
    write_metalink(www / "set.meta4", [server.url("disk.qcow2")], image.read_bytes(), extra_file=other)
    record = run_module(MODULE, args_for(server.url("set.meta4"), pool, name="disk.qcow2"))[0]
    assert record["status"] == "failed"
    assert "'disk.qcow2'" in record["result"]["msg"] and "'other.iso'" in record["result"]["msg"]
    args = args_for(server.url("set.meta4"), pool, name="disk.qcow2", metalink_name="disk.qcow2",
                    checksum="sha256:" + sha256(image))
    record = run_module(MODULE, args)[0]
    assert record["status"] == "changed", record["result"]
    assert sha256(pool / "disk.qcow2") == sha256(image)


def test_metalink_hash_rejects_a_corrupt_mirror_without_a_user_checksum(run_module, mirrors, pool, www, image):
    corrupt, good = mirrors(corrupt_at=5 * MiB), mirrors()
    write_metalink(www / "disk.qcow2.meta4", [corrupt.url("disk.qcow2"), good.url("disk.qcow2")], image.read_bytes())
    record = run_module(MODULE, args_for(good.url("disk.qcow2.meta4"), pool))[0]
    result = record["result"]
    assert record["status"] == "changed", result
    assert result["checksum"] == "{SHA-256}" + sha256(image) and result["final_url"] == good.url("disk.qcow2")
    assert any("mismatch" in e["error"] for e in result["mirror_errors"])
    assert sha256(pool / "disk.qcow2") == sha256(image)


def test_segmented_download_from_two_mirrors_refetches_only_the_corrupt_piece(run_module, mirrors, pool, www,
                                                                              image):
    rate = 8 * MiB
    corrupt, good = mirrors(corrupt_at=PIECE + 99, rate=rate), mirrors(rate=rate)
    write_metalink(www / "disk.qcow2.meta4", [corrupt.url("disk.qcow2"), good.url("disk.qcow2")], image.read_bytes(),
                   pieces=True)
    record = run_module(MODULE, args_for(good.url("disk.qcow2.meta4"), pool, connections=2))[0]
    result = record["result"]
    assert record["status"] == "changed", result
    assert sha256(pool / "disk.qcow2") == sha256(image)
    assert result["bytes_downloaded"] == os.path.getsize(image) + PIECE
    good.wait_idle()
    refetch = [r.headers.get("range") for r in good.requests_for("/disk.qcow2", "GET")
               if r.headers.get("range", "").startswith("bytes=%d-" % PIECE)]
    assert refetch == ["bytes=%d-%d" % (PIECE, 2 * PIECE - 1)]
    assert [name for name in os.listdir(pool) if name.endswith((".part", ".json")) and "ddinfo" not in name] == []


def test_metalink_recognised_by_content_type(run_module, mirrors, pool, www, image):
    server = mirrors()
    write_metalink(www / "get", [server.url("disk.qcow2")], image.read_bytes())
    server.set_fault("/get", content_type="application/metalink4+xml")
    record = run_module(MODULE, args_for(server.url("get"), pool, name="disk.qcow2"))[0]
    assert record["status"] == "changed", record["result"]
    assert record["result"]["final_url"] == server.url("disk.qcow2")
    assert sha256(pool / "disk.qcow2") == sha256(image)


def test_a_metalink_behind_a_redirect_is_a_metalink_for_download_and_url_check(run_module, mirrors, pool, www, image):
    """``/latest`` redirects to ``image.meta4``, served as application/octet-stream (nginx's default for an
    unknown suffix). Both modules decide on the final URL and the Content-Type, in the same place: ``download``
    installs the image the mirrors serve (before: the XML document, as a raw image), ``url_check`` reports the
    mirror's image."""
    server = mirrors()
    write_metalink(www / "image.meta4", [server.url("disk.qcow2")], image.read_bytes())
    server.set_fault("/latest", redirect_to="/image.meta4")
    server.set_fault("/image.meta4", content_type="application/octet-stream")
    record = run_module(MODULE, args_for(server.url("latest"), pool, name="disk.qcow2"))[0]
    assert record["status"] == "changed", record["result"]
    assert record["result"]["format"] == "qcow2" and record["result"]["final_url"] == server.url("disk.qcow2")
    assert sha256(pool / "disk.qcow2") == sha256(image)

    checked = run_module("directdownload.kvm.url_check", {"url": server.url("latest"), "read_timeout": 2})[0]
    result = checked["result"]
    assert result["reachable"] and result["mirror"] == server.url("disk.qcow2"), result
    assert result["format_detected"] == "qcow2" and result["size"] == os.path.getsize(image)


def test_kill_9_of_a_segmented_download_then_a_rerun_resumes(tmp_path, mirrors, pool, www):
    """The module process (an async job of the action plugin) is killed with SIGKILL in the middle of a download in
    ranges from two mirrors: the one sidecar .part.json holds progress figures and the piece map, and the next run
    resumes from it."""
    images.random_raw(str(www / "disk.raw"), size=24 * MiB)
    data = (www / "disk.raw").read_bytes()
    first, second = mirrors(), mirrors()
    for server in (first, second):
        server.set_fault("/disk.raw", rate=2 * MiB)
    write_metalink(www / "disk.raw.meta4", [first.url("disk.raw"), second.url("disk.raw")], data, pieces=True,
                   name="disk.raw")
    play = [{"hosts": "all", "gather_facts": False, "tasks": [{
        "name": "Segmented", MODULE: args_for(first.url("disk.raw.meta4"), pool, connections=2, format="raw")}]}]
    proc = start_playbook(tmp_path / "killed", play)
    try:
        seen = wait_for_progress(proc, pool, "disk.raw", 6 * MiB, timeout=90)
    finally:
        kill_tree(proc)
        kill_module(pool, "disk.raw")
    # One sidecar, the same figures as one stream, and the piece map of the transfer in ranges.
    assert seen["total"] == len(data) and seen["connections"] == 2
    assert {"rate", "eta", "percent", "progress", "segments"} <= set(seen)
    assert seen["segments"]["done"] and "identity" not in seen
    # (the lock file of a killed run stays: the next run takes it over)
    assert sorted(set(os.listdir(pool)) - {".disk.raw.lock"}) == [".disk.raw.part", ".disk.raw.part.json"]
    killed_at = sidecar(pool, "disk.raw")["bytes_done"]

    for server in (first, second):
        server.clear_faults()
    run = run_playbook_in(tmp_path / "again", play)
    result = run.task("Segmented")["result"]
    assert run.task("Segmented")["status"] == "changed", result
    assert 0 < result["resumed_from"] <= killed_at and result["bytes_downloaded"] < len(data)
    assert sha256(pool / "disk.raw") == hashlib.sha256(data).hexdigest()
    assert sorted(os.listdir(pool)) == [".disk.raw.ddinfo.json", "disk.raw"]


def test_mirrors_option_fails_over_reports_sources_and_masks_only_secrets(run_module, mirrors, pool, image):
    missing, good = mirrors(status=404), mirrors()
    token_url = good.url("disk.qcow2") + "?token=s3cr3tvalue"
    record = run_module(MODULE, args_for(missing.url("disk.qcow2"), pool, checksum="sha256:" + sha256(image),
                                         mirrors=[{"url": token_url, "priority": 5, "location": "de"}]))[0]
    result = record["result"]
    assert record["status"] == "changed", result
    assert sha256(pool / "disk.qcow2") == sha256(image)
    assert "s3cr3tvalue" not in json.dumps(result)
    assert [entry["url"].split("?")[0] for entry in result["sources"]] == [
        missing.url("disk.qcow2"), good.url("disk.qcow2")]
    assert result["sources"][0]["error"] is None or "404" in result["sources"][0]["error"]
    assert result["sources"][1]["bytes"] == os.path.getsize(image)
    assert result["mirror_errors"][0]["url"] == missing.url("disk.qcow2")
