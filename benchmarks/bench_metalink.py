#!/usr/bin/env python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Metalink benchmark: a segmented download from several rate-limited loopback mirrors against the best single
mirror and against ``aria2c`` on the same metalink. Interleaved rounds (A B C, A B C, ...), medians, ratios.

    .venv/bin/python benchmarks/bench_metalink.py                     # 2 mirrors x 40 MB/s, 512 MiB, 5 rounds
    .venv/bin/python benchmarks/bench_metalink.py --mirrors 3 --rate 20 --size 128M --runs 3

Rows (each a separate process, timed from start to exit; every result's SHA-256 is checked after the run):
  single/mirror-K  our engine's single-stream path (HttpSource -> stream_to_file: receive, hash SHA-256 and write
                   in one pass) from mirror K alone; "best single" is the lowest median of these
  segmented        the engine's transfer in ranges (_metalink.parse_metalink -> _description.from_metalink ->
                   _transfer.segmented_download) over all mirrors, one connection per mirror, piece hashes checked
                   as pieces arrive, whole-file SHA-256 checked at the end
  aria2c           aria2c --no-conf -M FILE.meta4 -x1 -s<mirrors> -j1 (one connection per mirror, like ours),
                   which checks the metalink's hashes itself
Scenarios: the metalink with a SHA-256 file hash only ("file hash"), and with SHA-256 piece hashes of 1 MiB too
("file + piece hashes").

The mirrors are tests/unit/lib/servers.py, each in its own process on its own loopback address (127.0.0.1, .2, ...:
aria2c's -x counts connections per host), pacing every body to --rate MB/s per connection (a mirror capped at a
fixed bandwidth: with one connection per mirror that is the mirror's cap).
Results: printed, and written to benchmarks/output/metalink-<time>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_download as bench  # noqa: E402  pylint: disable=wrong-import-position

REPO, COLLECTIONS, PYTHON = bench.REPO, bench.COLLECTIONS, bench.PYTHON
NAME = "image.raw"
PIECE = 1024 * 1024


def env():
    environ = dict(os.environ)
    environ["PYTHONPATH"] = COLLECTIONS
    return environ


class Mirror:
    """One ImageServer process serving ``root``, every body paced to ``rate`` bytes/s per connection."""

    def __init__(self, root, rate, host):
        argv = [PYTHON, "-m", "ansible_collections.directdownload.kvm.tests.unit.lib.servers", "--root", root,
                "--rate", str(rate), "--host", host]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env(), text=True)  # pylint: disable=consider-using-with
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url:
            raise RuntimeError("a mirror server did not start")

    def url(self, path):
        return self.base_url.rstrip("/") + "/" + path

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_image(path, size):
    digest = hashlib.sha256()
    pieces = []
    with open(path, "wb") as handle:
        remaining = size
        while remaining:
            block = os.urandom(min(remaining, PIECE))
            handle.write(block)
            digest.update(block)
            pieces.append(hashlib.sha256(block).hexdigest())
            remaining -= len(block)
    return digest.hexdigest(), pieces


def write_metalink(path, urls, size, sha256, pieces=None):
    parts = ["<size>%d</size>" % size, '<hash type="sha-256">%s</hash>' % sha256]
    if pieces:
        parts.append('<pieces length="%d" type="sha-256">%s</pieces>'
                     % (PIECE, "".join("<hash>%s</hash>" % h for h in pieces)))
    parts += ['<url priority="1">%s</url>' % url for url in urls]
    with open(path, "w", encoding="ascii") as handle:
        handle.write('<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="urn:ietf:params:xml:ns:metalink">'
                     '<file name="%s">%s</file></metalink>\n' % (NAME, "\n".join(parts)))


# -- the measured children: each runs as ``python -c CODE ARGS`` so that it imports only what it uses

CHILD_SEGMENTED = """
import json, os, sys
from ansible_collections.directdownload.kvm.plugins.module_utils._http import HttpSource, SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._description import from_metalink
from ansible_collections.directdownload.kvm.plugins.module_utils._metalink import parse_metalink
from ansible_collections.directdownload.kvm.plugins.module_utils._transfer import segmented_download
metalink_path, dest, connections = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(metalink_path, "rb") as handle:
    metalink_file = from_metalink(parse_metalink(handle.read()))
options = SourceOptions()
part = os.path.join(os.path.dirname(dest), ".%s.part" % os.path.basename(dest))
result = segmented_download(metalink_file, lambda url: HttpSource(url, options), part, connections=connections,
                            checksums=metalink_file.expected_checksums())
os.replace(part, dest)
print(json.dumps({k: result[k] for k in ("bytes_per_mirror", "mirror_errors", "refetched_pieces", "checksum")}))
"""

CHILD_SINGLE = """
import json, os, sys
from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import new_hash
from ansible_collections.directdownload.kvm.plugins.module_utils._http import HttpSource, SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import SparseWriter, stream_to_file
url, dest = sys.argv[1], sys.argv[2]
part = os.path.join(os.path.dirname(dest), ".%s.part" % os.path.basename(dest))
body = HttpSource(url, SourceOptions()).open()
hasher = new_hash("sha256")
fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
try:
    writer = SparseWriter(fd)
    stream_to_file(body, writer, [hasher])
    writer.finish(fsync=False)
finally:
    os.close(fd)
    body.close()
os.replace(part, dest)
print(json.dumps({"sha256": hasher.hexdigest()}))
"""


# -- the driver


