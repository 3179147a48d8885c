# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""require.py: a missing real part skips a test here and fails it under CI=true."""

from __future__ import annotations

import inspect
import sys

import pytest

from ansible_collections.directdownload.kvm.tests.unit.lib import require


@pytest.mark.parametrize("value", ["true", "True", "1", "yes"])
def test_missing_part_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception) as info:
        require.require_tool("no-such-tool-4f2a")
    assert "no-such-tool-4f2a is not installed" in str(info.value) and "CI=" + value in str(info.value)


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_missing_part_skips_elsewhere(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception):
        require.require("nfs-ganesha is not installed")
    with pytest.raises(pytest.skip.Exception):
        require.require_tool("keytool", lambda: None)


def test_present_parts_pass(monkeypatch):
    monkeypatch.setenv("CI", "true")
    require.require(None)
    require.require("")
    assert require.require_tool("python", lambda: sys.executable) == sys.executable


def test_needs_tool_checks_when_the_test_runs(monkeypatch):
    calls = []

    @require.needs_tool("no-such-tool-4f2a")
    def body(tmp_path):
        calls.append(tmp_path)

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        body("x")
    assert not calls
    assert list(inspect.signature(body).parameters) == ["tmp_path"]  # pytest still sees the fixtures
