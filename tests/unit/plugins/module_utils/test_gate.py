# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The safety gate (_gate.py) against a corpus of hostile images (tests/unit/lib/hostile.py), served by a real
loopback HTTP server to the real engine, with real qemu-img, strace, FIFOs and a tmpfs pool.

Each hostile image must be refused with its own rule, leave the pool empty, and never make qemu-img open a file
the image names; honest qcow2, raw and ISO images (plain and compressed) must still install.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _download, _gate, _install
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    DirectDownloadError,
    ImageRejected,
    InvalidInput,
    NotEnoughSpace,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._http import SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import open_source
from ansible_collections.directdownload.kvm.tests.unit.lib import hostile, images
from ansible_collections.directdownload.kvm.tests.unit.lib.images import KiB, MiB
from ansible_collections.directdownload.kvm.tests.unit.lib.require import require_tool

COLLECTIONS = os.path.abspath(os.path.join(os.path.dirname(_gate.__file__), "..", "..", "..", "..", ".."))


# ---------------------------------------------------------------- the corpus, made once

def _corpus(root, target):
    """name -> (file in ``root``, declared format, rule it must be refused by). ``target`` is the host file every
    hostile image names: a FIFO, so that a process opening it would hang."""
    c = {}

    def add(name, path, declared, rule):
        c[name] = (os.path.basename(path), declared, rule)

    q = root
    for style in hostile.VMDK_DESCRIPTOR_STYLES:
        add("vmdk-%s" % style, hostile.vmdk_descriptor(q / ("vmdk-%s.img" % style), target, style), None, "format")
    add("vmdk-declared-raw", hostile.vmdk_descriptor(q / "vmdk-raw.img", target, "comment"), "raw", "format_mismatch")
    add("vmdk-declared-qcow2", hostile.vmdk_descriptor(q / "vmdk-q.img", target, "bare"), "qcow2", "format_mismatch")
    add("backing-absolute", hostile.qcow2_backed(q / "abs.qcow2", target), None, "backing_file")
    add("backing-relative", hostile.qcow2_backed(q / "rel.qcow2", "../../../../" + target.lstrip("/")), None,
        "backing_file")
    add("backing-json", hostile.qcow2_backed(q / "json.qcow2", hostile.json_backing(target)), None, "backing_file")
    add("backing-declared-raw", hostile.qcow2_backed(q / "abs-raw.img", target), "raw", "backing_file")
    add("backing-nbd", hostile.qcow2_backed(q / "nbd.qcow2", "nbd://127.0.0.1:1/x"), "qcow2", "backing_file")
    for kind in ("gzip", "xz", "zstd", "bzip2", "zip"):
        add("backing-json-in-%s" % kind, images.compress(q / "json.qcow2", q / ("json-%s.bin" % kind), kind),
            "qcow2", "backing_file")
    # qemu-img creates the data file (it would block on the FIFO): a file of the corpus, the rule is the same
    add("data-file", images.qcow2_with_data_file(q / "data.qcow2", q / "data.raw"), None, "data_file")
    add("qcow2-iso-polyglot", hostile.qcow2_iso_polyglot(q / "poly.iso", target), None, "one_format")
    add("qcow2-iso-polyglot-declared-iso", hostile.qcow2_iso_polyglot(q / "poly2.iso", target), "iso", "one_format")
    add("iso-with-vmdk-descriptor", hostile.iso_with(q / "vmdk.iso", b"# x\nversion=1\nRW 1 FLAT \"%s\" 0\n"
                                                     % target.encode()), "iso", "one_format")
    add("iso-with-luks", hostile.iso_with(q / "luks.iso", b"LUKS\xba\xbe\x00\x01"), "iso", "one_format")
    add("luks-declared-raw", hostile.luks_header(q / "luks.img"), "raw", "format_mismatch")
    add("luks", hostile.luks_header(q / "luks2.img"), None, "format")
    for fmt in ("vpc", "vhdx", "vdi", "qed", "parallels", "qcow"):
        add(fmt, hostile.foreign(q / ("disk.%s" % fmt), fmt), None, "format")
        add(fmt + "-declared-raw", hostile.foreign(q / ("raw.%s" % fmt), fmt), "raw", "format_mismatch")
    add("qed-backed", str(q / "backed.qed"), None, "format")
    images._run(images.QEMU_IMG, "create", "-q", "-u", "-f", "qed", "-b", target, "-F", "raw", str(q / "backed.qed"),
                "16M")
    add("bochs", hostile.bochs(q / "disk.bochs"), None, "format")
    add("cloop", hostile.cloop(q / "disk.cloop"), None, "format")
    add("qcow2-64TiB", images.qcow2(q / "huge.qcow2", 64 * hostile.TiB), None, "max_virtual_size")
    add("qcow2-unknown-feature", hostile.qcow2_patched(q / "feat.qcow2", incompatible=1 << 40), None,
        "qcow2_features")
    add("qcow2-corrupt-bit", hostile.qcow2_patched(q / "corrupt.qcow2", incompatible=1 << 1), None, "corrupt")
    add("qcow2-version-4", hostile.qcow2_patched(q / "v4.qcow2", version=4), None, "qcow2_version")
    add("qcow2-encrypted-aes", hostile.qcow2_patched(q / "aes.qcow2", crypt_method=1), None, "encrypted")
    add("qcow2-backing-offset-2^63", hostile.qcow2_patched(q / "far.qcow2", backing_offset=(1 << 63) + 5), None,
        "backing_file")
    add("zip-two-members", images.compress(q / "abs.qcow2", q / "two.zip", "zip-two"), None, "zip_one_member")
    add("zip-dotdot", hostile.zip_named(q / "dotdot.zip", "../../etc/cron.d/evil"), None, "zip_member_name")
    add("zip-absolute", hostile.zip_named(q / "abs.zip", "/etc/passwd"), None, "zip_member_name")
    honest = images.qcow2(q / "honest.qcow2", 16 * MiB, writes=[(0, 64 * KiB, 0x11)])
    for kind in ("gzip", "bzip2", "xz", "zstd", "zip"):
        packed = images.compress(honest, q / ("honest-%s.bin" % kind), kind)
        add("trailing-%s" % kind, hostile.with_trailing(packed, q / ("trailing-%s.bin" % kind)), None,
            "trailing_data")
    return c


