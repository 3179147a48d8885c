#!/usr/bin/env python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fan-out benchmark: deploy one template to N namespaced hosts with ``deploy_fanout: true`` and without, in one run.

    .venv/bin/python benchmarks/bench_fanout.py                      # N = 1, 3, 6; 256 MiB image; origin 25 MB/s
    .venv/bin/python benchmarks/bench_fanout.py --hosts 1,3 --size 64M --origin-rate 10000000

The hosts are network namespaces with their own sshd (tests/integration/hosts/, no libvirtd), each with its own
pool directory, reached over real SSH with pipelining, forks = N. The origin is tests/unit/lib/servers.py on the
bridge address with ONE token bucket shared by all its connections (``--origin-rate`` bytes/s, default 25 MB/s:
the origin's uplink, the bottleneck in the field). Each round registers the template in a fresh registry (not
timed), then times ``playbooks/deploy_template.yml`` on kvmhost1..N.

Reported per N and mode (fanout, origin):
  origin MiB   bytes the origin sent for the image during the deploy, and that over the image size
  wall         deploy playbook wall time (start to the last host's report)
  rate         per-host download rate (MB/s; median over the hosts, from the deploy report)
  cpu busy     share of the whole machine's CPU time in use during the deploy (every "host" shares these CPUs)
Targets: origin bytes <= 1.05 x image at every N with fan-out; wall(N=6) <= 2.5 x wall(N=1) with fan-out (origin-only
needs >= 6x). Results go to benchmarks/output/fanout-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
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
from ansible_collections.directdownload.kvm.tests.unit.lib import servers  # noqa: E402

PLAYBOOKS = REPO / "playbooks"


class SharedBucket:
    """One token bucket for every connection of the origin."""

    def __init__(self, rate):
        self.rate = float(rate)
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.sent = 0

    def delay(self, count):
        with self.lock:
            now = time.monotonic()
            # Idle time does not bank credit beyond a tenth of a second.
            self.start = max(self.start, now - self.sent / self.rate - 0.1) if self.sent else now
            self.sent += count
            return self.start + self.sent / self.rate - now


def shared_rate_origin(root, host, rate):
    """An ImageServer whose ``rate`` fault paces all connections together."""
    bucket = SharedBucket(rate)

    def pace(handler, count, _rate):
        wait = bucket.delay(count)
        if wait > 0:
            handler.server.owner.stopping.wait(wait)

    servers._ImageHandler._pace = pace  # pylint: disable=protected-access
    server = servers.ImageServer(root, host=host, rate=rate)
    return server


def cpu_ticks():
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def one_round(hosts, workdir, origin, count, mode, url, checksum, size, path, per_holder=1):
    registry = workdir / f"registry-{count}-{mode}.json"
    env = hosts.ansible_env(forks=count)
    pools = workdir / f"pools-{count}-{mode}"
    common = {"directdownload_registry": str(registry), "deploy_claim_delay": 1,
              "directdownload_pools": [{"path": str(pools / "{{ inventory_hostname }}"), "name": "local"}],
              "directdownload_peer_state_dir": str(workdir / "peer-{{ inventory_hostname }}")}
    for name in hosts.names[:count]:
        (pools / name).mkdir(parents=True)
    run_playbook_in(workdir / "ansible", PLAYBOOKS / "register_template.yml", inventory=hosts.inventory, env=env,
                    extra_vars={**common, "template_name": "bench", "template_url": url, "template_format": "raw",
                                "template_checksum": checksum, "probe_hosts": ["kvmhost1"]})
    report = workdir / f"report-{count}-{mode}.json"
    sent_before = sum(r.bytes_sent or 0 for r in origin.requests if r.path == path and r.method == "GET")
    busy_before, total_before = cpu_ticks()
    started = time.monotonic()
    run_playbook_in(workdir / "ansible", PLAYBOOKS / "deploy_template.yml", inventory=hosts.inventory, env=env,
                    extra_args=["--limit", ":".join(hosts.names[:count])], timeout=1800,
                    extra_vars={**common, "template_name": "bench", "deploy_fanout": mode == "fanout",
                                "deploy_fanout_per_holder": per_holder, "deploy_report_path": str(report)})
    wall = time.monotonic() - started
    busy_after, total_after = cpu_ticks()
    origin.wait_idle()
    sent = sum(r.bytes_sent or 0 for r in origin.requests if r.path == path and r.method == "GET") - sent_before
    rows = json.loads(report.read_text())
    if sorted(r["status"] for r in rows) != ["downloaded"] * count:
        raise RuntimeError(f"N={count} {mode}: not every host downloaded: {[(r['host'], r['status']) for r in rows]}")
    for name in hosts.names[:count]:
        for entry in (pools / name).iterdir():
            entry.unlink()
    return {"hosts": count, "mode": mode, "wall": wall, "origin_bytes": sent, "origin_ratio": sent / size,
            "rate_mb_s": statistics.median(r["rate_mb_s"] or 0 for r in rows),
            "peer_bytes": sum(r.get("peer_bytes") or 0 for r in rows),
            "cpu_busy": (busy_after - busy_before) / max(1, total_after - total_before)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="1,3,6", help="comma-separated host counts (default 1,3,6)")
    parser.add_argument("--size", default="256M", help="image size (random bytes, raw; default 256M)")
    parser.add_argument("--origin-rate", type=int, default=25 * 1000 * 1000, help="origin bytes/s (default 25 MB/s)")
    parser.add_argument("--per-holder", type=int, default=1, help="deploy_fanout_per_holder (default 1: doubling)")
    parser.add_argument("--modes", default="fanout,origin", help="comma-separated: fanout, origin (default both)")
    parser.add_argument("--output", default=str(HERE / "output"))
    args = parser.parse_args()
    modes = args.modes.split(",")
    counts = [int(n) for n in args.hosts.split(",")]
    reason = can_run()
    if reason:
        sys.exit(f"bench_fanout: {reason}")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        workdir = Path(tmp)
        root = workdir / "www"
        root.mkdir()
        size = bench.parse_size(args.size)
        image = images.random_raw(root / "bench.raw", size, seed=13)
        checksum = "sha256:" + images.sha256_file(image)
        with KvmHosts(workdir / "hosts", count=max(counts), libvirt=False) as hosts:
            origin = shared_rate_origin(root, hosts.bridge_address, args.origin_rate)
            try:
                url = origin.url("bench.raw", host=hosts.bridge_address)
                for count in counts:
                    for mode in modes:
                        result = one_round(hosts, workdir, origin, count, mode, url, checksum, size, "/bench.raw",
                                           per_holder=args.per_holder)
                        print(f"N={count} {mode:>6}: origin {result['origin_bytes'] / 2**20:.0f} MiB "
                              f"({result['origin_ratio']:.2f}x), wall {result['wall']:.1f} s, "
                              f"rate {result['rate_mb_s']:.1f} MB/s, cpu busy {result['cpu_busy']:.2f}", flush=True)
                        results.append(result)
            finally:
                origin.close()
    report(results, counts, modes, args, output, load)


def report(results, counts, modes, args, output, load):
    by = {(r["hosts"], r["mode"]): r for r in results}
    print(f"\nOne {args.size} template to N hosts, origin {args.origin_rate / 1e6:.0f} MB/s shared, forks = N, "
          f"per_holder {args.per_holder}, {os.cpu_count()} CPUs, load average at start {load[0]:.1f}:")
    print("| N | mode | origin MiB | x image | wall s | wall / wall(N=1) | per-host MB/s | cpu busy |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in modes:
        base = by[(counts[0], mode)]["wall"]
        for count in counts:
            r = by[(count, mode)]
            print(f"| {count} | {mode} | {r['origin_bytes'] / 2**20:.0f} | {r['origin_ratio']:.2f} | {r['wall']:.1f} | "
                  f"{r['wall'] / base:.2f} | {r['rate_mb_s']:.1f} | {r['cpu_busy']:.2f} |")
    path = output / time.strftime("fanout-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps({"size": args.size, "origin_rate": args.origin_rate, "cpus": os.cpu_count(),
                                "per_holder": args.per_holder,
                                "load_average": load, "results": results}, indent=2))
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
