# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SIGINT and SIGTERM (_signals) with real signals sent to this process: what each stage of the engine leaves in
the pool (never a file under the final name; after the transfer stage the resumable .part and its sidecar)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _download, _install, _signals
from ansible_collections.directdownload.kvm.plugins.module_utils._http import SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import open_source
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

MiB = 1024 * 1024


def send_when(condition, signum, timeout=30):
    """A thread that sends ``signum`` to this process as soon as ``condition()`` holds."""
    sent = threading.Event()

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                os.kill(os.getpid(), signum)
                sent.set()
                return
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, sent


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interruptible_raises_and_restores_the_handlers(signum):
    before = signal.getsignal(signum)
    with pytest.raises(_signals.Interrupted) as failure:
        with _signals.interruptible():
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises in the main thread, here
    assert failure.value.signal_name == signum.name and (failure.value.retry_here, failure.value.retry_elsewhere) == (True, True)
    assert signal.getsignal(signum) is before


def test_deferred_holds_a_signal_back_until_the_block_is_done():
    with _signals.interruptible():
        with _signals.deferred() as arrived:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # not interrupted
        assert arrived == ["SIGTERM"]
    with _signals.deferred() as arrived:  # without interruptible(): a no-op
        pass
    assert arrived == []


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    pool = tmp_path / "pool"
    pool.mkdir()
    with ImageServer(root) as server:
        yield root, pool, server


def request_for(server, pool, path, **kwargs):
    kwargs.setdefault("source_options", SourceOptions(read_timeout=5))
    kwargs.setdefault("retry_delay", 0)
    kwargs.setdefault("progress_interval", 0.05)
    return _download.DownloadRequest(server.url(path), str(pool), **kwargs)


def sidecar(pool, name):
    try:
        return json.loads((pool / (".%s.part.json" % name)).read_text())
    except (OSError, ValueError):
        return {}


def test_interrupted_transfer_keeps_the_part_and_resumes(setup):
    root, pool, server = setup
    images.random_raw(str(root / "disk.raw"), size=8 * MiB)
    server.set_fault("/disk.raw", rate=4 * MiB, times=1)
    _thread, sent = send_when(lambda: sidecar(pool, "disk.raw").get("bytes_done", 0) >= MiB, signal.SIGINT)
    with pytest.raises(_signals.Interrupted) as failure:
        with _signals.interruptible():
            _download.run(request_for(server, pool, "disk.raw", image_format="raw"), open_source)
    assert sent.is_set()
    done = failure.value.details["bytes_done"]
    assert done >= MiB and "interrupted by SIGINT at %d%% (%d of %d bytes" % (
        100 * done // (8 * MiB), done, 8 * MiB) in failure.value.msg
    assert failure.value.msg.endswith("run again to resume")
    assert sorted(os.listdir(pool)) == [".disk.raw.part", ".disk.raw.part.json"]
    assert [t.name for t in threading.enumerate() if t.name.startswith("dd-")] == [], "the pipeline threads stopped"

    result = _download.run(request_for(server, pool, "disk.raw", image_format="raw"), open_source)
    assert result["resumed_from"] == done and result["bytes_downloaded"] == 8 * MiB - done
    assert server.requests_for("/disk.raw")[-1].headers["range"] == "bytes=%d-" % done


def test_interrupted_extraction_leaves_no_image_and_no_extraction(setup):
    root, pool, server = setup
    images.random_raw(str(root / "disk.raw"), size=48 * MiB)
    images.compress(root / "disk.raw", root / "disk.raw.gz", "gzip")
    extracting = _install.extracting_path(str(pool / "disk.raw"))
    _thread, sent = send_when(lambda: os.path.exists(extracting) and os.path.getsize(extracting) > 0,
                              signal.SIGTERM)
    with pytest.raises(_signals.Interrupted) as failure:
        with _signals.interruptible():
            _download.run(request_for(server, pool, "disk.raw.gz", image_format="raw"), open_source)
    assert sent.is_set() and failure.value.signal_name == "SIGTERM"
    # The compressed bytes were complete; the extraction is removed with them (see docs/download.md).
    assert os.listdir(pool) == []


def test_interrupted_segmented_download_keeps_its_state_and_resumes(setup):
    root, pool, server = setup
    images.random_raw(str(root / "disk.raw"), size=8 * MiB)
    digest = images.sha256_file(str(root / "disk.raw"))
    server.set_fault("/disk.raw", rate=512 * 1024)  # 8 s on two connections: the state is saved every 2 s
    (root / "disk.raw.meta4").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file '
        'name="disk.raw"><size>%d</size><hash type="sha-256">%s</hash><url priority="1">%s</url></file></metalink>'
        % (8 * MiB, digest, server.url("disk.raw")))
    sidecar = pool / ".disk.raw.part.json"  # one sidecar: progress figures and the piece map

    def saved():
        try:
            state = json.loads(sidecar.read_text())
            return state.get("bytes_done", 0) >= MiB and "segments" in state
        except (OSError, ValueError):
            return False

    _thread, sent = send_when(saved, signal.SIGTERM)
    before = set(threading.enumerate())  # other tests of this process may have left daemon threads
    request = request_for(server, pool, "disk.raw.meta4", image_format="raw", connections=2)
    with pytest.raises(_signals.Interrupted) as failure:
        with _signals.interruptible():
            _download.run(request, open_source)
    assert sent.is_set() and failure.value.details["bytes_done"] >= MiB
    assert "run again to resume" in failure.value.msg and "of %d bytes" % (8 * MiB) in failure.value.msg
    assert [t.name for t in set(threading.enumerate()) - before if t.name.startswith(("dd-range-", "dd-frontier"))] == [], \
        "the workers stopped"
    assert sorted(os.listdir(pool)) == [".disk.raw.part", ".disk.raw.part.json"]

    server.clear_faults()
    result = _download.run(request_for(server, pool, "disk.raw.meta4", image_format="raw", connections=2),
                           open_source)
    assert 0 < result["resumed_from"] <= failure.value.details["bytes_done"], "the next run resumed"
    assert images.sha256_file(result["path"]) == digest