@pytest.fixture(name="target", scope="module")
def target_fixture(tmp_path_factory):
    """The host file the corpus names: a FIFO (an open for reading would block) in a directory of its own."""
    return hostile.fifo(tmp_path_factory.mktemp("host") / "shadow")


@pytest.fixture(name="www", scope="module")
def www_fixture(tmp_path_factory, target):
    root = tmp_path_factory.mktemp("www")
    corpus = _corpus(root, target)
    assert sorted(corpus) == sorted(CORPUS_NAMES)
    honest = images.qcow2(root / "ok.qcow2", 32 * MiB, writes=[(0, MiB, 0x42)])
    images.sparse_raw(root / "ok.raw", 8 * MiB)
    images.iso(root / "ok.iso", 2 * MiB)
    for kind in ("gzip", "bzip2", "xz", "zstd", "zstd-nosize", "zip", "gzip-multi"):
        images.compress(honest, root / ("ok-%s.qcow2.bin" % kind), kind)
    images.compress(root / "ok.raw", root / "ok-raw.xz", "xz")
    return root, corpus


@pytest.fixture(name="server", scope="module")
def server_fixture(www):
    from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer  # pylint: disable=import-outside-toplevel
    with ImageServer(www[0]) as srv:
        yield srv


def _request(server, pool, path, **kwargs):
    kwargs.setdefault("source_options", SourceOptions(read_timeout=5))
    kwargs.setdefault("retry_delay", 0)
    kwargs.setdefault("progress_interval", 0)
    kwargs.setdefault("retries", 0)
    kwargs.setdefault("name", "image")
    return _download.DownloadRequest(server.url(path), str(pool), **kwargs)


