# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a module's ``main()`` in this process as Ansible runs it: arguments from ``basic._ANSIBLE_ARGS``, the result
read back from stdout."""

from __future__ import annotations

import json
import os

import pytest
from ansible.module_utils import basic


@pytest.fixture(name="run")
def run_fixture(capsys, monkeypatch):
    def run(module, args, check_mode=False, diff=False):
        args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
        monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode())
        monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy")
        monkeypatch.setenv("DIRECTDOWNLOAD_SETTINGS", os.devnull + ".absent")
        capsys.readouterr()
        with pytest.raises(SystemExit):
            module.main()
        return json.loads(capsys.readouterr().out)

    return run
