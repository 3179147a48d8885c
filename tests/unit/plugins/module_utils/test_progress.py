# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What an operator sees of a running download (_progress): the sidecar's figures and line, its mode and group,
the controller's lease; through the real engine against real rate-limited loopback servers."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _download, _progress
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._http import SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._metalink import NS_V4
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import open_source
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.require import other_group
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

MiB = 1024 * 1024


@pytest.fixture
def www(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    images.random_raw(str(root / "big.raw"), size=8 * MiB)
    return root


# pool and server: tests/unit/conftest.py (server serves this module's www)


def request_for(url, pool, **kwargs):
    kwargs.setdefault("source_options", SourceOptions(read_timeout=5))
    kwargs.setdefault("retry_delay", 0)
    kwargs.setdefault("retries", 0)
    kwargs.setdefault("progress_interval", 0.1)
    return _download.DownloadRequest(url, str(pool), **kwargs)


def watch_sidecar(path, until):
    """Copies of the sidecar's text, read while ``until`` is not set (as an operator's `watch cat` would)."""
    seen = []

    def loop():
        while not until.is_set():
            try:
                with open(path) as handle:
                    seen.append((handle.read(), os.fstat(handle.fileno())))  # the file that was read
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return seen, thread


def test_describe_in_human_units():
    state = {"bytes_done": 23 * MiB + MiB // 2, "total": 50 * MiB, "rate": 5037663, "eta": 75.4,
             "source": "http://m/x.raw"}
    assert _progress.describe(state) == "47.0%, 23.5 MiB of 50.0 MiB, 5.0 MB/s, ETA 1 min 15 s"
    assert _progress.progress_line("kvm-a", "x.raw", state).startswith("[kvm-a] x.raw: 47.0%, ")
    assert _progress.progress_line("kvm-a", "x.raw", state).endswith(", from http://m/x.raw")
    assert _progress.describe({"bytes_done": 1536, "total": None}) == "1.5 KiB of an unknown size"
    assert _progress.human_size(3 * 1024 ** 3) == "3.0 GiB" and _progress.human_seconds(7260) == "2 h 01 min"
    assert _progress.human_seconds(3.72) == "3.7 s" and _progress.human_seconds(42.4) == "42 s"
    assert _progress.describe({}) == ""


def test_sidecar_is_short_group_readable_and_shows_one_line(server, pool, www):
    server.set_fault("/big.raw", rate=4 * MiB)
    group = other_group()
    done = threading.Event()
    seen, watcher = watch_sidecar(str(pool / ".big.raw.part.json"), done)
    old_umask = os.umask(0o077)  # the mode must not depend on the module's umask
    try:
        result = _download.run(request_for(server.url("big.raw"), pool, progress_group=group.gr_name), open_source)
    finally:
        os.umask(old_umask)
        done.set()
        watcher.join()
    assert result["changed"]
    assert seen, "the sidecar was never seen during a 2 s download"
    text, st = seen[-1]
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == group.gr_gid
    state = json.loads(text)
    assert len(text.splitlines()) <= 20, text
    assert state["progress"] == _progress.describe(state) and "MB/s" in state["progress"]
    assert state["source"] == server.url("big.raw") and len(state["identity"]) == 64
    # One key per line, sorted: `cat` shows "key": value lines, the nested validators aside.
    keys = [line.split('"')[1] for line in text.splitlines() if line.startswith(' "')]
    assert keys == sorted(keys)


def test_an_unknown_operator_group_is_one_clear_error(server, pool):
    with pytest.raises(InvalidInput, match="progress_group 'no-such-group-x' .* not a group"):
        request_for(server.url("big.raw"), pool, progress_group="no-such-group-x")


def test_a_stale_lease_stops_the_download_and_keeps_the_part(server, pool, www, tmp_path):
    server.set_fault("/big.raw", rate=2 * MiB)
    lease_path = tmp_path / "lease"
    lease_path.write_text("")
    old = time.time() - 120
    os.utime(lease_path, (old, old))  # nobody renewed it for two minutes
    lease = _progress.Lease(str(lease_path), 60)
    with pytest.raises(_progress.ControllerGone, match="not been watching") as failure:
        _download.run(request_for(server.url("big.raw"), pool, lease=lease), open_source)
    assert (failure.value.retry_here, failure.value.retry_elsewhere) == (False, False)
    assert sorted(os.listdir(pool)) == [".big.raw.part", ".big.raw.part.json"]
    # A renewed (or vanished) lease lets the next run resume and finish.
    lease_path.unlink()
    server.clear_faults()
    result = _download.run(request_for(server.url("big.raw"), pool, lease=lease), open_source)
    assert result["resumed_from"] > 0 and sorted(os.listdir(pool)) == [".big.raw.ddinfo.json", "big.raw"]


def test_lease_from_environment():
    assert _progress.Lease.from_environment({}) is None
    lease = _progress.Lease.from_environment({_progress.LEASE_ENV: "/x", _progress.LEASE_SECONDS_ENV: "90"})
    assert lease.path == "/x" and lease.seconds == 90
    assert _progress.Lease.from_environment({_progress.LEASE_ENV: "/x", _progress.LEASE_SECONDS_ENV: "1"}).seconds == 5


def test_segmented_download_writes_the_progress_sidecar(pool, www, tmp_path):
    data = (www / "big.raw").read_bytes()
    with ImageServer(www) as first, ImageServer(www) as second:
        first.set_fault("/big.raw", rate=MiB)
        second.set_fault("/big.raw", rate=MiB)
        (www / "big.raw.meta4").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="%s"><file name="big.raw"><size>%d</size>'
            '<hash type="sha-256">%s</hash><url priority="1">%s</url><url priority="2">%s</url></file></metalink>\n'
            % (NS_V4, len(data), hashlib.sha256(data).hexdigest(), first.url("big.raw"), second.url("big.raw")))
        done = threading.Event()
        seen, watcher = watch_sidecar(str(pool / ".big.raw.part.json"), done)
        try:
            result = _download.run(request_for(first.url("big.raw.meta4"), pool, connections=2), open_source)
        finally:
            done.set()
            watcher.join()
    assert result["changed"] and result["bytes_downloaded"] == len(data)
    assert seen, "a segmented download must show its progress in the same sidecar"
    state = json.loads(seen[-1][0])
    assert state["connections"] == 2 and "2 connections" in state["progress"] and "identity" not in state
    assert 0 < state["bytes_done"] <= state["total"] == len(data)


def test_the_first_check_makes_the_lease_file(tmp_path):
    """A controller gone before its first look: the module's first check starts the lease, which then runs out."""
    lease = _progress.Lease(str(tmp_path / "lease"), 60, clock=lambda: time.time() + 61)
    lease.check()  # made now, stops nothing
    assert (tmp_path / "lease").exists()
    with pytest.raises(_progress.ControllerGone):
        lease.check()  # 61 s later by this clock, never renewed
    _progress.Lease(str(tmp_path / "gone" / "lease"), 60).check()  # its directory is gone: stops nothing
    assert not (tmp_path / "gone").exists()