# The corpus by name (pytest parametrizes before fixtures run); the www fixture checks it matches _corpus.
CORPUS_NAMES = (
    "backing-absolute", "backing-declared-raw", "backing-json", "backing-json-in-bzip2", "backing-json-in-gzip",
    "backing-json-in-xz", "backing-json-in-zip", "backing-json-in-zstd", "backing-nbd", "backing-relative", "bochs",
    "cloop", "data-file", "iso-with-luks", "iso-with-vmdk-descriptor", "luks", "luks-declared-raw", "parallels",
    "parallels-declared-raw", "qcow", "qcow-declared-raw", "qcow2-64TiB", "qcow2-backing-offset-2^63",
    "qcow2-corrupt-bit", "qcow2-encrypted-aes", "qcow2-iso-polyglot", "qcow2-iso-polyglot-declared-iso",
    "qcow2-unknown-feature", "qcow2-version-4", "qed", "qed-backed", "qed-declared-raw", "trailing-bzip2",
    "trailing-gzip", "trailing-xz", "trailing-zip", "trailing-zstd", "vdi", "vdi-declared-raw", "vhdx",
    "vhdx-declared-raw", "vmdk-bare", "vmdk-blank", "vmdk-classic", "vmdk-comment", "vmdk-crlf",
    "vmdk-declared-qcow2", "vmdk-declared-raw", "vpc", "vpc-declared-raw", "zip-absolute", "zip-dotdot",
    "zip-two-members",
)


# ---------------------------------------------------------------- every hostile image refused, pool left clean

@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_hostile_image_is_refused_by_its_rule_and_leaves_the_pool_empty(server, www, tmp_path, name):
    root, corpus = www
    filename, declared, rule = corpus[name]
    pool = tmp_path / "pool"
    pool.mkdir()
    started = time.monotonic()
    with pytest.raises(ImageRejected) as caught:
        _download.run(_request(server, pool, filename, image_format=declared), open_source)
    assert caught.value.details.get("rule") == rule, caught.value.msg
    assert (caught.value.retry_here, caught.value.retry_elsewhere) == (False, False)
    assert "\n" not in caught.value.msg
    assert os.listdir(str(pool)) == [], "the refusal left files in the pool"
    assert time.monotonic() - started < 30  # nothing blocked on the FIFO


@pytest.mark.parametrize("path, fmt", [
    ("ok.qcow2", "qcow2"), ("ok.raw", "raw"), ("ok.iso", "iso"), ("ok-raw.xz", "raw"),
    ("ok-gzip.qcow2.bin", "qcow2"), ("ok-bzip2.qcow2.bin", "qcow2"), ("ok-xz.qcow2.bin", "qcow2"),
    ("ok-zstd.qcow2.bin", "qcow2"), ("ok-zstd-nosize.qcow2.bin", "qcow2"), ("ok-zip.qcow2.bin", "qcow2"),
    ("ok-gzip-multi.qcow2.bin", "qcow2"),
])
@pytest.mark.parametrize("declared", [False, True])
def test_honest_images_still_install(server, www, tmp_path, path, fmt, declared):
    pool = tmp_path / "pool"
    pool.mkdir()
    result = _download.run(_request(server, pool, path, image_format=fmt if declared else None), open_source)
    assert result["format"] == fmt
    assert sorted(os.listdir(str(pool))) == [".image.ddinfo.json", "image"]


# ---------------------------------------------------------------- qemu-img opens nothing an image names

class _TraceCollector:
    """A qemu-img that runs the real one under strace (every syscall on a path recorded), writing its trace into a
    FIFO that a thread here drains: the leash forbids qemu-img (and so strace, its parent) to write files."""

    def __init__(self, directory):
        strace = require_tool("strace")
        self.fifo = hostile.fifo(directory / "trace.fifo")
        self.wrapper = directory / "qemu-img"
        self.wrapper.write_text('#!/bin/sh\nexec %s -f -qq -o %s -e trace=%%file %s "$@"\n'
                                % (strace, self.fifo, images.QEMU_IMG))
        self.wrapper.chmod(0o755)
        self.chunks = []
        self._stop = False
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self):
        while not self._stop:
            with open(self.fifo, "rb") as handle:  # blocks until a strace opens it
                self.chunks.append(handle.read())

    def text(self):
        return b"".join(self.chunks).decode(errors="replace")

    def close(self):
        # Wake the reader if it waits in open(); never block here: between two opens there is no reader, and a
        # blocking open for writing would then wait for ever (seen once in CI).
        self._stop = True
        for _attempt in range(100):
            if not self._thread.is_alive():
                break
            try:
                os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader at this instant
                    raise
            self._thread.join(0.1)


