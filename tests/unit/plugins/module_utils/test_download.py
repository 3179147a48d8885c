# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The engine call (_download) against a real loopback server and real qemu-img, without Ansible."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _download
from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import parse_checksum
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    ChecksumMismatch,
    ImageRejected,
    InvalidInput,
    SourceError,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._http import SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._source import Source
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import open_source
from ansible_collections.directdownload.kvm.tests.unit.lib import images

MiB = 1024 * 1024


@pytest.fixture
def www(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    images.qcow2(str(root / "disk.qcow2"), size=16 * MiB, writes=[(0, MiB, 0x5A)])
    return root


# pool and server: tests/unit/conftest.py (server serves this module's www)


def request_for(server, pool, path="disk.qcow2", **kwargs):
    kwargs.setdefault("source_options", SourceOptions(read_timeout=5))
    kwargs.setdefault("retry_delay", 0)
    kwargs.setdefault("progress_interval", 0)
    return _download.DownloadRequest(server.url(path), str(pool), **kwargs)


@pytest.mark.parametrize("url, name", [
    ("http://h/a/debian-12.qcow2", "debian-12.qcow2"),
    ("http://h/a/debian-12.qcow2.xz?sig=1", "debian-12.qcow2"),
    ("https://h/debian-12.qcow2.meta4", "debian-12.qcow2"),
    ("nfs://h/export/netinst.iso?version=4", "netinst.iso"),
])
def test_default_names(url, name):
    assert _download.default_name(url) == name


def test_request_validation(pool):
    with pytest.raises(InvalidInput, match="unsupported URL scheme"):
        _download.DownloadRequest("ftp://h/x.qcow2", str(pool))
    with pytest.raises(InvalidInput, match="unsafe file name"):
        _download.DownloadRequest("http://h/x.qcow2", str(pool), name="../x")
    with pytest.raises(InvalidInput, match="format must be one of"):
        _download.DownloadRequest("http://h/x.qcow2", str(pool), image_format="vmdk")


def test_plan_then_run_then_plan_again(server, pool, www):
    good = parse_checksum("sha256:" + images.sha256_file(str(www / "disk.qcow2")))
    request = request_for(server, pool, checksum=good)
    assert _download.plan(request).action == "download"
    result = _download.run(request, open_source)
    assert result["changed"] and result["format"] == "qcow2" and result["virtual_size"] == 16 * MiB
    assert result["checksum"] == good.cloudstack and result["extracted_from"] is None
    decision = _download.plan(request)
    assert (decision.action, decision.reason) == ("none", "installed with this checksum")
    again = _download.run(request, open_source)
    assert not again["changed"] and again["bytes_downloaded"] == 0
    assert sorted(os.listdir(pool)) == [".disk.qcow2.ddinfo.json", "disk.qcow2"], "no lock or part left behind"


def test_the_result_names_the_compression_it_extracted(server, pool, www):
    images.compress(www / "disk.qcow2", www / "disk.qcow2.gz", "gzip")
    result = _download.run(request_for(server, pool, path="disk.qcow2.gz"), open_source)
    assert result["extracted_from"] == "gzip" and result["format"] == "qcow2" and result["name"] == "disk.qcow2"


def test_plan_decisions_for_existing_files(server, pool, www):
    source_sum = images.sha256_file(str(www / "disk.qcow2"))
    (pool / "disk.qcow2").write_bytes((www / "disk.qcow2").read_bytes())
    adopt = request_for(server, pool, checksum=parse_checksum("sha256:" + source_sum))
    assert _download.plan(adopt).action == "adopt"
    result = _download.run(adopt, open_source)
    assert result["changed"] and result["bytes_downloaded"] == 0 and "matches the checksum" in result["msg"]

    other = request_for(server, pool, checksum=parse_checksum("sha256:" + "0" * 64))
    assert _download.plan(other).action == "replace"
    assert _download.plan(request_for(server, pool, force=True)).action == "replace"

    os.utime(pool / "disk.qcow2", ns=(1, 1))  # touched: the record no longer vouches for the file
    decision = _download.plan(request_for(server, pool))
    assert decision.action == "replace" and "changed since it was recorded" in decision.reason

    (pool / "dir.qcow2").mkdir()
    with pytest.raises(InvalidInput, match="is a directory"):
        _download.plan(request_for(server, pool, name="dir.qcow2"))


def test_unrecorded_file_without_checksum_is_left_alone(server, pool):
    images.qcow2(str(pool / "disk.qcow2"), size=MiB)
    decision = _download.plan(request_for(server, pool))
    assert decision.action == "none" and "use force" in decision.reason
    result = _download.run(request_for(server, pool), open_source)
    assert not result["changed"] and result["format"] == "qcow2" and result["virtual_size"] == MiB


def test_progress_sidecar_and_resume_identity(server, pool, www):
    size = os.path.getsize(www / "disk.qcow2")
    server.set_fault("/disk.qcow2", truncate_at=size // 2, times=1)
    request = request_for(server, pool, retries=0, checksum=parse_checksum(
        "sha256:" + images.sha256_file(str(www / "disk.qcow2"))))
    with pytest.raises(SourceError) as failure:
        _download.run(request, open_source)
    assert (failure.value.retry_here, failure.value.retry_elsewhere) == (True, True) and failure.value.details["attempts"] == 1
    sidecar = json.loads((pool / ".disk.qcow2.part.json").read_text())
    assert sidecar["bytes_done"] > 0 and sidecar["total"] == size
    assert sidecar["source"] == server.url("disk.qcow2") and len(sidecar["identity"]) == 64
    assert {"rate", "eta", "percent", "updated_at", "progress"} <= set(sidecar)

    # Another checksum is another identity: the part is not resumed for it.
    other = request_for(server, pool, retries=0)
    result = _download.run(other, open_source)
    assert result["resumed_from"] == 0 and result["bytes_downloaded"] == size


def test_mismatch_is_bounded_and_leaves_nothing(server, pool):
    server.set_fault("/disk.qcow2", corrupt_at=100)
    request = request_for(server, pool, checksum=parse_checksum("{MD5}" + "a" * 32))
    with pytest.raises(ChecksumMismatch) as failure:
        _download.run(request, open_source)
    assert failure.value.expected == "{MD5}" + "a" * 32 and (failure.value.retry_here, failure.value.retry_elsewhere) == (False, False)
    assert "after 2 downloads" in failure.value.msg, "mismatch_retries defaults to 1: two downloads in all"
    assert "bytes transferred in all" in failure.value.msg and failure.value.details["downloads"] == 2
    assert os.listdir(pool) == []


def test_an_announced_size_above_max_size_is_refused_before_the_transfer(server, pool, www):
    size = os.path.getsize(str(www / "disk.qcow2"))
    request = request_for(server, pool, max_size=size - 1)
    with pytest.raises(ImageRejected) as failure:
        _download.run(request, open_source)
    assert failure.value.details["rule"] == "max_size" and "before the transfer" in failure.value.msg
    assert (failure.value.retry_here, failure.value.retry_elsewhere) == (False, False)
    assert os.listdir(pool) == [], "nothing written, no .part kept"
    assert len(server.requests_for("/disk.qcow2")) == 1, "refused on the first answer, never retried"
    assert _download.run(request_for(server, pool, max_size=size), open_source)["changed"]


# ---------------------------------------------------------------- crash and attack safety (issue 17)

def _run_in_a_process_and_kill_during_inspection(server, pool, tmp_path, url_path="disk.qcow2"):
    """Run the engine in a real child process whose ``qemu-img`` hangs, SIGKILL it while it inspects: exactly
    what an OOM kill, a reboot or an async timeout during inspection leaves in the pool."""
    marker = tmp_path / "inspecting"
    hang = tmp_path / "qemu-img-hangs"
    hang.write_text("#!/bin/sh\ntouch %s\nexec sleep 600\n" % marker)
    hang.chmod(0o755)
    code = (
        "import sys\n"
        "from ansible_collections.directdownload.kvm.plugins.module_utils import _download, _http, _sources\n"
        "request = _download.DownloadRequest(sys.argv[1], sys.argv[2], retry_delay=0, progress_interval=0,\n"
        "    qemu_img=sys.argv[3], source_options=_http.SourceOptions(read_timeout=5))\n"
        "_download.run(request, _sources.open_source)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    child = subprocess.Popen([sys.executable, "-c", code, server.url(url_path), str(pool), str(hang)], env=env,  # pylint: disable=consider-using-with
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the child ended before inspecting"
            assert time.monotonic() < deadline, "the child never reached the inspection"
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the child and its hanging qemu-img
        child.wait(30)


def test_a_part_left_complete_by_a_kill_is_verified_and_installed(server, pool, www, tmp_path):
    size = os.path.getsize(www / "disk.qcow2")
    _run_in_a_process_and_kill_during_inspection(server, pool, tmp_path)
    sidecar = json.loads((pool / ".disk.qcow2.part.json").read_text())
    assert sidecar["bytes_done"] == sidecar["total"] == size and not (pool / "disk.qcow2").exists()
    server.clear_requests()
    # Before the fix every later run asked bytes=<size>-, got 416 and kept the part: stuck forever.
    result = _download.run(request_for(server, pool), open_source)
    assert result["changed"] and result["resumed_from"] == size - 1 and result["bytes_downloaded"] == 1
    assert [r.headers.get("range") for r in server.requests_for("/disk.qcow2", "GET")] == ["bytes=%d-" % (size - 1)]
    assert images.sha256_file(str(pool / "disk.qcow2")) == images.sha256_file(str(www / "disk.qcow2"))
    assert sorted(os.listdir(pool)) == [".disk.qcow2.ddinfo.json", "disk.qcow2"]


def test_a_complete_part_that_does_not_verify_is_fetched_again(server, pool, www, tmp_path):
    size = os.path.getsize(www / "disk.qcow2")
    good = parse_checksum("sha256:" + images.sha256_file(str(www / "disk.qcow2")))
    request = request_for(server, pool, checksum=good)
    _run_in_a_process_and_kill_during_inspection(server, pool, tmp_path)
    # The child had no checksum: give the part the identity of this request, and spoil a byte of it.
    sidecar = json.loads((pool / ".disk.qcow2.part.json").read_text())
    sidecar["identity"] = _download.part_identity(request, [good])
    (pool / ".disk.qcow2.part.json").write_text(json.dumps(sidecar))
    with open(pool / ".disk.qcow2.part", "r+b") as handle:
        handle.seek(10)
        handle.write(b"\xff")
    result = _download.run(request, open_source)
    assert result["changed"] and result["bytes_downloaded"] == size + 1 and result["resumed_from"] == 0
    assert images.sha256_file(str(pool / "disk.qcow2")) == good.hexdigest


def test_a_416_on_resume_starts_again_from_byte_0(server, pool, www):
    """The file on the server got shorter than the part: 416 for the resume, then one download from 0."""
    size = os.path.getsize(www / "disk.qcow2")
    server.set_fault("/disk.qcow2", truncate_at=size // 2, times=1)
    with pytest.raises(SourceError):
        _download.run(request_for(server, pool, retries=0), open_source)
    sidecar = json.loads((pool / ".disk.qcow2.part.json").read_text())
    sidecar["bytes_done"] = size + 4096  # as a part of a larger, older version of the file would say
    sidecar["total"] = None
    (pool / ".disk.qcow2.part.json").write_text(json.dumps(sidecar))
    server.clear_requests()
    result = _download.run(request_for(server, pool, retries=0), open_source)
    assert result["changed"] and result["resumed_from"] == 0 and result["bytes_downloaded"] == size
    assert [r.status for r in server.requests_for("/disk.qcow2", "GET")] == [416, 200]


def test_a_stale_extracting_file_is_removed_at_the_start_of_a_run(server, pool):
    _download.run(request_for(server, pool), open_source)
    (pool / ".disk.qcow2.extracting").write_bytes(b"half an image from a killed run")
    result = _download.run(request_for(server, pool), open_source)
    assert not result["changed"]
    assert sorted(os.listdir(pool)) == [".disk.qcow2.ddinfo.json", "disk.qcow2"]


def _half_part(server, pool, www, **fault):
    size = os.path.getsize(www / "disk.qcow2")
    server.set_fault("/disk.qcow2", truncate_at=size // 2, times=1, **fault)
    with pytest.raises(SourceError):
        _download.run(request_for(server, pool, retries=0), open_source)
    assert json.loads((pool / ".disk.qcow2.part.json").read_text())["bytes_done"] > 0


def _new_version(www, written=MiB):
    path = www / "disk.qcow2"
    images.qcow2(str(path) + ".new", size=16 * MiB, writes=[(0, written, 0x77)])
    os.replace(str(path) + ".new", str(path))
    return images.sha256_file(str(path))


def test_a_206_of_another_version_falls_back_to_a_full_download(server, pool, www):
    """A proxy that ignores If-Range answers 206 with the new file's ETag: appending those bytes to the old ones
    would install an image of two versions (no checksum to catch it). The engine downloads again from 0."""
    _half_part(server, pool, www)
    new_sum = _new_version(www)
    server.set_fault("/disk.qcow2", ignore_if_range=True)
    server.clear_requests()
    result = _download.run(request_for(server, pool, retries=0), open_source)
    assert result["changed"] and result["resumed_from"] == 0
    assert images.sha256_file(str(pool / "disk.qcow2")) == new_sum
    assert [r.status for r in server.requests_for("/disk.qcow2", "GET")] == [206, 200]


def test_a_206_with_another_total_falls_back_to_a_full_download(server, pool, www):
    """Without validators to compare, the total in Content-Range still tells another version."""
    _half_part(server, pool, www, no_validators=True)
    old_size = os.path.getsize(www / "disk.qcow2")
    new_sum = _new_version(www, written=3 * MiB)
    assert os.path.getsize(www / "disk.qcow2") != old_size
    server.set_fault("/disk.qcow2", ignore_if_range=True, no_validators=True)
    result = _download.run(request_for(server, pool, retries=0), open_source)
    assert result["changed"] and result["resumed_from"] == 0
    assert images.sha256_file(str(pool / "disk.qcow2")) == new_sum


def test_a_206_for_other_bytes_falls_back_to_a_full_download_once(server, pool, www):
    _half_part(server, pool, www)
    server.set_fault("/disk.qcow2", range_start=0)  # Content-Range: bytes 0-...: not what was asked
    server.clear_requests()
    result = _download.run(request_for(server, pool, retries=0), open_source)
    assert result["changed"] and result["resumed_from"] == 0
    assert images.sha256_file(str(pool / "disk.qcow2")) == images.sha256_file(str(www / "disk.qcow2"))
    assert [r.status for r in server.requests_for("/disk.qcow2", "GET")] == [206, 200]


@pytest.mark.parametrize("where", ["disk.qcow2", ".disk.qcow2.part", ".disk.qcow2.part.json", ".disk.qcow2.lock",
                                   ".disk.qcow2.ddinfo.json", ".disk.qcow2.extracting"])
def test_a_fifo_at_the_destination_or_a_helper_name_is_refused_without_blocking(server, pool, where):
    os.mkfifo(str(pool / where))
    outcome = {}

    def attempt():
        for mode in ("plan", "run"):
            try:
                (_download.plan if mode == "plan" else lambda r: _download.run(r, open_source))(
                    request_for(server, pool))
                outcome[mode] = "no error"
            except InvalidInput as exc:
                outcome[mode] = exc.msg

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "a FIFO at %s blocked the task" % where
    for mode in ("plan", "run"):
        assert "FIFO" in outcome[mode] and where in outcome[mode], outcome
    assert os.listdir(pool) == [where], "nothing else was created"


@pytest.mark.parametrize("where", ["disk.qcow2", ".disk.qcow2.part"])
def test_a_device_at_the_destination_is_refused(server, pool, where):
    try:
        os.mknod(str(pool / where), 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD (root outside a restricted container)")
    for call in (_download.plan, lambda r: _download.run(r, open_source)):
        with pytest.raises(InvalidInput, match="is a character device"):
            call(request_for(server, pool))
    assert os.listdir(pool) == [where]
    assert _download.file_facts(str(pool / where))["type"] == "character device"


def test_names_too_long_for_the_helper_files_are_refused_up_front(server, pool):
    limit = os.pathconf(str(pool), "PC_NAME_MAX")
    # The longest helper: .<name>.ddinfo.json plus the temporary suffix of its atomic write (a transfer in ranges
    # keeps its resume state in .<name>.part.json: one sidecar).
    fits = limit - len(".ddinfo.json") - 1 - 13
    name = "d" * (fits - len(".qcow2")) + ".qcow2"
    result = _download.run(request_for(server, pool, name=name), open_source)
    assert result["changed"] and os.path.exists(pool / name)
    for length in (fits + 1, 230, 234, limit):
        too_long = "d" * (length - len(".qcow2")) + ".qcow2"
        with pytest.raises(InvalidInput, match="at most %d fit" % fits):
            _download.plan(request_for(server, pool, name=too_long))  # check mode refuses too
        with pytest.raises(InvalidInput, match="at most %d fit" % fits):
            _download.run(request_for(server, pool, name=too_long), open_source)
    assert sorted(os.listdir(pool)) == sorted([name, ".%s.ddinfo.json" % name])


def test_a_symlink_at_the_old_sidecar_temp_name_does_not_redirect_the_write(server, pool, tmp_path, www):
    """The sidecar's temporary file used to be ``.<name>.part.json.<pid>.tmp`` opened O_CREAT|O_TRUNC: anyone
    who can create entries in the pool (a shared export) made the root-run module overwrite any file."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    planted = pool / (".disk.qcow2.part.json.%d.tmp" % os.getpid())
    planted.symlink_to(victim)
    result = _download.run(request_for(server, pool), open_source)
    assert result["changed"]
    assert victim.read_bytes() == b"precious"
    assert os.path.islink(planted)


def test_a_metalink_behind_a_redirect_is_read_as_a_metalink(server, pool, www):
    """``/latest`` -> ``image.meta4`` served as application/octet-stream (nginx's default): decided on the final
    URL and the Content-Type, not on the URL given, so the XML is never installed as the image."""
    pytest.importorskip("lxml")
    data = (www / "disk.qcow2").read_bytes()
    (www / "image.meta4").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file '
        'name="disk.qcow2"><size>%d</size><hash type="sha-256">%s</hash><url>%s</url></file></metalink>\n'
        % (len(data), images.sha256_file(str(www / "disk.qcow2")), server.url("disk.qcow2")))
    server.set_fault("/latest", redirect_to="/image.meta4")
    server.set_fault("/image.meta4", content_type="application/octet-stream")
    request = _download.DownloadRequest(server.url("latest"), str(pool), name="disk.qcow2", retry_delay=0,
                                        source_options=SourceOptions(read_timeout=5, follow_redirects=True))
    result = _download.run(request, open_source)
    assert result["changed"] and result["format"] == "qcow2"
    assert result["url"] == server.url("disk.qcow2")
    assert (pool / "disk.qcow2").read_bytes() == data


def test_a_symlink_planted_at_the_part_after_the_plan_is_refused(server, pool, tmp_path):
    """The race: the plan saw nothing at ``.disk.qcow2.part``, then someone with write access to the pool plants a
    symlink there before the transfer opens it. The open does not follow it (O_NOFOLLOW) and the run says why."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")

    class PlantingSource(Source):
        """The real HTTP source; its ``open`` first plants the symlink, as the attacker would at that moment."""

        def __init__(self, inner):
            self.inner = inner

        def open(self, **kwargs):
            os.symlink(str(victim), str(pool / ".disk.qcow2.part"))
            return self.inner.open(**kwargs)

    with pytest.raises(InvalidInput, match=r"\.disk\.qcow2\.part: it is a symlink"):
        _download.run(request_for(server, pool), lambda url, request: PlantingSource(open_source(url, request)))
    assert victim.read_bytes() == b"precious"


def test_a_hard_link_planted_at_the_part_is_never_written(server, pool, www):
    """Someone who can write the pool links ``.disk.qcow2.part`` to another file of that file system and forges a
    sidecar that resumes it: writing the part would truncate and overwrite that file. Refused, in check mode too."""
    _half_part(server, pool, www)
    victim = pool / "victim"
    victim.write_bytes(b"precious")
    os.unlink(pool / ".disk.qcow2.part")
    os.link(str(victim), str(pool / ".disk.qcow2.part"))
    for call in (_download.plan, lambda r: _download.run(r, open_source)):
        with pytest.raises(InvalidInput, match="hard link"):
            call(request_for(server, pool, retries=0))
    assert victim.read_bytes() == b"precious"


def test_a_hard_linked_record_is_fine(server, pool):
    """Records and sidecars are replaced by a rename, which never writes through another name: no refusal."""
    _download.run(request_for(server, pool), open_source)
    os.link(str(pool / ".disk.qcow2.ddinfo.json"), str(pool / "record-copy"))
    assert _download.plan(request_for(server, pool)).action == "none"
    assert _download.run(request_for(server, pool, force=True), open_source)["changed"]
    assert json.loads((pool / "record-copy").read_text())["st_ino"] != os.stat(pool / "disk.qcow2").st_ino


def test_mismatch_retries_zero_downloads_once(server, pool, www):
    server.set_fault("/disk.qcow2", corrupt_at=100)
    request = request_for(server, pool, mismatch_retries=0,
                          checksum=parse_checksum("sha256:" + images.sha256_file(str(www / "disk.qcow2"))))
    with pytest.raises(ChecksumMismatch) as failure:
        _download.run(request, open_source)
    size = os.path.getsize(www / "disk.qcow2")
    assert len(server.requests_for("/disk.qcow2", "GET")) == 1
    assert failure.value.details["bytes_downloaded"] == size and "after 1 download (%d bytes" % size in failure.value.msg
    assert failure.value.actual != failure.value.expected and failure.value.expected in failure.value.msg
    assert os.listdir(pool) == []
    with pytest.raises(InvalidInput, match="mismatch_retries"):
        request_for(server, pool, mismatch_retries=-1)


def test_a_refused_resume_restarts_from_zero_once_and_says_so(server, pool, www):
    size = os.path.getsize(www / "disk.qcow2")
    server.set_fault("/disk.qcow2", truncate_at=size // 2, times=1)
    with pytest.raises(SourceError):
        _download.run(request_for(server, pool, retries=0), open_source)
    server.set_fault("/disk.qcow2", no_range=True)  # the server lost its range support since
    result = _download.run(request_for(server, pool, retries=0), open_source)
    assert result["restarted_from"] > 0 and "refused to resume at byte %d" % result["restarted_from"] in result["msg"]
    assert result["bytes_downloaded"] == size

    # A second refusal in the same run ends it instead of downloading the whole image again and again.
    server.set_fault("/disk.qcow2", no_range=True, truncate_at=size // 2)
    server.clear_requests()
    request = request_for(server, pool, name="again.qcow2", retries=5)
    with pytest.raises(SourceError) as failure:
        _download.run(request, open_source)
    assert failure.value.details["reason"] == "resume_refused" and "downloading the whole image once more" in failure.value.msg
    # 1: from 0, cut at half; 2: resume refused, from 0 again, cut; 3: refused again -> stop (not 6 full GETs).
    assert len(server.requests_for("/disk.qcow2", "GET")) == 3
