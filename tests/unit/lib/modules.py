# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a module's ``main()`` in this process as Ansible runs it: arguments from ``basic._ANSIBLE_ARGS``, the result
read back from stdout (the ``run`` and ``logged`` fixtures of tests/unit/plugins/modules/conftest.py use it)."""

from __future__ import annotations

import json
import os

import pytest
from ansible.module_utils import basic


def run_module(module, args, capsys, monkeypatch, check=False, diff=False):
    """Run ``module.main()`` with ``args``; return (result dict, raw stdout). No agent settings file is read."""
    args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode())
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy")
    monkeypatch.setenv("DIRECTDOWNLOAD_SETTINGS", os.devnull + ".absent")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        module.main()
    out = capsys.readouterr().out
    return json.loads(out), out


def log_messages(monkeypatch):
    """What the module would write to the host's log (syslog/journal), as a list that fills while it runs."""
    messages = []
    monkeypatch.setattr(basic, "has_journal", False)
    monkeypatch.setattr(basic.AnsibleModule, "_log_to_syslog", lambda self, msg: messages.append(msg))
    return messages