def test_qemu_img_opens_no_file_named_by_an_image(www, target, tmp_path):
    root, corpus = www
    traces = tmp_path / "traces"
    traces.mkdir()
    collector = _TraceCollector(traces)
    qemu_img = str(collector.wrapper)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    try:
        for name, (filename, declared, dummy) in sorted(corpus.items()):
            src = str(root / filename)
            kind = _install.detect_compression(src)
            if kind and not _install.is_iso(src):
                dst = str(scratch / name)
                try:
                    _install.extract(src, dst, kind)
                except ImageRejected:
                    continue
                src = dst
            with pytest.raises(ImageRejected):
                _gate.admit(src, declared, qemu_img=qemu_img, timeout=20)
        # the wrapper works: an honest qcow2 is read by qemu-img under strace, and the trace shows its open
        _gate.admit(str(root / "ok.qcow2"), "qcow2", qemu_img=qemu_img)
    finally:
        collector.close()
    trace = collector.text()
    assert str(root / "ok.qcow2") in trace
    assert os.path.basename(target) not in trace
    assert "/etc/cron.d" not in trace and "/etc/passwd" not in trace and "nbd" not in trace


def test_a_vmdk_descriptor_with_a_fifo_extent_is_refused_at_once(www, target):
    # Before the gate, qemu-img probed this file as VMDK and blocked opening the FIFO until its timeout.
    root, corpus = www
    started = time.monotonic()
    with pytest.raises(ImageRejected, match="VMDK") as caught:
        _gate.admit(str(root / corpus["vmdk-comment"][0]), None, timeout=5)
    assert caught.value.details["rule"] == "format"
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("style", sorted(hostile.VMDK_DESCRIPTOR_STYLES))
def test_vmdk_sniff_matches_what_qemu_probes(tmp_path, style):
    # What qemu-img itself detects when it probes (a regular file as the extent, so it answers).
    extent = tmp_path / "extent"
    extent.write_bytes(b"\0" * MiB)
    disk = hostile.vmdk_descriptor(tmp_path / "d.img", str(extent), style)
    assert images.qemu_img_info(disk)["format"] == "vmdk"
    assert _gate.signatures(_gate.read_head(disk)) == ["vmdk"]
    # text that qemu does not take for a descriptor is raw for both
    plain = tmp_path / "plain"
    plain.write_bytes(b"\nversion=1\n" + b"\0" * 4096)
    assert images.qemu_img_info(str(plain))["format"] == "raw"
    assert _gate.signatures(_gate.read_head(str(plain))) == []


# ---------------------------------------------------------------- qemu-img on a leash

def _children_running(pattern):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                cmdline = handle.read().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"qemu-img") and pattern.encode() in b" ".join(cmdline):
            found.append(int(pid))
    return found


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_qemu_img_is_killed_with_the_module(tmp_path):
    # A module process that runs qemu-img on a FIFO (qemu-img blocks in open) and is then killed with SIGKILL:
    # no finally runs, only PR_SET_PDEATHSIG can end qemu-img.
    fifo = hostile.fifo(tmp_path / "blocks")
    script = textwrap.dedent("""\
        import sys
        sys.path.insert(0, %r)
        from ansible_collections.directdownload.kvm.plugins.module_utils import _gate
        _gate.run_qemu_img(["info", "-f", "raw", %r], timeout=600)
        """ % (COLLECTIONS, fifo))
    module = subprocess.Popen([sys.executable, "-c", script])  # pylint: disable=consider-using-with
    try:
        pids = _wait_for(lambda: _children_running(fifo))
        assert len(pids) == 1, "qemu-img did not start"
        pid = pids[0]
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        assert int(fields[2]) == pid and int(fields[3]) == pid  # its own process group and session
        limits = open("/proc/%d/limits" % pid).read()
        assert "Max cpu time              %d" % _gate.QEMU_IMG_CPU_SECONDS in limits
        assert "Max address space         %d" % _gate.QEMU_IMG_ADDRESS_SPACE in limits
        assert "Max file size             0" in limits
        module.send_signal(signal.SIGKILL)
        module.wait(10)
        assert _wait_for(lambda: not _children_running(fifo), 5), "qemu-img outlived the module"
    finally:
        if module.poll() is None:
            module.kill()
            module.wait()
        for pid in _children_running(fifo):
            os.kill(pid, signal.SIGKILL)


def test_qemu_img_timeout_kills_it(tmp_path):
    fifo = hostile.fifo(tmp_path / "blocks")
    started = time.monotonic()
    with pytest.raises(DirectDownloadError, match="did not answer within 1 s") as caught:
        _gate.run_qemu_img(["info", "-f", "raw", fifo], timeout=1)
    assert caught.value.details["reason"] == "timeout"
    assert time.monotonic() - started < 5
    assert not _children_running(fifo)


