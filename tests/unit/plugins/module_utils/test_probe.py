# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""url_check's probe against real loopback HTTP(S) servers and real images made with qemu-img."""

from __future__ import annotations

import gzip
import lzma
import os
import socket
import struct
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _probe
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._http import SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import plain_source_factory
from ansible_collections.directdownload.kvm.tests.unit.lib import hostile, images
from ansible_collections.directdownload.kvm.tests.unit.lib import nfs as nfs_lib
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA

MiB = images.MiB
VIRTUAL = 96 * MiB

# The shared loopback nfs-ganesha server of tests/unit/lib/nfs.py and a fresh export directory per test.
nfs_server = nfs_lib.nfs_server
nfs_export = nfs_lib.nfs_export


def opener(**options):
    options.setdefault("trust_dir", None)
    options.setdefault("follow_redirects", True)
    options.setdefault("connect_timeout", 5)
    options.setdefault("read_timeout", 5)
    options.setdefault("proxy", "")
    return plain_source_factory(_probe.PlainSourceOptions(SourceOptions(**options)))


@pytest.fixture(name="root", scope="module")
def root_fixture(tmp_path_factory):
    """Images made once for the module: qcow2 (with data), its compressed variants, raw, ISO, an HTML page."""
    root = tmp_path_factory.mktemp("images")
    qcow2 = images.qcow2(root / "disk.qcow2", VIRTUAL, writes=[(0, MiB, 0xAB)])
    for kind, name in (("gzip", "disk.qcow2.gz"), ("bzip2", "disk.qcow2.bz2"), ("xz", "disk.qcow2.xz"),
                       ("zip", "disk.qcow2.zip"), ("zstd", "disk.qcow2.zst")):
        images.compress(qcow2, root / name, kind)
    # random data right after the header: bzip2's first block compresses badly, the probe must read further
    noisy_raw = images.random_raw(root / "noise.raw", 4 * MiB, seed=7)
    noisy = images.convert(noisy_raw, root / "noisy.qcow2", "qcow2")
    images.compress(noisy, root / "noisy.qcow2.bz2", "bzip2")
    images.random_raw(root / "disk.raw", 2 * MiB, seed=3)
    images.iso(root / "netinst.iso")
    (root / "error.qcow2").write_bytes(b"<!DOCTYPE html><html><body>Please log in</body></html>\n")
    return root


@pytest.fixture(name="server")
def server_fixture(root):
    with ImageServer(root) as srv:
        yield srv


def test_qcow2_size_virtual_size_and_format(server, root):
    result = _probe.probe_url(server.url("disk.qcow2"), opener(), image_format="qcow2")
    assert result["reachable"] is True and result["error"] is None
    assert result["status"] == 200
    assert result["size"] == os.path.getsize(root / "disk.qcow2")
    assert result["virtual_size"] == VIRTUAL
    assert result["format_detected"] == "qcow2" and result["format_matches"] is True
    assert result["compression"] is None and result["accept_ranges"] is True
    assert [r.method for r in server.requests] == ["HEAD", "GET"]
    assert server.requests[1].headers["range"] == "bytes=0-%d" % (_probe.HEAD_BYTES - 1)


@pytest.mark.parametrize("name, kind", [
    ("disk.qcow2.gz", "gzip"), ("disk.qcow2.bz2", "bzip2"), ("disk.qcow2.xz", "xz"), ("disk.qcow2.zip", "zip"),
    ("disk.qcow2.zst", "zstd"),
])
def test_compressed_qcow2_virtual_size_from_the_first_kib(server, root, name, kind):
    result = _probe.probe_url(server.url(name), opener(), image_format="qcow2")
    assert result["reachable"] is True
    assert result["compression"] == kind
    assert result["format_detected"] == "qcow2"
    assert result["virtual_size"] == VIRTUAL, "CloudStack #7929/#8037: the compressed size is not the template size"
    assert result["size"] == os.path.getsize(root / name)
    gets = server.requests_for("/" + name, "GET")
    assert len(gets) == 1 and gets[0].headers["range"].startswith("bytes=0-")


