#!/usr/bin/env python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Download benchmark: our ``download`` module against ``curl -o``, ``curl -o && sync -f``, ``ansible.builtin.get_url``
with a checksum and ``aria2c``, on the same loopback URL, interleaved (A B C D, A B C D, ...), medians and paired
ratios to curl and to curl+sync.

    make bench                       # 2 GiB, SHA-256, HTTP, 5 rounds
    .venv/bin/python benchmarks/bench_download.py --size 512M --runs 3 --https --algorithm sha512

Rows:
  curl            curl -s -o DEST URL                                (the floor: no checksum)
  curl+sync       curl -s -o DEST URL && sync -f DEST                (the durable floor: an install that survives a
                                                                      power cut; ours fsyncs before the rename)
  get_url         ansible localhost -m get_url checksum=ALG:HEX      (what operators use today)
  aria2c          aria2c --checksum=ALG=HEX (verifies after download)
  ours/ansible    ansible localhost -m directdownload.kvm.download   (what an operator runs)
  ours/module     the module process alone (python download.py args.json): its peak RSS and bytes read
  ours/rerun      a second ours/ansible run on the installed image (O(1): no transfer, no hash)
  ping            ansible localhost -m ping                          (Ansible's fixed cost, for the rerun)
Extra checks: --sparse (a holey qcow2: disk usage of curl's copy vs ours), --rss-sizes 256M,4G (the module
process's peak RSS at each size: flat means constant memory).
The server is tests/unit/lib/servers.py in its own process (sendfile; HTTPS with a test CA for --https).
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
REPO = os.path.dirname(HERE)
COLLECTIONS = os.path.join(REPO, ".build", "collections")
VENV_PY = os.path.join(REPO, ".venv", "bin", "python")
PYTHON = VENV_PY if os.path.exists(VENV_PY) else sys.executable
BIN = os.path.dirname(PYTHON)
ARIA2_ALGORITHMS = {"md5": "md5", "sha1": "sha-1", "sha224": "sha-224", "sha256": "sha-256", "sha384": "sha-384",
                    "sha512": "sha-512"}


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return "%.1f %s" % (n, unit) if unit != "B" else "%d B" % n
        n /= 1024.0
    return str(n)


def env():
    environ = dict(os.environ)
    environ.update(PYTHONPATH=COLLECTIONS, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_LOCALHOST_WARNING="False",
                   ANSIBLE_INVENTORY_UNPARSED_WARNING="False", ANSIBLE_PYTHON_INTERPRETER=PYTHON,
                   PATH=BIN + os.pathsep + environ.get("PATH", ""))
    environ.pop("REQUESTS_CA_BUNDLE", None)
    return environ


def make_random_file(path, size):
    with open(path, "wb") as handle:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 16 << 20))
            handle.write(chunk)
            remaining -= len(chunk)


def digest(path, algorithm):
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


class Server:
    def __init__(self, root, tls=None):
        argv = [PYTHON, "-m", "ansible_collections.directdownload.kvm.tests.unit.lib.servers", "--root", root]
        if tls:
            argv += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env(), text=True)  # pylint: disable=consider-using-with
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url:
            raise RuntimeError("the benchmark server did not start")

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


def timed(argv, extra_env=None):
    """Run argv; return (wall seconds, peak RSS KiB of its largest process).

    Peak RSS comes from GNU time: ``ru_maxrss`` survives fork+exec, so measuring from this (large) Python process
    would report our own size for a small child like curl.
    """
    environ = env()
    environ.update(extra_env or {})
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name] + list(argv), env=environ,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError("%s failed (%d): %s" % (argv[0], proc.returncode, proc.stderr.decode()[-2000:]))
        rss = int(rss_file.read().strip().splitlines()[-1])
    return wall, rss


def clean(dest):
    directory, name = os.path.split(dest)
    for path in (dest, os.path.join(directory, ".%s.ddinfo.json" % name), os.path.join(directory, ".%s.part" % name),
                 os.path.join(directory, ".%s.part.json" % name)):
        if os.path.exists(path):
            os.unlink(path)
    for leftover in os.listdir(directory):
        if leftover.endswith(".aria2"):
            os.unlink(os.path.join(directory, leftover))


def module_args(url, dest, checksum, ca_path):
    args = {"url": url, "pool_path": os.path.dirname(dest), "name": os.path.basename(dest), "checksum": checksum,
            "retries": 0}
    if ca_path:
        args["ca_path"] = ca_path
    return args


