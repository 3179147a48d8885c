# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a module's ``main()`` in this process as Ansible runs it: arguments from ``basic._ANSIBLE_ARGS``, the result
read back from stdout."""

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.tests.unit.lib.modules import log_messages, run_module


@pytest.fixture(name="run")
def run_fixture(capsys, monkeypatch):
    def run(module, args, check_mode=False, diff=False):
        return run_module(module, args, capsys, monkeypatch, check=check_mode, diff=diff)[0]

    return run


@pytest.fixture
def logged(monkeypatch):
    """The messages the module logs on the host."""
    return log_messages(monkeypatch)
