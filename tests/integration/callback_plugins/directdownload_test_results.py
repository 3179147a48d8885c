# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test-only callback: append every task result as one JSON line to a file.

The integration test helpers (``tests/integration/conftest.py``) enable it through the environment and read the
file back, so tests assert on structured results instead of parsing ansible-playbook's screen output.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: directdownload_test_results
type: aggregate
short_description: Write each task result as a JSON line (test helper)
description:
  - Appends one JSON object per task result to the file named by the E(DIRECTDOWNLOAD_TEST_RESULTS) environment
    variable. Used only by the collection's integration tests.
options: {}
"""

RESULTS_FILE_ENV = "DIRECTDOWNLOAD_TEST_RESULTS"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "directdownload_test_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super().__init__(display=display)
        self._path = os.environ.get(RESULTS_FILE_ENV)

    def _record(self, result, status, ignored=False):
        if not self._path:
            return
        task = result.task
        payload = dict(result.result)
        role = getattr(task, "_role", None)
        record = {
            "host": result.host.get_name(),
            # "<role fqcn> : <name>" for a role's task, as ansible-playbook prints it; "name" is the bare name.
            "task": task.get_name(),
            "name": task.name or task.action,
            "role": role.get_name() if role else None,
            "action": task.action,
            "status": status,
            "ignored": ignored,
            "result": payload,
        }
        # default=repr: a result may hold values json cannot encode; a test only needs to read them
        with open(self._path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=repr) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result, "changed" if result.result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed", ignored=ignore_errors)

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_runner_on_async_failed(self, result):
        self._record(result, "failed")
