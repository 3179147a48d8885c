# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""peer_server and download's peer options, run in this process as Ansible runs them (see test_module_secrets):
the token reaches neither the host's log, nor a result, nor the origin."""

from __future__ import annotations

import json
import os
import socket

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _peer
from ansible_collections.directdownload.kvm.plugins.modules import download, peer_server
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.modules import run_module
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

TOKEN = "unit-peer-token-5e2b110f2f0d"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def peer_state(tmp_path):
    path = tmp_path / "state"
    yield path
    for pid in _peer.find_servers(str(path)) if path.exists() else []:
        os.kill(pid, 9)


def test_serve_and_fetch_pinned_with_no_token_anywhere(tmp_path, peer_state, logged, capsys, monkeypatch):
    pool1, pool2 = tmp_path / "pool1", tmp_path / "pool2"
    pool1.mkdir()
    pool2.mkdir()
    images.qcow2(pool1 / "t.qcow2", 8 * images.MiB, writes=[(0, images.MiB, 0x33)])
    digest = images.sha256_file(pool1 / "t.qcow2")
    server_args = {"files": [{"path": str(pool1 / "t.qcow2"), "sha256": digest}], "token": TOKEN,
                   "address": "127.0.0.1", "port": _free_port(), "state_dir": str(peer_state), "lifetime": 120}
    checked, out_check = run_module(peer_server, server_args, capsys, monkeypatch, check=True, diff=True)
    assert checked["changed"] and checked["pid"] is None and not peer_state.exists()
    assert checked["diff"]["before"]["running"] is False
    started, out_start = run_module(peer_server, server_args, capsys, monkeypatch, diff=True)
    assert started["changed"] and started["fingerprint"] and started["diff"]["after"]["running"]
    again, _out = run_module(peer_server, server_args, capsys, monkeypatch)
    assert not again["changed"] and again["pid"] == started["pid"]
    fetched, out_fetch = run_module(download, {
        "url": started["urls"]["t.qcow2"], "url_is_peer": True, "peer_token": TOKEN,
        "peer_fingerprint": started["fingerprint"], "checksum": "sha256:" + digest, "pool_path": str(pool2)},
        capsys, monkeypatch)
    assert fetched["changed"], fetched
    assert images.sha256_file(pool2 / "t.qcow2") == digest
    stopped, out_stop = run_module(peer_server, {"state": "stopped", "state_dir": str(peer_state)}, capsys,
                                   monkeypatch)
    assert stopped["changed"] and stopped["stopped"] == [started["pid"]]
    for text in [out_check, out_start, out_fetch, out_stop] + logged:
        assert TOKEN not in text
    assert any("peer_token" in message for message in logged)  # the invocation was logged, masked


def test_origin_never_gets_the_peer_token(tmp_path, logged, capsys, monkeypatch):
    www, pool = tmp_path / "www", tmp_path / "pool"
    www.mkdir()
    pool.mkdir()
    images.qcow2(www / "t.qcow2", 8 * images.MiB)
    with ImageServer(www) as srv:
        result, out = run_module(download, {
            "url": srv.url("t.qcow2"), "peer_token": TOKEN, "peer_fingerprint": "AB" * 32,
            "pool_path": str(pool)}, capsys, monkeypatch)
        assert result["changed"], result
        assert srv.requests
        for record in srv.requests:
            assert TOKEN not in json.dumps(record.headers)
            assert "authorization" not in record.headers
    assert TOKEN not in out


def test_url_is_peer_needs_token_and_fingerprint(tmp_path, capsys, monkeypatch):
    result, _out = run_module(download, {"url": "https://127.0.0.1:1/t.qcow2", "url_is_peer": True,
                                         "pool_path": str(tmp_path)}, capsys, monkeypatch)
    assert result["failed"] and "peer_token" in result["msg"]