def timed(argv):
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv[:3]), proc.returncode,
                                                   proc.stderr.decode(errors="replace")[-2000:]))
    return wall, proc.stdout.decode(errors="replace")


def clean(directory):
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_scenario(label, metalink_path, mirrors, out_dir, expected, runs, connections):
    dest = os.path.join(out_dir, NAME)
    tools = ["single/mirror-%d" % (i + 1) for i in range(len(mirrors))] + ["segmented", "aria2c"]

    def argv(tool):
        if tool.startswith("single/"):
            index = int(tool.rsplit("-", 1)[1]) - 1
            return [PYTHON, "-c", CHILD_SINGLE, mirrors[index].url(NAME), dest]
        if tool == "segmented":
            return [PYTHON, "-c", CHILD_SEGMENTED, metalink_path, dest, str(connections)]
        return ["aria2c", "--no-conf", "-q", "--file-allocation=none", "--allow-overwrite=true",
                "--auto-file-renaming=false", "-x1", "-s%d" % len(mirrors), "-j1", "-k1M", "-d", out_dir,
                "-M", metalink_path]

    times = {tool: [] for tool in tools}
    for round_index in range(runs + 1):  # round 0 warms up and is not counted
        for tool in tools:
            clean(out_dir)
            wall = timed(argv(tool))[0]
            if round_index == 0 or round_index == runs:
                actual = file_sha256(dest)
                if actual != expected:
                    raise RuntimeError("%s wrote a file with SHA-256 %s, expected %s" % (tool, actual, expected))
            if round_index:
                times[tool].append(wall)
        print("  %s round %d/%d: %s" % (label, round_index, runs, "  ".join(
            "%s %.2fs" % (tool, times[tool][-1]) for tool in tools if round_index)), flush=True)
    medians = {tool: statistics.median(values) for tool, values in times.items()}
    best_single = min((tool for tool in tools if tool.startswith("single/")), key=medians.get)
    return dict(label=label, times=times, medians=medians, best_single=best_single,
                speedup_vs_best_single=medians[best_single] / medians["segmented"],
                ratio_to_aria2c=medians["segmented"] / medians["aria2c"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size", default="512M", help="image size (default 512M)")
    parser.add_argument("--rate", type=float, default=40.0, help="each mirror's cap in MB/s (default 40)")
    parser.add_argument("--mirrors", type=int, default=2, help="number of mirrors (default 2)")
    parser.add_argument("--runs", type=int, default=5, help="counted rounds (default 5, plus one warm-up)")
    parser.add_argument("--scenario", choices=("both", "file", "pieces"), default="both")
    parser.add_argument("--workdir", help="where to put the image and outputs (default: a temporary directory)")
    args = parser.parse_args()
    if not shutil.which("aria2c"):
        sys.exit("aria2c is not installed (apt-get install aria2)")

    size = bench.parse_size(args.size)
    rate = int(args.rate * 1000 * 1000)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-metalink-")
    root, out_dir = os.path.join(workdir, "www"), os.path.join(workdir, "out")
    os.makedirs(root, exist_ok=True)
    os.makedirs(out_dir, exist_ok=True)
    print("image: %d bytes, %d mirror(s) at %.0f MB/s each, %d counted round(s); workdir %s"
          % (size, args.mirrors, args.rate, args.runs, workdir), flush=True)
    sha256, pieces = write_image(os.path.join(root, NAME), size)
    mirrors = []
    results = []
    try:
        # One loopback address per mirror: aria2c counts connections per host, not per host:port.
        mirrors = [Mirror(root, rate, "127.0.0.%d" % (index + 1)) for index in range(args.mirrors)]
        urls = [m.url(NAME) for m in mirrors]
        scenarios = []
        if args.scenario in ("both", "file"):
            scenarios.append(("file hash", os.path.join(workdir, "file.meta4"), None))
        if args.scenario in ("both", "pieces"):
            scenarios.append(("file + piece hashes", os.path.join(workdir, "pieces.meta4"), pieces))
        for label, path, scenario_pieces in scenarios:
            write_metalink(path, urls, size, sha256, scenario_pieces)
            results.append(run_scenario(label, path, mirrors, out_dir, sha256, args.runs, args.mirrors))
    finally:
        for mirror in mirrors:
            mirror.close()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print("%-22s %-18s %10s %10s  %s" % ("scenario", "tool", "median s", "MB/s", "runs (s)"))
    for result in results:
        for tool, values in result["times"].items():
            print("%-22s %-18s %10.2f %10.1f  %s" % (result["label"], tool, result["medians"][tool],
                                                     size / result["medians"][tool] / 1e6,
                                                     " ".join("%.2f" % v for v in values)))
    print()
    for result in results:
        print("%s: segmented is %.2fx faster than the best single mirror (%s); segmented/aria2c time = %.2f "
              "(target >= 1.6x, <= 1.0)" % (result["label"], result["speedup_vs_best_single"], result["best_single"],
                                            result["ratio_to_aria2c"]))
    out = os.path.join(REPO, "benchmarks", "output")
    os.makedirs(out, exist_ok=True)
    report = os.path.join(out, "metalink-%s.json" % time.strftime("%Y%m%d-%H%M%S"))
    with open(report, "w", encoding="ascii") as handle:
        json.dump(dict(size=size, rate_mb_s=args.rate, mirrors=args.mirrors, runs=args.runs, results=results),
                  handle, indent=1)
    print("report: %s" % report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
