# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Processes the tests started, seen through /proc: whether one still runs, its command line, stopping it by PID
once its command line says it is still ours. Each may end between any two steps: that counts as gone."""

from __future__ import annotations

import os
import signal
import time


def pid_alive(pid):
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid):
    """The command line of ``pid``, arguments joined by spaces (empty when it is gone)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def stop_pid(pid, must_contain, timeout=10):
    """SIGTERM ``pid`` (then SIGKILL) if its command line still contains ``must_contain``; wait until it is gone."""
    if not pid or not pid_alive(pid) or must_contain not in cmdline(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)  # a frozen server (freeze()) takes the SIGTERM only once it runs again
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.05)
    except ProcessLookupError:
        pass  # it ended by itself meanwhile