def commands(tool, url, dest, algorithm, hexdigest, ca_path, workdir):
    checksum = "%s:%s" % (algorithm, hexdigest)
    adhoc = [os.path.join(BIN, "ansible"), "localhost", "-c", "local", "-i", "localhost,"]
    if tool == "curl":
        return ["curl", "-s", "-S", "-f", "-o", dest] + (["--cacert", ca_path] if ca_path else []) + [url]
    if tool == "curl+sync":
        curl = ["curl", "-s", "-S", "-f", "-o", dest] + (["--cacert", ca_path] if ca_path else []) + [url]
        return ["sh", "-c", '"$@" && sync -f "$0"', dest] + curl
    if tool == "get_url":
        args = {"url": url, "dest": dest, "checksum": checksum}
        extra = {"SSL_CERT_FILE": ca_path} if ca_path else {}
        return adhoc + ["-m", "ansible.builtin.get_url", "-a", json.dumps(args)], extra
    if tool == "aria2c":
        return ["aria2c", "--no-conf", "-q", "--file-allocation=none", "--allow-overwrite=true",
                "--auto-file-renaming=false", "--check-integrity=true",
                "--checksum=%s=%s" % (ARIA2_ALGORITHMS[algorithm], hexdigest), "-d", os.path.dirname(dest),
                "-o", os.path.basename(dest)] + (["--ca-certificate=" + ca_path] if ca_path else []) + [url]
    if tool in ("ours/ansible", "ours/rerun"):
        args = module_args(url, dest, checksum, ca_path)
        return adhoc + ["-m", "directdownload.kvm.download", "-a", json.dumps(args)]
    if tool == "ours/module":
        args_file = os.path.join(workdir, "module-args.json")
        with open(args_file, "w", encoding="ascii") as handle:
            json.dump({"ANSIBLE_MODULE_ARGS": module_args(url, dest, checksum, ca_path)}, handle)
        return [PYTHON, os.path.join(HERE, "_measure.py"), os.path.join(workdir, "measure.json"),
                os.path.join(REPO, "plugins", "modules", "download.py"), args_file]
    if tool == "ping":
        return adhoc + ["-m", "ansible.builtin.ping"]
    raise ValueError(tool)


def run_tool(tool, url, dest, algorithm, hexdigest, ca_path, workdir):
    cmd = commands(tool, url, dest, algorithm, hexdigest, ca_path, workdir)
    argv, extra = cmd if isinstance(cmd, tuple) else (cmd, {})
    if tool not in ("ours/rerun", "ping"):
        clean(dest)
    wall, rss = timed(argv, extra)
    measured = {}
    if tool == "ours/module":
        with open(os.path.join(workdir, "measure.json"), encoding="ascii") as handle:
            measured = json.load(handle)
        rss = measured["peak_rss_kib"]
    return wall, rss, measured


def sparse_check(workdir, server_root, base_url):
    """A 2 GiB-virtual qcow2 with 512 MiB of data in 8 runs: disk usage of curl's copy vs ours."""
    image = os.path.join(server_root, "holey.qcow2")
    if not os.path.exists(image):
        raw = os.path.join(workdir, "holey.raw")
        with open(raw, "wb") as handle:
            handle.truncate(2 << 30)
            for i in range(8):
                handle.seek(i * (256 << 20))
                for _block in range(64):
                    handle.write(os.urandom(1 << 20))
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "preallocation=metadata", raw, image],
                       check=True)
        os.unlink(raw)
    out = os.path.join(workdir, "pool")
    curl_dest, our_dest = os.path.join(out, "curl-holey.qcow2"), os.path.join(out, "ours-holey.qcow2")
    clean(curl_dest)
    clean(our_dest)
    url = base_url + "/holey.qcow2"
    subprocess.run(["curl", "-s", "-o", curl_dest, url], check=True)
    timed(commands("ours/ansible", url, our_dest, "sha256", digest(image, "sha256"), None, workdir))
    usage = {name: os.stat(path).st_blocks * 512 for name, path in
             (("source", image), ("curl", curl_dest), ("ours", our_dest))}
    print("\nSparse qcow2 (apparent %s): disk usage source %s, curl %s (%.2fx), ours %s (%.2fx)" % (
        human(os.path.getsize(image)), human(usage["source"]), human(usage["curl"]),
        usage["curl"] / usage["source"], human(usage["ours"]), usage["ours"] / usage["source"]))
    clean(curl_dest)
    clean(our_dest)


