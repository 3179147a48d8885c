# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The bounds of one download task: retries, retry_delay and connections (DownloadRequest validation)."""

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._download import DownloadRequest
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput

URL = "http://127.0.0.1:9/disk.qcow2"


@pytest.mark.parametrize("option, value, words", [
    ("retries", -1, "retries must be a whole number from 0 to 100, got -1"),
    ("retries", 101, "retries must be a whole number from 0 to 100, got 101"),
    ("retries", 10 ** 9, "retries must be a whole number from 0 to 100"),
    ("retry_delay", -0.5, "retry_delay must be from 0 to 3600 seconds, got -0.5"),
    ("retry_delay", 3601, "retry_delay must be from 0 to 3600 seconds, got 3601"),
    ("retry_delay", float("nan"), "retry_delay must be from 0 to 3600 seconds"),
    ("retry_delay", float("inf"), "retry_delay must be from 0 to 3600 seconds"),
    ("connections", 0, "connections must be a whole number from 1 to 16, got 0"),
    ("connections", -3, "connections must be a whole number from 1 to 16, got -3"),
    ("connections", 1500, "connections must be a whole number from 1 to 16, got 1500"),
])
def test_out_of_bounds_is_refused_with_one_clear_message(option, value, words):
    with pytest.raises(InvalidInput) as err:
        DownloadRequest(URL, "/pool", **{option: value})
    assert words in err.value.msg
    assert (err.value.retry_here, err.value.retry_elsewhere) == (False, False)


@pytest.mark.parametrize("option, value", [
    ("retries", 0), ("retries", 100), ("retry_delay", 0), ("retry_delay", 3600), ("retry_delay", 0.25),
    ("connections", 1), ("connections", 16),
])
def test_bounds_are_inclusive(option, value):
    assert getattr(DownloadRequest(URL, "/pool", **{option: value}), option) == value