def test_bzip2_with_a_large_first_block_reads_more_but_not_the_whole_file(server):
    result = _probe.probe_url(server.url("noisy.qcow2.bz2"), opener(), image_format="qcow2")
    assert result["virtual_size"] == 4 * MiB and result["compression"] == "bzip2"
    gets = server.requests_for("/noisy.qcow2.bz2", "GET")
    assert len(gets) >= 2, "the first 64 KiB cannot hold a whole bzip2 block of random data"
    last = int(gets[-1].headers["range"].split("-")[1]) + 1
    assert last <= _probe.MAX_HEAD_BYTES


def test_raw_and_iso(server, root):
    raw = _probe.probe_url(server.url("disk.raw"), opener(), image_format="raw")
    assert raw["format_detected"] == "raw" and raw["format_matches"] is True
    assert raw["virtual_size"] == raw["size"] == 2 * MiB
    iso = _probe.probe_url(server.url("netinst.iso"), opener(), image_format="iso")
    assert iso["format_detected"] == "iso" and iso["format_matches"] is True
    assert iso["virtual_size"] == iso["size"] == os.path.getsize(root / "netinst.iso")
    wrong = _probe.probe_url(server.url("disk.qcow2"), opener(), image_format="raw")
    assert wrong["format_detected"] == "qcow2" and wrong["format_matches"] is False


def test_html_page_served_as_image(server):
    result = _probe.probe_url(server.url("error.qcow2"), opener(), image_format="qcow2")
    assert result["reachable"] is True
    assert result["format_detected"] == "html" and result["format_matches"] is False
    assert result["virtual_size"] is None
    assert "HTML page" in result["notes"][0]


def test_read_header_false_sends_head_only(server):
    result = _probe.probe_url(server.url("disk.qcow2"), opener(), image_format="qcow2", read_header=False)
    assert result["reachable"] is True and result["virtual_size"] is None and result["format_detected"] is None
    assert [r.method for r in server.requests] == ["HEAD"]


def test_head_refused_falls_back_to_ranged_get(server, root):
    server.set_fault("/disk.qcow2", status=405, method="HEAD")
    result = _probe.probe_url(server.url("disk.qcow2"), opener(), image_format="qcow2")
    assert result["reachable"] is True and result["size"] == os.path.getsize(root / "disk.qcow2")
    assert result["virtual_size"] == VIRTUAL


@pytest.mark.parametrize("fault, status, words", [
    ({"status": 404}, 404, "HTTP 404"),
    ({"status": 500}, 500, "HTTP 500"),
    ({"refuse": True}, None, ""),
])
def test_unreachable_is_a_result_not_an_exception(server, fault, status, words):
    server.set_fault("/disk.qcow2", **fault)
    result = _probe.probe_url(server.url("disk.qcow2?token=s3cret"), opener(), image_format="qcow2")
    assert result["reachable"] is False
    assert result["status"] == status
    assert words in result["error"]
    assert "s3cret" not in result["error"] and "s3cret" not in result["url"]


def test_connection_refused():
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _probe.probe_url("http://127.0.0.1:%d/disk.qcow2" % port, opener(), image_format="qcow2")
    assert result["reachable"] is False and "refused" in result["error"]


def test_template_headers_are_sent(server):
    server.set_fault("*", require_headers={"Authorization": "Bearer right-token-value"})
    missing = _probe.probe_url(server.url("disk.qcow2"), opener(), image_format="qcow2")
    assert missing["reachable"] is False and missing["status"] == 401
    good = _probe.probe_url(server.url("disk.qcow2"), opener(headers={"Authorization": "Bearer right-token-value"}),
                            image_format="qcow2")
    assert good["reachable"] is True and good["virtual_size"] == VIRTUAL
    assert all(r.headers.get("authorization") == "Bearer right-token-value" for r in server.requests[-2:])


def test_redirects_follow_the_policy(server):
    server.set_fault("/old.qcow2", redirect_to="/disk.qcow2")
    followed = _probe.probe_url(server.url("old.qcow2"), opener(), image_format="qcow2")
    assert followed["reachable"] is True and followed["final_url"] == server.url("disk.qcow2")
    assert followed["virtual_size"] == VIRTUAL
    server.set_fault("/old.qcow2", redirect_to="/disk.qcow2")
    refused = _probe.probe_url(server.url("old.qcow2"), opener(follow_redirects=False), image_format="qcow2")
    assert refused["reachable"] is False and "follow_redirects is off" in refused["error"]


