#!/usr/bin/env python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Scale benchmark: deploy one template to N KVM hosts at once (forks = N) and compare with one host.

    .venv/bin/python benchmarks/bench_scale.py                       # N = 1, 3, 6; 128 MiB image; 3 rounds
    .venv/bin/python benchmarks/bench_scale.py --hosts 1,3 --size 256M --runs 5

The hosts are network namespaces with their own sshd and libvirtd (tests/integration/hosts/), reached over real
SSH with pipelining. The mirror is tests/unit/lib/servers.py (sendfile) in its own namespace, so the controller's
CPU is not the mirror's. Each round registers the template in a fresh registry (not timed), then times
``playbooks/deploy_template.yml`` on kvmhost1..N: claim in the registry, download into the host's libvirt pool,
record the copy. Rounds of different N are interleaved (1, 3, 6, 1, 3, 6, ...) so that a slow spell of the machine
hits every N alike; medians are reported.

Reported per N:
  wall         deploy playbook wall time (median)
  ratio        wall(N) / wall(1); target <= 1.5 when the mirror is not the bottleneck
  claim, record  the registry's concurrent-write time: from the start of the claim (or record) task to the last
               host's answer, N writers delegated to the registry host at once (ansible's junit callback times)
  download     slowest host's download task
  cpu busy     share of the whole machine's CPU time in use during the deploy (all "hosts" share this machine's
               CPUs: near 1.0 means the run was CPU-bound, so wall(N) measures the CPUs, not the parallelism)
Results go to benchmarks/output/scale-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / ".build" / "collections"))
sys.path.insert(0, str(HERE))

# pylint: disable=wrong-import-position
import bench_download as bench  # noqa: E402
from ansible_collections.directdownload.kvm.tests.integration.conftest import run_playbook_in  # noqa: E402
from ansible_collections.directdownload.kvm.tests.integration.hosts.kvmhosts import KvmHosts, can_run  # noqa: E402
from ansible_collections.directdownload.kvm.tests.unit.lib import images  # noqa: E402

PLAYBOOKS = REPO / "playbooks"
MIRROR_PORT = 8080


def start_mirror(hosts, root):
    """servers.py in the mirror namespace; returns (process, base URL)."""
    proc = hosts.mirror_popen(
        [sys.executable, "-m", "ansible_collections.directdownload.kvm.tests.unit.lib.servers",
         "--root", str(root), "--host", hosts.mirror_address, "--port", str(MIRROR_PORT)],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / ".build" / "collections")})
    base_url = proc.stdout.readline().strip()
    if not base_url.startswith("http"):
        proc.kill()
        raise RuntimeError("the mirror did not start")
    return proc, base_url


def cpu_ticks():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def task_spans(junit_dir):
    """{task name: max seconds over hosts} from ansible's junit callback (time = task start to host's answer)."""
    spans = {}
    for path in Path(junit_dir).glob("*.xml"):
        for case in ET.parse(path).getroot().iter("testcase"):
            name = case.get("name", "")
            # "[host] role : task name" (or "[host -> delegate] ...")
            task = name.split("] ", 1)[-1]
            spans[task] = max(spans.get(task, 0.0), float(case.get("time", "0")))
    return spans


def span_of(spans, suffix):
    found = [seconds for task, seconds in spans.items() if task.endswith(suffix)]
    return max(found) if found else None


