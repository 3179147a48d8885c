# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The engine call (_download) against a real loopback server and real qemu-img, without Ansible."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _download
from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import parse_checksum
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    ChecksumMismatch,
    InvalidInput,
    SourceError,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._http import SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import open_source
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

MiB = 1024 * 1024


@pytest.fixture
def www(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    images.qcow2(str(root / "disk.qcow2"), size=16 * MiB, writes=[(0, MiB, 0x5A)])
    return root


@pytest.fixture
def pool(tmp_path):
    path = tmp_path / "pool"
    path.mkdir()
    return path


@pytest.fixture
def server(www):
    with ImageServer(www) as srv:
        yield srv


def request_for(server, pool, path="disk.qcow2", **kwargs):
    kwargs.setdefault("source_options", SourceOptions(read_timeout=5))
    kwargs.setdefault("retry_delay", 0)
    kwargs.setdefault("progress_interval", 0)
    return _download.DownloadRequest(server.url(path), str(pool), **kwargs)


@pytest.mark.parametrize("url, name", [
    ("http://h/a/debian-12.qcow2", "debian-12.qcow2"),
    ("http://h/a/debian-12.qcow2.xz?sig=1", "debian-12.qcow2"),
    ("https://h/debian-12.qcow2.meta4", "debian-12.qcow2"),
    ("nfs://h/export/netinst.iso?version=4", "netinst.iso"),
])
def test_default_names(url, name):
    assert _download.default_name(url) == name


def test_request_validation(pool):
    with pytest.raises(InvalidInput, match="unsupported URL scheme"):
        _download.DownloadRequest("ftp://h/x.qcow2", str(pool))
    with pytest.raises(ValueError, match="unsafe file name"):
        _download.DownloadRequest("http://h/x.qcow2", str(pool), name="../x")
    with pytest.raises(InvalidInput, match="format must be one of"):
        _download.DownloadRequest("http://h/x.qcow2", str(pool), image_format="vmdk")


def test_plan_then_run_then_plan_again(server, pool, www):
    good = parse_checksum("sha256:" + images.sha256_file(str(www / "disk.qcow2")))
    request = request_for(server, pool, checksum=good)
    assert _download.plan(request).action == "download"
    result = _download.run(request, open_source)
    assert result["changed"] and result["format"] == "qcow2" and result["virtual_size"] == 16 * MiB
    assert result["checksum"] == good.cloudstack
    decision = _download.plan(request)
    assert (decision.action, decision.reason) == ("none", "installed with this checksum")
    again = _download.run(request, open_source)
    assert not again["changed"] and again["bytes_downloaded"] == 0
    assert sorted(os.listdir(pool)) == [".disk.qcow2.ddinfo.json", "disk.qcow2"], "no lock or part left behind"


def test_plan_decisions_for_existing_files(server, pool, www):
    source_sum = images.sha256_file(str(www / "disk.qcow2"))
    (pool / "disk.qcow2").write_bytes((www / "disk.qcow2").read_bytes())
    adopt = request_for(server, pool, checksum=parse_checksum("sha256:" + source_sum))
    assert _download.plan(adopt).action == "adopt"
    result = _download.run(adopt, open_source)
    assert result["changed"] and result["bytes_downloaded"] == 0 and "matches the checksum" in result["msg"]

    other = request_for(server, pool, checksum=parse_checksum("sha256:" + "0" * 64))
    assert _download.plan(other).action == "replace"
    assert _download.plan(request_for(server, pool, force=True)).action == "replace"

    os.utime(pool / "disk.qcow2", ns=(1, 1))  # touched: the record no longer vouches for the file
    decision = _download.plan(request_for(server, pool))
    assert decision.action == "replace" and "changed since it was recorded" in decision.reason

    (pool / "dir.qcow2").mkdir()
    with pytest.raises(InvalidInput, match="is a directory"):
        _download.plan(request_for(server, pool, name="dir.qcow2"))


def test_unrecorded_file_without_checksum_is_left_alone(server, pool):
    images.qcow2(str(pool / "disk.qcow2"), size=MiB)
    decision = _download.plan(request_for(server, pool))
    assert decision.action == "none" and "use force" in decision.reason
    result = _download.run(request_for(server, pool), open_source)
    assert not result["changed"] and result["format"] == "qcow2" and result["virtual_size"] == MiB


def test_progress_sidecar_and_resume_identity(server, pool, www):
    size = os.path.getsize(www / "disk.qcow2")
    server.set_fault("/disk.qcow2", truncate_at=size // 2, times=1)
    request = request_for(server, pool, retries=0, checksum=parse_checksum(
        "sha256:" + images.sha256_file(str(www / "disk.qcow2"))))
    with pytest.raises(SourceError) as failure:
        _download.run(request, open_source)
    assert failure.value.retryable and failure.value.details["attempts"] == 1
    sidecar = json.loads((pool / ".disk.qcow2.part.json").read_text())
    assert sidecar["bytes_done"] > 0 and sidecar["total"] == size
    assert sidecar["source"] == server.url("disk.qcow2") and sidecar["identity"]["checksums"]
    assert {"rate", "eta", "percent", "updated_at"} <= set(sidecar)

    # Another checksum is another identity: the part is not resumed for it.
    other = request_for(server, pool, retries=0)
    result = _download.run(other, open_source)
    assert result["resumed_from"] == 0 and result["bytes_downloaded"] == size


def test_mismatch_is_bounded_and_leaves_nothing(server, pool):
    server.set_fault("/disk.qcow2", corrupt_at=100)
    request = request_for(server, pool, checksum=parse_checksum("{MD5}" + "a" * 32))
    with pytest.raises(ChecksumMismatch) as failure:
        _download.run(request, open_source)
    assert failure.value.expected == "{MD5}" + "a" * 32 and not failure.value.retryable
    assert "after 3 downloads" in failure.value.msg
    assert os.listdir(pool) == []