def test_https_with_the_hosts_trust(root, tmp_path):
    ca = TestCA()
    with ImageServer(root, ssl_context=ca.server_context()) as srv:
        untrusted = _probe.probe_url(srv.url("disk.qcow2"), opener(), image_format="qcow2")
        assert untrusted["reachable"] is False and "certificate" in untrusted["error"].lower()
        trust_dir = tmp_path / "trust.d"
        trust_dir.mkdir()
        ca.ca_pem_path(trust_dir)
        trusted = _probe.probe_url(srv.url("disk.qcow2"), opener(trust_dir=str(trust_dir)), image_format="qcow2")
        assert trusted["reachable"] is True and trusted["virtual_size"] == VIRTUAL
        by_ca_path = _probe.probe_url(srv.url("disk.qcow2.xz"), opener(ca_path=ca.ca_pem_path(tmp_path)),
                                      image_format="qcow2")
        assert by_ca_path["virtual_size"] == VIRTUAL, "CloudStack #7929: compressed qcow2 over HTTPS"


METALINK = """<?xml version="1.0" encoding="UTF-8"?>
<metalink xmlns="urn:ietf:params:xml:ns:metalink">
  <file name="disk.qcow2">
    <size>{size}</size>
    <url priority="1">{missing}</url>
    <url priority="2">{good}</url>
  </file>
</metalink>
"""


def test_metalink_mirrors_probed_in_order_size_from_the_image(server, root):
    size = os.path.getsize(root / "disk.qcow2")
    (root / "disk.meta4").write_text(METALINK.format(size=size, missing=server.url("gone.qcow2"),
                                                     good=server.url("disk.qcow2")))
    try:
        result = _probe.probe_url(server.url("disk.meta4"), opener(), image_format="qcow2")
    finally:
        os.unlink(root / "disk.meta4")
    assert result["reachable"] is True
    assert result["mirror"] == server.url("disk.qcow2")
    assert [e["url"] for e in result["mirror_errors"]] == [server.url("gone.qcow2")]
    assert "404" in result["mirror_errors"][0]["error"]
    # CloudStack #13916 read bytes 24-31 of the XML as the virtual size
    assert result["virtual_size"] == VIRTUAL and result["size"] == size
    assert result["metalink"]["name"] == "disk.qcow2"


def test_metalink_by_content_type_and_mirror_with_wrong_size(server, root):
    size = os.path.getsize(root / "disk.qcow2")
    (root / "list.txt").write_text(METALINK.format(size=size, missing=server.url("disk.raw"),
                                                   good=server.url("disk.qcow2")))
    server.set_fault("/list.txt", content_type="application/metalink4+xml")
    try:
        result = _probe.probe_url(server.url("list.txt"), opener(), image_format="qcow2")
    finally:
        os.unlink(root / "list.txt")
    assert result["reachable"] is True and result["virtual_size"] == VIRTUAL
    assert "the metalink says %d" % size in result["mirror_errors"][0]["error"]


def test_metalink_with_no_reachable_mirror(server, root):
    (root / "dead.meta4").write_text(METALINK.format(size=10, missing=server.url("a.qcow2"),
                                                     good=server.url("b.qcow2")))
    try:
        result = _probe.probe_url(server.url("dead.meta4"), opener(), image_format="qcow2")
    finally:
        os.unlink(root / "dead.meta4")
    assert result["reachable"] is False
    assert "no mirror of the metalink answered" in result["error"]
    assert len(result["mirror_errors"]) == 2


def test_nfs_url_is_probed_through_the_nfs_source(nfs_export, root):
    """CloudStack's NFS checker only parses the URL and reports no size; here the host really reads it."""
    nfs_export.write("disk.qcow2.xz", (root / "disk.qcow2.xz").read_bytes())
    nfs_export.write("netinst.iso", (root / "netinst.iso").read_bytes())
    open_nfs = plain_source_factory(_probe.PlainSourceOptions(SourceOptions(trust_dir=None), nfs_transport="libnfs"))
    result = _probe.probe_url(nfs_export.url("disk.qcow2.xz"), open_nfs, image_format="qcow2")
    assert result["reachable"] is True and result["status"] is None
    assert result["size"] == os.path.getsize(root / "disk.qcow2.xz")
    assert (result["compression"], result["format_detected"], result["virtual_size"]) == ("xz", "qcow2", VIRTUAL)
    iso = _probe.probe_url(nfs_export.url("netinst.iso"), open_nfs, image_format="iso")
    assert iso["format_detected"] == "iso" and iso["format_matches"] is True
    missing = _probe.probe_url(nfs_export.url("missing.qcow2"), open_nfs, image_format="qcow2")
    assert missing["reachable"] is False and missing["error"]