def test_qemu_img_always_gets_a_format_and_an_absolute_path(tmp_path, monkeypatch):
    calls = []
    real = _gate.run_qemu_img

    def spy(args, qemu_img="qemu-img", timeout=_gate.QEMU_IMG_TIMEOUT):
        calls.append(list(args))
        return real(args, qemu_img, timeout)

    monkeypatch.setattr(_gate, "run_qemu_img", spy)  # a spy, not a mock: the real qemu-img still runs
    monkeypatch.chdir(tmp_path)
    images.qcow2(tmp_path / "json:{}", 16 * MiB)  # a file name qemu would parse as a JSON filename if relative
    info = _gate.admit("json:{}", None)
    assert info.format == "qcow2"
    assert calls == [["info", "--output=json", "--force-share", "-f", "qcow2", str(tmp_path / "json:{}")]]


# ---------------------------------------------------------------- caps, bombs and space

@pytest.fixture
def tmpfs_pool(mount_tmpfs):
    """A 128 MiB tmpfs pool (tests/unit/conftest.py), unmounted in any case. Needs root (CI runs as root)."""
    return mount_tmpfs("128m", "pool")


@pytest.fixture(name="bombs", scope="module")
def bombs_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("bombs")
    hostile.zstd_rle_bomb(root / "zstd-1g.bin", 1024 * MiB)
    hostile.zstd_rle_bomb(root / "zstd-1g-sized.bin", 1024 * MiB, content_size=True)
    hostile.concatenated_bomb(root / "gzip-3g.bin", "gzip", 64 * MiB, 48)
    hostile.concatenated_bomb(root / "xz-3g.bin", "xz", 64 * MiB, 48)
    hostile.concatenated_bomb(root / "bzip2-3g.bin", "bzip2", 64 * MiB, 48)
    hostile.concatenated_bomb(root / "zstd-ones-1g.bin", "zstd", 64 * MiB, 16, byte=1)
    return root


@pytest.fixture(name="bomb_server")
def bomb_server_fixture(bombs):
    from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer  # pylint: disable=import-outside-toplevel
    with ImageServer(bombs) as srv:
        yield srv


@pytest.mark.parametrize("name", ["zstd-1g.bin", "zstd-1g-sized.bin", "gzip-3g.bin", "xz-3g.bin", "bzip2-3g.bin",
                                  "zstd-ones-1g.bin"])
def test_decompression_bombs_into_a_small_pool_are_refused_cleanly(bomb_server, bombs, tmpfs_pool, name):
    started = time.monotonic()
    with pytest.raises(ImageRejected) as caught:
        _download.run(_request(bomb_server, tmpfs_pool, name), open_source)
    assert caught.value.details["rule"] == "max_expansion", caught.value.msg
    assert "max_expansion" in caught.value.msg
    assert os.listdir(str(tmpfs_pool)) == []
    assert time.monotonic() - started < 60


def test_a_bomb_within_the_ratio_is_stopped_by_max_size_or_the_space(bomb_server, tmpfs_pool):
    request = _request(bomb_server, tmpfs_pool, "zstd-ones-1g.bin", max_expansion=1e9, max_size=96 * MiB)
    with pytest.raises(ImageRejected, match="above max_size") as caught:
        _download.run(request, open_source)
    assert caught.value.details["rule"] == "max_size"
    assert os.listdir(str(tmpfs_pool)) == []
    # without max_size in the way, the bytes really written meet the 128 MiB of the pool: refused, pool clean
    request = _request(bomb_server, tmpfs_pool, "zstd-ones-1g.bin", max_expansion=1e9)
    with pytest.raises(NotEnoughSpace):
        _download.run(request, open_source)
    assert os.listdir(str(tmpfs_pool)) == []


