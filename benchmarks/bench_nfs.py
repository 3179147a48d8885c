#!/usr/bin/env python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""NFS benchmark: our ``download`` module reading an ``nfs://`` URL against ``nfs-cp`` alone on the same server
(nfs-ganesha on loopback, tests/unit/lib/nfs.py), interleaved (A B, A B, ...), medians and paired ratios.

    PYTHONPATH=.build/collections .venv/bin/python benchmarks/bench_nfs.py                 # 2 GiB, NFSv3, 5 rounds
    PYTHONPATH=.build/collections .venv/bin/python benchmarks/bench_nfs.py --size 512M --version 4 --runs 7

Rows:
  nfs-cp        nfs-cp URL DEST                          (the floor: libnfs copy, no checksum, no fsync)
  nfs-cp+sync   nfs-cp URL DEST && sync DEST             (the same made durable, as ours is: what fsync costs)
  ours/module   python download.py args.json             (the module process alone: nfs-cat stream, SHA-256 in
                                                          the same pass, sparse write, fsync, qemu-img inspect,
                                                          atomic rename)
  ours/ansible  ansible localhost -m directdownload.kvm.download   (add with --tools; Ansible's fixed cost on top)
Target: ours/module within 1.2x of nfs-cp. This machine has no kernel NFS client, so ``auto`` reads with libnfs.
The 2 GiB default needs about 4.5 GiB free under /tmp and the work directory; ``--size`` makes it smaller.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_download as bench  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, bench.COLLECTIONS)
from ansible_collections.directdownload.kvm.tests.unit.lib.nfs import SharedGanesha  # noqa: E402  pylint: disable=wrong-import-position


def commands(tool, url, dest, hexdigest, workdir):
    if tool == "nfs-cp":
        return [shutil.which("nfs-cp") or "nfs-cp", url, dest]
    if tool == "nfs-cp+sync":
        return ["sh", "-c", 'nfs-cp "$1" "$2" >/dev/null && sync "$2"', "sh", url, dest]
    args = {"url": url, "pool_path": os.path.dirname(dest), "name": os.path.basename(dest),
            "checksum": "sha256:" + hexdigest, "retries": 0, "format": "raw"}
    if tool == "ours/ansible":
        return [os.path.join(bench.BIN, "ansible"), "localhost", "-c", "local", "-i", "localhost,", "-m",
                "directdownload.kvm.download", "-a", json.dumps(args)]
    if tool == "ours/module":
        args_file = os.path.join(workdir, "module-args.json")
        with open(args_file, "w", encoding="ascii") as handle:
            json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
        return [bench.PYTHON, os.path.join(HERE, "_measure.py"), os.path.join(workdir, "measure.json"),
                os.path.join(bench.REPO, "plugins", "modules", "download.py"), args_file]
    raise ValueError(tool)


def run_tool(tool, url, dest, hexdigest, workdir):
    bench.clean(dest)
    wall, rss = bench.timed(commands(tool, url, dest, hexdigest, workdir))
    if tool == "ours/module":
        with open(os.path.join(workdir, "measure.json"), encoding="ascii") as handle:
            rss = json.load(handle)["peak_rss_kib"]
    if tool != "ours/ansible" and os.path.getsize(dest) == 0:
        raise RuntimeError("%s left an empty file" % tool)
    return wall, rss


def report(results, size):
    base = [wall for wall, _rss in results["nfs-cp"]]
    print("\n%-14s %10s %10s %12s %14s %12s" % ("tool", "median s", "MB/s", "vs nfs-cp", "(min-max)", "peak RSS"))
    for tool, rows in results.items():
        walls = [wall for wall, _rss in rows]
        ratios = [w / b for w, b in zip(walls, base)]
        print("%-14s %10.3f %10.0f %12s %14s %12s" % (
            tool, statistics.median(walls), size / statistics.median(walls) / 1e6, "%.2fx" % statistics.median(ratios),
            "(%.2f-%.2f)" % (min(ratios), max(ratios)), bench.human(max(r for _w, r in rows) * 1024)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="2G", help="image size (default 2G; smaller when the disk is tight)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds after one warm-up (default 5)")
    parser.add_argument("--version", type=int, choices=(3, 4), default=3, help="NFS version (default 3)")
    parser.add_argument("--tools", default="nfs-cp,nfs-cp+sync,ours/module", help="comma-separated rows (nfs-cp is always run)")
    parser.add_argument("--workdir", default=os.path.join(HERE, "output", "nfs"))
    args = parser.parse_args()

    size = bench.parse_size(args.size)
    pool = os.path.join(args.workdir, "pool")
    os.makedirs(pool, exist_ok=True)
    free = min(shutil.disk_usage(pool).free, shutil.disk_usage("/tmp").free)
    if free < 2 * size + (512 << 20):
        sys.exit("not enough free space for a %s benchmark (%s free): use --size"
                 % (bench.human(size), bench.human(free)))
    tools = ["nfs-cp"] + [t for t in args.tools.split(",") if t and t != "nfs-cp"]
    server = SharedGanesha().acquire()
    export = server.make_dir()
    dest = os.path.join(pool, "bench.img")
    try:
        image = os.path.join(str(export.path), "image.bin")
        print("making a %s random image in the export ..." % bench.human(size), flush=True)
        bench.make_random_file(image, size)
        hexdigest = bench.digest(image, "sha256")
        url = export.url("image.bin", args.version)
        print("%s over NFSv%d (nfs-ganesha, loopback), SHA-256, %d interleaved rounds (1 warm-up), tools: %s" % (
            bench.human(size), args.version, args.runs, ", ".join(tools)), flush=True)
        results = {tool: [] for tool in tools}
        for round_no in range(args.runs + 1):
            for tool in tools:
                measured = run_tool(tool, url, dest, hexdigest, args.workdir)
                if round_no:
                    results[tool].append(measured)
            print("  round %d done" % round_no if round_no else "  warm-up done", flush=True)
        if bench.digest(dest, "sha256") != hexdigest:
            raise RuntimeError("the last copy does not match the image")
        report(results, size)
    finally:
        bench.clean(dest)
        shutil.rmtree(str(export.path), ignore_errors=True)
        server.release()


if __name__ == "__main__":
    main()
