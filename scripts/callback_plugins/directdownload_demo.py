# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Demo-only stdout callback (scripts/demo.sh): the demo as a short story instead of every task.

It prints no task banners and no ok/skipped lines. It keeps the results of the collection's own modules
(template, download, template_info) and, at the end, tells per round what was registered, what each host got and
that the second round moved nothing. Failures and unreachable hosts are printed as they happen, in full. Progress
lines of long downloads (the download action plugin) and warnings still appear. DEMO_VERBOSE=1 in scripts/demo.sh
uses Ansible's default output instead.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

from ansible_collections.directdownload.kvm.plugins.module_utils._progress import human_rate, human_seconds
from ansible_collections.directdownload.kvm.plugins.module_utils._install import human_size

DOCUMENTATION = r"""
name: directdownload_demo
type: stdout
short_description: The directdownload.kvm demo as a short story (demo helper)
description:
  - Used by scripts/demo.sh only. Prints failures as they happen and a summary per round at the end.
options: {}
"""

GiB = 1024 ** 3


def _digest(checksum):
    """The hex part of ``{SHA-256}hex`` or ``sha256:hex``, to compare checksums written in either form."""
    text = str(checksum or "")
    return text.rsplit("}", 1)[-1].rsplit(":", 1)[-1].strip().lower()


def _short(path):
    """``/.../.build/demo/pool-kvm-a/<name>`` -> ``pool-kvm-a/<name>``: the story fits a terminal line."""
    path = str(path or "")
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path)) if "/" in path else path


def _algorithm(checksum):
    text = str(checksum or "")
    if text.startswith("{"):
        return text[1:text.index("}")]
    return text.split(":", 1)[0].upper().replace("SHA", "SHA-") if ":" in text else "MD5"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "directdownload_demo"

    def __init__(self, display=None):
        super().__init__(display=display)
        self._round = 0
        self._rounds = {}  # round -> {"template": result, "downloads": {host: result}, "changed": n, "copies": ...}

    # -- collecting

    def _current(self):
        return self._rounds.setdefault(self._round, {"template": None, "downloads": {}, "changed": 0, "view": None,
                                                     "deployed": set()})

    def v2_playbook_on_play_start(self, play):
        demo_round = play.get_vars().get("demo_round")
        if isinstance(demo_round, int):
            self._round = demo_round

    def v2_runner_on_ok(self, result):
        task, payload = result.task, result.result
        action = task.resolved_action or task.action
        current = self._current()
        if payload.get("changed"):
            current["changed"] += 1
        role = getattr(task, "_role", None)
        if role is not None and role.get_name().endswith("deploy"):
            current["deployed"].add(result.host.get_name())
        if action == "directdownload.kvm.template" and payload.get("template") and not task.check_mode:
            current["template"] = payload
        elif action == "directdownload.kvm.download" and "results" not in payload:  # a loop's items come one by one
            current["downloads"][result.host.get_name()] = payload
        elif action == "directdownload.kvm.template_info" and payload.get("template"):
            current["view"] = payload

    def v2_runner_item_on_ok(self, result):
        self.v2_runner_on_ok(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        payload = result.result
        state = "failed (ignored)" if ignore_errors else "FAILED"
        self._display.display("%s: [%s] %s: %s" % (state, result.host.get_name(), result.task.get_name(),
                                                   payload.get("msg") or json.dumps(payload, default=repr)[:2000]),
                              stderr=not ignore_errors)

    def v2_runner_on_unreachable(self, result):
        text = "UNREACHABLE: [%s] %s: %s" % (result.host.get_name(), result.task.get_name(), result.result.get("msg", ""))
        self._display.display(text, stderr=True)

    # -- telling

    def _say(self, text=""):
        self._display.display(text)

    def _registered(self, record):
        if record is None:
            return "  registered   nothing (see the errors above)"
        template = record["template"]
        checksum = template.get("checksum")
        return ("  registered   %s: %s, %.2f GiB virtual (%s), %s on the mirror, %s %s..., %s"
                % (template["name"], template.get("format"), (template.get("virtual_size") or 0) / float(GiB),
                   human_size(template.get("virtual_size") or 0), human_size(template.get("size") or 0),
                   _algorithm(checksum), _digest(checksum)[:12],
                   ("probed on %s" % template.get("checked_on")) if record.get("changed")
                   else "unchanged, nothing probed"))

    def _got(self, host, result, template):
        if not result.get("changed"):
            return "  %-12s present, nothing downloaded (%s)" % (host, result.get("msg", "unchanged"))
        verified = template and _digest(template["template"].get("checksum")) == _digest(result.get("checksum"))
        extracted = result.get("extracted_from")
        extracted = ", %s extracted to %s" % (extracted, human_size(result.get("size") or 0)) if extracted else ""
        lines = ["  %-12s downloaded %s in %s (%s), %s%s" % (
            host, human_size(result.get("bytes_downloaded") or 0), human_seconds(result.get("elapsed") or 0),
            human_rate(result.get("rate") or 0), "checksum verified" if verified else "checksum computed", extracted)]
        lines.append("  %-12s qemu-img: %s, %s virtual, no backing file -> %s" % (
            "", result.get("format"), human_size(result.get("virtual_size") or 0), _short(result.get("path"))))
        return "\n".join(lines)

    def v2_playbook_on_stats(self, stats):
        for number in sorted(n for n in self._rounds if n):
            current = self._rounds[number]
            self._say("Round %d" % number)
            self._say(self._registered(current["template"]))
            for host in sorted(current["downloads"]):
                self._say(self._got(host, current["downloads"][host], current["template"]))
            quiet = sorted(current["deployed"] - set(current["downloads"]))
            if quiet:
                self._say("  %-12s copy present in the registry and the pool: nothing downloaded" % ", ".join(quiet))
            view = current["view"]
            if view:
                copies = ", ".join(sorted(str(c.get("host")) for c in view.get("copies") or []))
                template = view["template"]
                line = "  registry     %s: %s, copies on %s" % (template["name"], template.get("status"), copies or "none")
                self._say(line)
            moved = sum(r.get("bytes_downloaded") or 0 for r in current["downloads"].values())
            self._say("  %-12s %s downloaded, %d task(s) changed something" % ("", human_size(moved), current["changed"]))
        hosts = sorted(stats.processed)
        failed = [h for h in hosts if stats.summarize(h)["failures"] or stats.summarize(h)["unreachable"]]
        self._say("Recap: %d host(s) (%s), %s" % (len(hosts), ", ".join(hosts),
                                                  "failed: " + ", ".join(failed) if failed else "no failure"))