def one_round(hosts, workdir, count, url, checksum, round_no):
    """Register (untimed) then deploy to kvmhost1..count (timed); returns a result dict."""
    registry = workdir / f"registry-{count}-{round_no}.json"
    env = hosts.ansible_env(forks=count)
    common = {"directdownload_registry": str(registry), "deploy_claim_delay": 1}
    run_playbook_in(workdir / "ansible", PLAYBOOKS / "register_template.yml", inventory=hosts.inventory, env=env,
                    extra_vars={**common, "template_name": "scale", "template_url": url, "template_format": "raw",
                                "template_checksum": checksum, "probe_hosts": ["kvmhost1"]})
    junit_dir = workdir / f"junit-{count}-{round_no}"
    deploy_env = {**env, "ANSIBLE_CALLBACKS_ENABLED": "directdownload_test_results,ansible.builtin.junit",
                  "JUNIT_OUTPUT_DIR": str(junit_dir), "JUNIT_INCLUDE_SETUP_TASKS_IN_REPORT": "False",
                  "JUNIT_HIDE_TASK_ARGUMENTS": "True"}
    limit = ":".join(hosts.names[:count])
    busy_before, total_before = cpu_ticks()
    started = time.monotonic()
    run = run_playbook_in(workdir / "ansible", PLAYBOOKS / "deploy_template.yml", inventory=hosts.inventory,
                          env=deploy_env, extra_args=["--limit", limit],
                          extra_vars={**common, "template_name": "scale",
                                      "directdownload_pools": [{"libvirt_pool": "primary", "name": "primary"}]})
    wall = time.monotonic() - started
    busy_after, total_after = cpu_ticks()
    # one download task per host, looping over the candidate hosts: its items are the attempts
    downloads = [item for r in run.results if r["action"] == "directdownload.kvm.download"
                 for item in r["result"].get("results", []) if item.get("changed")]
    if len(downloads) != count:
        raise RuntimeError(f"expected {count} downloads, saw {len(downloads)}")
    spans = task_spans(junit_dir)
    # Free the pools for the next round (the next registration makes a new template id anyway).
    for name in hosts.names[:count]:
        hosts.ssh(name, "find /var/lib/libvirt/images -maxdepth 1 -type f -delete && virsh -q pool-refresh primary")
    return {
        "hosts": count, "round": round_no, "wall": wall,
        "claim": span_of(spans, "Claim the download onto the pool, or find the copy"),
        "record": span_of(spans, "Record the copy from the attempt that succeeded, or release the claim"),
        "download": max(item.get("elapsed", 0.0) for item in downloads),
        "cpu_busy": (busy_after - busy_before) / max(1, total_after - total_before),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="1,3,6", help="comma-separated host counts (default 1,3,6)")
    parser.add_argument("--size", default="128M", help="image size (random bytes, raw; default 128M)")
    parser.add_argument("--runs", type=int, default=3, help="rounds per host count (default 3)")
    parser.add_argument("--output", default=str(HERE / "output"))
    args = parser.parse_args()
    counts = [int(n) for n in args.hosts.split(",")]
    reason = can_run()
    if reason:
        sys.exit(f"bench_scale: {reason}")

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = Path(tmp)
        mirror_root = workdir / "www"
        mirror_root.mkdir()
        image = images.random_raw(mirror_root / "scale.raw", bench.parse_size(args.size), seed=7)
        checksum = "sha256:" + images.sha256_file(image)
        with KvmHosts(workdir / "hosts", count=max(counts)) as hosts:
            mirror, base_url = start_mirror(hosts, mirror_root)
            try:
                url = base_url.rstrip("/") + "/scale.raw"
                run_playbook_in(workdir / "ansible", [{
                    "hosts": "kvm_hosts", "gather_facts": False,
                    "roles": [{"role": "directdownload.kvm.agent", "vars": {
                        "agent_install_packages": False,
                        "agent_libvirt_pool": {"name": "primary", "path": "/var/lib/libvirt/images"}}}],
                }], inventory=hosts.inventory, env=hosts.ansible_env(forks=max(counts)))
                results = []
                for round_no in range(args.runs):
                    for count in counts:
                        result = one_round(hosts, workdir, count, url, checksum, round_no)
                        print(f"round {round_no + 1}/{args.runs} N={count}: wall {result['wall']:.1f} s, "
                              f"claim {result['claim']:.2f} s, record {result['record']:.2f} s, "
                              f"download {result['download']:.1f} s, cpu busy {result['cpu_busy']:.2f}", flush=True)
                        results.append(result)
            finally:
                mirror.terminate()
                mirror.wait(timeout=10)

    report(results, counts, args, output)


def report(results, counts, args, output):
    medians = {}
    for count in counts:
        rows = [r for r in results if r["hosts"] == count]
        medians[count] = {key: statistics.median(r[key] for r in rows) for key in ("wall", "claim", "record", "download", "cpu_busy")}
    base = medians[counts[0]]["wall"]
    print(f"\nDeploy one {args.size} template to N hosts, forks = N, {args.runs} rounds, medians "
          f"({os.cpu_count()} CPUs):")
    print(f"{'N':>3} {'wall s':>8} {'ratio':>6} {'claim s':>8} {'record s':>9} {'download s':>11} {'cpu busy':>9}")
    for count in counts:
        m = medians[count]
        print(f"{count:>3} {m['wall']:>8.1f} {m['wall'] / base:>6.2f} {m['claim']:>8.2f} {m['record']:>9.2f} "
              f"{m['download']:>11.1f} {m['cpu_busy']:>9.2f}")
    path = output / time.strftime("scale-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps({"size": args.size, "runs": args.runs, "cpus": os.cpu_count(), "results": results,
                                "medians": {str(k): v for k, v in medians.items()}}, indent=2))
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
