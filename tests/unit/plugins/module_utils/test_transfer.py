# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The multi-source transfer against real loopback servers: the scheduler (stealing from a slow source, connection
caps), the one sidecar schema with progress figures, and the engine with a URL and ``mirrors`` (failover,
segmented, the ``sources`` result naming the source that served bad bytes)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import types

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _download
from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import Checksum
from ansible_collections.directdownload.kvm.plugins.module_utils._description import (
    FileDescription,
    SourceRef,
    from_urls,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import ChecksumMismatch
from ansible_collections.directdownload.kvm.plugins.module_utils._http import HttpSource, SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import open_source as engine_source
from ansible_collections.directdownload.kvm.plugins.module_utils._transfer import (
    MultiSource,
    segmented_download,
    sidecar_path,
)

NAME = "img.raw"
SIZE = 6 * 1024 * 1024 + 4321
UNIT = 256 * 1024
OPTIONS = SourceOptions(connect_timeout=2, read_timeout=5)


def open_source(url):
    return HttpSource(url, OPTIONS)


@pytest.fixture()
def image(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / NAME).write_bytes(data)
    pool = tmp_path / "pool"
    pool.mkdir()
    return types.SimpleNamespace(root=root, name=NAME, data=data, sha256=hashlib.sha256(data).hexdigest(), pool=pool,
                                 part=str(tmp_path / (".%s.part" % NAME)))


# servers: tests/unit/conftest.py (loopback servers over this module's image)


def description(image, *servers_, **kwargs):
    sources = [SourceRef(server.url(NAME), rank) for rank, server in enumerate(servers_)]
    return FileDescription(NAME, size=SIZE, hashes=[Checksum("sha256", image.sha256)], sources=sources, **kwargs)


def test_a_fast_source_steals_the_work_of_a_slow_one(image, servers):
    slow, fast = servers(rate=256 * 1024), servers()
    described = description(image, slow, fast)
    result = segmented_download(described, open_source, image.part, connections=2, unit_size=UNIT,
                                checksums=described.expected_checksums())
    by_url = {entry["url"]: entry for entry in result["sources"]}
    assert result["digests"]["sha256"] == image.sha256
    # The slow source had half the file to begin with; the fast one took most of it over.
    assert by_url[fast.url(NAME)]["bytes"] > 0.75 * SIZE
    assert by_url[slow.url(NAME)]["bytes"] + by_url[fast.url(NAME)]["bytes"] == SIZE


def test_the_file_connection_cap_holds(image, servers):
    first, second = servers(rate=2 * 1024 * 1024), servers(rate=2 * 1024 * 1024)
    described = description(image, first, second, max_connections=1)
    result = segmented_download(described, open_source, image.part, connections=4, unit_size=UNIT,
                                checksums=described.expected_checksums())
    assert result["connections"] == 1
    assert result["digests"]["sha256"] == image.sha256


def test_the_sidecar_holds_progress_and_the_piece_map_in_one_schema(image, servers):
    first, second = servers(rate=2 * 1024 * 1024), servers(rate=2 * 1024 * 1024)
    described = description(image, first, second)
    written = []
    seen = threading.Event()

    def state_writer(done, total, segments):
        written.append((done, total, segments))

    def progress(done, total):
        if done >= total // 3 and not seen.is_set():
            seen.set()
            raise KeyboardInterrupt()

    with pytest.raises(KeyboardInterrupt):
        segmented_download(described, open_source, image.part, connections=2, unit_size=UNIT, save_interval=0.05,
                           checksums=described.expected_checksums(), progress=progress)
    state = json.loads(open(sidecar_path(image.part)).read())
    assert state["total"] == SIZE and 0 < state["bytes_done"] < SIZE
    assert state["segments"]["unit"] == UNIT and state["segments"]["done"]
    done_units = sum(stop - start for start, stop in state["segments"]["done"])
    assert state["bytes_done"] == done_units * UNIT
    # The resume takes the same sidecar; a state_writer gets every save (the engine's progress figures).
    result = segmented_download(described, open_source, image.part, connections=2, unit_size=UNIT,
                                save_interval=0.05, checksums=described.expected_checksums(),
                                state_writer=state_writer)
    assert result["resumed_bytes"] == state["bytes_done"]
    assert written[0][0] == state["bytes_done"] and written[0][1] == SIZE
    assert written[0][2]["done"] == state["segments"]["done"]
    with open(image.part, "rb") as handle:
        assert handle.read() == image.data


def test_a_url_with_mirrors_fails_over_in_one_stream(image, servers):
    missing, good = servers(status=404), servers()
    source = MultiSource(from_urls(missing.url(NAME), NAME, [good.url(NAME)]), open_source)
    assert not source.segmented
    body = source.open()
    assert body.url == good.url(NAME)
    body.close()
    assert [e["url"] for e in source.mirror_errors] == [missing.url(NAME)]


def request_for(image, url, **kwargs):
    kwargs.setdefault("source_options", OPTIONS)
    kwargs.setdefault("retry_delay", 0)
    kwargs.setdefault("image_format", "raw")
    kwargs.setdefault("progress_interval", 0.2)
    return _download.DownloadRequest(url, str(image.pool), name=NAME, **kwargs)


def test_the_engine_downloads_a_url_with_mirrors_in_ranges_and_reports_each_source(image, servers):
    first, second = servers(rate=4 * 1024 * 1024), servers(rate=4 * 1024 * 1024)
    request = request_for(image, first.url(NAME), mirrors=[{"url": second.url(NAME), "priority": 1}],
                          connections=2, checksum=Checksum("sha256", image.sha256))
    result = _download.run(request, engine_source)
    assert result["changed"] and result["checksum"] == "{SHA-256}" + image.sha256
    assert [entry["url"] for entry in result["sources"]] == [first.url(NAME), second.url(NAME)]
    assert all(entry["bytes"] > 0 and entry["error"] is None for entry in result["sources"])
    assert sum(entry["bytes"] for entry in result["sources"]) == SIZE
    assert result["metalink_notes"] == []
    with open(result["path"], "rb") as handle:
        assert handle.read() == image.data


def test_the_engine_names_the_mirror_that_served_wrong_bytes(image, servers):
    corrupt, good = servers(corrupt_at=1000), servers()
    logged = []
    request = request_for(image, corrupt.url(NAME), mirrors=[good.url(NAME)],
                          checksum=Checksum("sha256", image.sha256))
    result = _download.run(request, engine_source, log=logged.append)
    by_url = {entry["url"]: entry for entry in result["sources"]}
    assert "checksum mismatch" in by_url[corrupt.url(NAME)]["error"]
    assert by_url[good.url(NAME)]["error"] is None and by_url[good.url(NAME)]["bytes"] == SIZE
    assert result["url"] == good.url(NAME)
    assert any("checksum mismatch from" in line for line in logged)


def test_every_mirror_wrong_is_a_mismatch_naming_them(image, servers):
    first, second = servers(corrupt_at=10), servers(corrupt_at=20)
    request = request_for(image, first.url(NAME), mirrors=[second.url(NAME)], mismatch_retries=5,
                          checksum=Checksum("sha256", image.sha256))
    with pytest.raises(ChecksumMismatch) as info:
        _download.run(request, engine_source)
    assert [entry["url"] for entry in info.value.details["sources"]] == [first.url(NAME), second.url(NAME)]
    assert all("checksum mismatch" in entry["error"] for entry in info.value.details["sources"])
    assert os.listdir(image.pool) == []


def test_a_plain_download_reports_its_one_source(image, servers):
    server = servers()
    result = _download.run(request_for(image, server.url(NAME)), engine_source)
    assert result["sources"] == [dict(url=server.url(NAME), bytes=SIZE, pieces_rejected=0, error=None)]
