# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a Python script (an Ansible module file with its args file) and, as it exits, write what it cost:
peak RSS (VmHWM) and bytes read (``rchar``: every read(2), file or socket) from /proc/self.

Usage: python _measure.py REPORT.json SCRIPT [ARGS...]
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys


def _proc_fields(path, wanted, sep):
    values = {}
    with open(path, encoding="ascii") as handle:
        for line in handle:
            key, _sep, value = line.partition(sep)
            if key.strip() in wanted:
                values[key.strip()] = value.strip()
    return values


def main():
    report_path, script = sys.argv[1], sys.argv[2]

    def report():
        status = _proc_fields("/proc/self/status", ("VmHWM",), ":")
        io = _proc_fields("/proc/self/io", ("rchar", "wchar"), ":")
        with open(report_path, "w", encoding="ascii") as handle:
            json.dump({"peak_rss_kib": int(status["VmHWM"].split()[0]), "rchar": int(io["rchar"]),
                       "wchar": int(io["wchar"])}, handle)

    atexit.register(report)
    sys.argv = [script] + sys.argv[3:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