def test_max_size_bounds_the_downloaded_file(server, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    with pytest.raises(ImageRejected, match="above max_size") as caught:
        _download.run(_request(server, pool, "ok.raw", max_size=MiB), open_source)
    assert caught.value.details["rule"] == "max_size"
    assert os.listdir(str(pool)) == []


def test_max_virtual_size_and_allow_encrypted_are_raisable(server, www, tmp_path):
    root, corpus = www
    pool = tmp_path / "pool"
    pool.mkdir()
    result = _download.run(_request(server, pool, corpus["qcow2-64TiB"][0], max_virtual_size=64 * hostile.TiB),
                           open_source)
    assert result["virtual_size"] == 64 * hostile.TiB
    with pytest.raises(ImageRejected, match="above max_virtual_size"):
        _download.run(_request(server, pool, "ok.qcow2", name="small", max_virtual_size=16 * MiB), open_source)
    disk = str(tmp_path / "enc.qcow2")
    subprocess.run([images.QEMU_IMG, "create", "-q", "--object", "secret,id=sec0,data=s3cret", "-f", "qcow2",
                    "-o", "encrypt.format=aes,encrypt.key-secret=sec0", disk, "16M"], check=True)
    with pytest.raises(ImageRejected, match="allow_encrypted"):
        _gate.admit(disk)
    assert _gate.admit(disk, "qcow2", _gate.Limits(allow_encrypted=True)).encrypted


def test_limits_validation():
    for bad in (dict(max_size=0), dict(max_virtual_size=-1), dict(max_expansion=float("nan")),
                dict(max_expansion=float("inf")), dict(max_expansion=0)):
        with pytest.raises(InvalidInput, match="greater than 0"):
            _gate.Limits(**bad)
        with pytest.raises(InvalidInput, match="greater than 0"):
            _download.DownloadRequest("http://127.0.0.1:9/d.qcow2", "/pool", **bad)
    assert _gate.Limits().extraction_cap(10) == (_gate.EXPANSION_FLOOR, "max_expansion")
    assert _gate.Limits(max_size=MiB).extraction_cap(10) == (MiB, "max_size")
    assert _gate.Limits(max_expansion=2).extraction_cap(GIB_100) == (2 * GIB_100, "max_expansion")


GIB_100 = 100 * 1024 * MiB


# ---------------------------------------------------------------- corrupt images and text in messages

def test_a_corrupt_qcow2_is_refused_not_an_io_error(server, www, tmp_path):
    # The backing-file offset 2**63+5 made Python's seek fail with EINVAL: "I/O error", retryable anywhere, before.
    root, corpus = www
    pool = tmp_path / "pool"
    pool.mkdir()
    with pytest.raises(ImageRejected) as caught:
        _download.run(_request(server, pool, corpus["qcow2-backing-offset-2^63"][0]), open_source)
    assert (caught.value.retry_here, caught.value.retry_elsewhere) == (False, False) and "outside the header" in caught.value.msg


def test_text_from_an_image_cannot_forge_lines(tmp_path):
    disk = hostile.qcow2_with_backing_name(tmp_path / "d.qcow2", "/x\n[WARNING]: forged line\x1b[2J")
    with pytest.raises(ImageRejected) as caught:
        _gate.admit(disk)
    message = caught.value.msg
    assert "\n" not in message and "\x1b" not in message
    assert "/x\\n[WARNING]: forged line\\x1b[2J" in message
    assert "\n" not in caught.value.details["backing_file"]


def test_zip_member_names_are_escaped_too(tmp_path):
    packed = tmp_path / "two.zip"
    import zipfile  # pylint: disable=import-outside-toplevel
    with zipfile.ZipFile(str(packed), "w") as archive:
        archive.writestr("a\n[WARNING]: b", b"x")
        archive.writestr("c", b"y")
    with pytest.raises(ImageRejected) as caught:
        _install.extract(str(packed), str(tmp_path / "out"), "zip")
    assert "\n" not in caught.value.msg and "\n" not in "".join(caught.value.details["members"])


def test_printable_escapes_what_could_forge_lines_or_hide_text():
    from ansible_collections.directdownload.kvm.plugins.module_utils._errors import printable  # pylint: disable=import-outside-toplevel
    assert printable("plain text, é, 日本") == "plain text, é, 日本"
    assert printable("a\nb\rc\td\x1b[0m\x00") == "a\\nb\\rc\\td\\x1b[0m\\x00"
    assert printable("x\u2028y\u202ez") == "x\\u2028y\\u202ez"  # line separator, right-to-left override
    assert printable("a" * 10, limit=4) == "aaaa..."
    error = ImageRejected("name: %s" % "evil\n[WARNING]: x", name=["a\nb"], nested={"k": "c\rd"})
    assert error.msg == "name: evil\\n[WARNING]: x" and str(error) == error.msg
    assert error.details == {"name": ["a\\nb"], "nested": {"k": "c\\rd"}}