def rss_check(sizes, workdir, server_root, base_url, algorithm):
    print("\nPeak RSS of the module process by image size (constant memory means flat):")
    dest = os.path.join(workdir, "pool", "rss.img")
    for size in sizes:
        path = os.path.join(server_root, "rss-%d.bin" % size)
        make_random_file(path, size)
        wall, rss, measured = run_tool("ours/module", base_url + "/" + os.path.basename(path), dest, algorithm,
                                       digest(path, algorithm), None, workdir)
        print("  %10s  %6.2f s  peak RSS %s  file bytes re-read %.3fx the image" % (
            human(size), wall, human(rss * 1024), measured["rchar"] / size))
        clean(dest)
        os.unlink(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="2G", help="image size (default 2G)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--algorithm", default="sha256", choices=sorted(ARIA2_ALGORITHMS))
    parser.add_argument("--https", action="store_true", help="serve over HTTPS with a test CA")
    parser.add_argument("--tools", default="curl,curl+sync,get_url,aria2c,ours/ansible,ours/module",
                        help="comma-separated rows to run")
    parser.add_argument("--workdir", default=os.path.join(HERE, "output"))
    parser.add_argument("--sparse", action="store_true", help="also measure sparse handling")
    parser.add_argument("--rss-sizes", default="", help="e.g. 256M,4G: module peak RSS per size")
    parser.add_argument("--keep", action="store_true", help="keep the generated image for the next run")
    args = parser.parse_args()

    size = parse_size(args.size)
    os.makedirs(os.path.join(args.workdir, "pool"), exist_ok=True)
    server_root = os.path.join(args.workdir, "www")
    os.makedirs(server_root, exist_ok=True)
    image = os.path.join(server_root, "image-%d.bin" % size)
    if not os.path.exists(image):
        print("making a %s random image ..." % human(size), flush=True)
        make_random_file(image, size)
    hexdigest = digest(image, args.algorithm)
    tls = ca_path = None
    tmp = tempfile.mkdtemp(prefix="ddbench-")
    if args.https:
        sys.path.insert(0, COLLECTIONS)
        from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA  # pylint: disable=import-outside-toplevel
        ca = TestCA()
        tls = ca.server_cert_files(tmp)
        ca_path = ca.ca_pem_path(tmp)
    server = Server(server_root, tls)
    tools = [t for t in args.tools.split(",") if t]
    if "ours/ansible" in tools:
        tools += ["ours/rerun", "ping"]
    if ("aria2c" in tools and not shutil.which("aria2c")) or (
            any(t.startswith("curl") for t in tools) and not shutil.which("curl")):
        sys.exit("curl and aria2c must be installed (apt-get install curl aria2)")
    url = server.base_url + "/" + os.path.basename(image)
    dest = os.path.join(args.workdir, "pool", "bench.img")
    print("%s over %s, %s, %d interleaved rounds (1 warm-up), tools: %s" % (
        human(size), "HTTPS" if args.https else "HTTP", args.algorithm, args.runs, ", ".join(tools)), flush=True)
    results = {tool: [] for tool in tools}
    try:
        for round_no in range(args.runs + 1):
            for tool in tools:
                wall, rss, measured = run_tool(tool, url, dest, args.algorithm, hexdigest, ca_path, args.workdir)
                if round_no:
                    results[tool].append((wall, rss, measured))
            print("  round %d done" % round_no if round_no else "  warm-up done", flush=True)
        report(results, size)
        if args.sparse:
            sparse_check(args.workdir, server_root, server.base_url)
        if args.rss_sizes:
            rss_check([parse_size(s) for s in args.rss_sizes.split(",")], args.workdir, server_root,
                      server.base_url, args.algorithm)
    finally:
        server.close()
        clean(dest)
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            os.unlink(image)


def report(results, size):
    baselines = [name for name in ("curl", "curl+sync") if results.get(name)]
    walls_of = {tool: [wall for wall, _rss, _measured in rows] for tool, rows in results.items()}
    header = "%-14s %10s %10s" % ("tool", "median s", "MB/s")
    for name in baselines:
        header += " %12s %14s" % ("vs " + name, "(min-max)")
    print("\n" + header + " %12s" % "peak RSS")
    for tool, rows in results.items():
        walls = walls_of[tool]
        median = statistics.median(walls)
        line = "%-14s %10.3f %10s" % (tool, median, "" if tool in ("ours/rerun", "ping") else "%.0f" % (
            size / median / 1e6))
        for name in baselines:
            ratio = spread = ""
            if tool not in ("ours/rerun", "ping"):
                # Paired: each round's time over the same round's baseline (the machine's load varies by round).
                ratios = [w / c for w, c in zip(walls, walls_of[name])]
                ratio = "%.2fx" % statistics.median(ratios)
                spread = "(%.2f-%.2f)" % (min(ratios), max(ratios))
            line += " %12s %14s" % (ratio, spread)
        rss = max(r for _wall, r, _measured in rows)
        print(line + " %12s" % human(rss * 1024))
    if "ours/module" in results:
        rchar = statistics.median(m["rchar"] for _wall, _rss, m in results["ours/module"])
        print("\nours/module read(2) %.3fx the image size (recv() on plain sockets is not counted, TLS reads are:"
              " ~0 over HTTP and ~1 over HTTPS mean no re-read of the image)" % (rchar / size))
    if "get_url" in results and "ours/ansible" in results:
        ours = statistics.median(w for w, _rss, _measured in results["ours/ansible"])
        get_url = statistics.median(w for w, _rss, _measured in results["get_url"])
        print("ours/ansible takes %.2fx the time of get_url with checksum" % (ours / get_url))
    if "ours/rerun" in results:
        rerun = statistics.median(w for w, _rss, _measured in results["ours/rerun"])
        ping = statistics.median(w for w, _rss, _measured in results["ping"])
        print("re-run on the installed image: %.3f s = %.2fx ansible -m ping (%.3f s)" % (rerun, rerun / ping, ping))


if __name__ == "__main__":
    main()
