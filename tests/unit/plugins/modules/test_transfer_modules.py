# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What is left in download and url_check: the diff, the mode option, format in any case, the failure shape."""

from __future__ import annotations

import os

from ansible_collections.directdownload.kvm.plugins.module_utils import _download
from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import parse_checksum
from ansible_collections.directdownload.kvm.plugins.modules import download, url_check
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

MiB = 1024 * 1024


def test_diff_for_a_new_image_and_an_installed_one(tmp_path):
    request = _download.DownloadRequest("https://u:p@m.example/d.qcow2", str(tmp_path),
                                        checksum=parse_checksum("sha256:" + "a" * 64))
    new = download.diff_for(_download.Plan("download", "not installed", {"path": request.final_path,
                                                                         "exists": False}), request)
    assert new["before"] == {"path": request.final_path, "exists": False}
    assert new["after"] == {"path": request.final_path, "exists": True, "url": "https://***@m.example/d.qcow2",
                            "checksum": "{SHA-256}" + "a" * 64}
    record = {"checksum": "{SHA-256}" + "a" * 64, "url": "https://m.example/d.qcow2"}
    same = download.diff_for(_download.Plan("none", "installed", {"path": request.final_path, "exists": True},
                                            record), request)
    assert same["before"] == same["after"] and same["before"]["checksum"] == record["checksum"]


def test_octal_modes_become_ints_symbolic_ones_stay_for_ansible():
    assert [download.octal_mode(m) for m in (None, 0o640, "0640", "640", "u=rw,g=r", "")] == [
        None, 0o640, 0o640, 0o640, None, None]


def test_download_takes_the_format_in_any_case_and_fails_with_the_retry_scope(tmp_path, run):
    www, pool = tmp_path / "www", tmp_path / "pool"
    www.mkdir()
    pool.mkdir()
    images.sparse_raw(www / "disk.raw", MiB, data=[(0, 4096)])
    with ImageServer(www) as srv:
        done = run(download, {"url": srv.url("disk.raw"), "pool_path": str(pool), "format": "RAW"})
        assert done.get("failed") is not True, done
        assert done["format"] == "raw" and (pool / "disk.raw").exists()
        missing = run(download, {"url": srv.url("gone.raw"), "pool_path": str(pool), "retries": 0})
    assert missing["failed"] is True and missing["status"] == 404 and missing["url"] == srv.url("gone.raw")
    assert (missing["retry_here"], missing["retry_elsewhere"]) == (False, False)
    assert "retryable" not in missing
    refused = run(download, {"url": srv.url("disk.raw"), "pool_path": str(pool), "format": "vmdk"})
    assert refused["failed"] is True and "format must be one of qcow2, raw, iso" in refused["msg"]
    assert sorted(os.listdir(str(pool))) == [".disk.raw.ddinfo.json", "disk.raw"]


def test_url_check_takes_the_format_in_any_case(tmp_path, run):
    images.sparse_raw(tmp_path / "disk.iso", MiB, data=[(0, 4096)])
    with ImageServer(tmp_path) as srv:
        result = run(url_check, {"url": srv.url("disk.iso"), "format": "ISO"})
        refused = run(url_check, {"url": srv.url("disk.iso"), "format": "img"})
    assert result["reachable"] is True and result["format_matches"] is False, "a raw file is not an ISO"
    assert "retry_elsewhere" not in result and "retryable" not in result
    assert refused["failed"] is True and refused["reachable"] is False and refused["retry_elsewhere"] is False