def test_bad_url_raises():
    with pytest.raises(InvalidInput):
        _probe.probe_url("ftp://example.invalid/x.qcow2", opener())


# ---------------------------------------------------------------------------------------------------------------
# pure functions on bytes
# ---------------------------------------------------------------------------------------------------------------

def qcow2_header(virtual_size):
    return b"QFI\xfb" + struct.pack(">IQII", 3, 0, 0, 16) + struct.pack(">Q", virtual_size) + bytes(4096 - 32)


def test_qcow2_virtual_size_checks_the_magic():
    assert _probe.qcow2_virtual_size(qcow2_header(12345)) == 12345
    assert _probe.qcow2_virtual_size(b"XXXX" + qcow2_header(12345)[4:]) is None, "CloudStack skipped this check"
    assert _probe.qcow2_virtual_size(b"QFI\xfb") is None


@pytest.mark.parametrize("head, expected", [
    (b"KDMV" + bytes(100), "vmdk"),
    (b"vhdxfile" + bytes(100), "vhdx"),
    (b"conectix" + bytes(100), "vpc"),
    (b"  <html><body>x", "html"),
    (bytes(100), None),                       # too short to rule out an ISO
    (bytes(_probe.ISO_NEEDS), "raw"),
])
def test_detect_format(head, expected):
    assert _probe.detect_format(head) == expected


def test_decompress_head_of_a_truncated_stream():
    data = qcow2_header(777) + os.urandom(256 * 1024)
    for kind, packed in (("gzip", gzip.compress(data)), ("xz", lzma.compress(data))):
        plain = _probe.decompress_head(packed[:2000], kind, wanted=64)
        assert _probe.qcow2_virtual_size(plain) == 777
    with pytest.raises(InvalidInput, match="gzip stream at the start of the image is corrupt"):
        _probe.decompress_head(b"\x1f\x8b\x08\x00garbage-garbage-garbage", "gzip")


_COLLECTIONS = os.path.abspath(os.path.join(os.path.dirname(_probe.__file__), "..", "..", "..", "..", ".."))


# ---------------------------------------------------------------- url_check's head is bounded

def _peak_rss_mib(code):
    script = textwrap.dedent("""\
        import resource, sys
        sys.path.insert(0, %r)
        from ansible_collections.directdownload.kvm.plugins.module_utils import _probe
        %s
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """) % (_COLLECTIONS, code)
    out = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, check=True).stdout
    return int(out.split()[-1]) / 1024.0


@pytest.mark.parametrize("builder", ["zstd", "gzip", "xz", "bzip2"])
def test_url_check_head_decompression_has_bounded_memory(tmp_path, builder):
    if builder == "zstd":
        bomb = hostile.zstd_rle_bomb(tmp_path / "bomb", 1600 * MiB)  # ~49 KB
    else:
        bomb = hostile.concatenated_bomb(tmp_path / "bomb", builder, 64 * MiB, 4)
    head = open(bomb, "rb").read(_probe.MAX_HEAD_BYTES)
    baseline = _peak_rss_mib("pass")
    peak = _peak_rss_mib("plain = _probe.decompress_head(open(%r, 'rb').read(), %r); assert len(plain) <= 4096"
                         % (bomb, builder))
    assert len(head) < _probe.MAX_HEAD_BYTES
    assert peak - baseline < 64, "decompressing the head of a %s bomb cost %.0f MiB" % (builder, peak - baseline)


def test_url_check_sees_what_the_gate_sees(tmp_path):
    disk = hostile.vmdk_descriptor(tmp_path / "d.img", "/etc/shadow", "comment")
    assert _probe.detect_format(open(disk, "rb").read(64 * 1024)) == "vmdk"
    poly = hostile.qcow2_iso_polyglot(tmp_path / "p.iso", "/etc/shadow")
    result = _probe.inspect_head(lambda count: open(poly, "rb").read(count))
    assert result["format_detected"] == "qcow2"
    assert any("iso" in note and "refuse" in note for note in result["notes"])
    assert any("backing file" in note for note in result["notes"])
