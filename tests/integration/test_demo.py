# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""``make demo``'s script, run for real (loopback mirror, qemu-img, ansible-playbook) in a temporary directory: it
tells the story in at most 60 lines, and the story says what the demo is meant to show."""

from __future__ import annotations

import os
import re
import subprocess

from ansible_collections.directdownload.kvm.tests.integration.conftest import REPO_ROOT

LINE_BUDGET = 60


def test_the_demo_tells_its_story_within_the_line_budget(tmp_path):
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"), DEMO_PORT="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local-tmp"))
    env.pop("DEMO_VERBOSE", None)
    run = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "demo.sh")], cwd=str(REPO_ROOT), env=env,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    lines = out.splitlines()
    assert len(lines) <= LINE_BUDGET, out
    assert "TASK [" not in out and "skipping:" not in out, out
    round1, round2 = out.split("\nRound 1\n", 1)[1].split("\nRound 2\n", 1)
    assert re.search(r"registered +demo-template: qcow2, 0\.06 GiB virtual \(64\.0 MiB\), [\d.]+ MiB on the mirror, "
                     r"SHA-256 [0-9a-f]{12}\.\.\., probed on kvm-[ab]", round1), out
    for host in ("kvm-a", "kvm-b"):
        assert re.search(r"  %s +downloaded [\d.]+ MiB in [\d.]+ s \([\d.]+ MB/s\), checksum verified, gzip extracted "
                         r"to [\d.]+ MiB\n +qemu-img: qcow2, 64\.0 MiB virtual, no backing file -> pool-%s/[0-9a-f-]{36}"
                         % (host, host), round1), out
    assert re.search(r"registry +demo-template: Bypassed Secondary Storage, copies on kvm-a, kvm-b", round1), out
    assert "unchanged, nothing probed" in round2 and "downloaded [" not in round2
    # The deploy role asks download again (which finds the image installed) or skips it for a recorded copy.
    for host in ("kvm-a", "kvm-b"):
        assert re.search(r"  %s +present, nothing downloaded|kvm-a, kvm-b copy present in the registry and the pool: "
                         r"nothing downloaded" % host, round2), out
    assert re.search(r"0 B downloaded, 0 task\(s\) changed something\nRecap: 3 host\(s\) .*, no failure", round2), out
