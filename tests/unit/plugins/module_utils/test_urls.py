# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._urls import (
    file_name_from_url,
    is_metalink_url,
    redact_url,
    safe_file_name,
    strip_compression_suffix,
)


def test_redaction_hides_credentials_and_query_values():
    url = "https://user:s3cret@example.com/a/disk.qcow2?X-Signature=abc&plain"
    shown = redact_url(url)
    assert "s3cret" not in shown and "user" not in shown and "abc" not in shown
    assert shown == "https://***@example.com/a/disk.qcow2?X-Signature=***&plain"


@pytest.mark.parametrize("url, content_type, expected", [
    ("http://h/x.meta4", None, True),
    ("http://h/x.METALINK?a=b", None, True),
    ("http://h/x.qcow2", "application/metalink4+xml; charset=utf-8", True),
    ("http://h/x.qcow2", "application/octet-stream", False),
    ("http://h/x.qcow2?f=.meta4", None, False),
])
def test_metalink_detection(url, content_type, expected):
    assert is_metalink_url(url, content_type) is expected


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "C:\\x", ".hidden", "", "a..b", "x\x00"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValueError):
        safe_file_name(name)


def test_names_from_urls():
    assert file_name_from_url("http://h/images/debian-12.qcow2.gz?sig=1") == "debian-12.qcow2.gz"
    assert strip_compression_suffix("debian-12.qcow2.gz") == "debian-12.qcow2"
    assert strip_compression_suffix("plain.raw") == "plain.raw"
    with pytest.raises(ValueError):
        file_name_from_url("http://h/")


def test_nfs_version_stays_readable():
    assert redact_url("nfs://h/export/x.qcow2?version=4") == "nfs://h/export/x.qcow2?version=4"
