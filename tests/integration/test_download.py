# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``download`` module through real ``ansible-playbook`` runs, against real loopback HTTP(S) servers and
images made by ``qemu-img`` at run time. Faults are real: the server truncates, stalls, corrupts, fails; the
module is killed with SIGKILL; the pool is a small tmpfs that fills up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA

from ansible_collections.directdownload.kvm.tests.integration.conftest import (
    COLLECTIONS_PATH,
    kill_module,
    kill_tree,
    run_playbook_in,
    sidecar,
    start_playbook,
    wait_for_progress,
)

MiB = 1024 * 1024


@pytest.fixture
def server(www):
    with ImageServer(www) as srv:
        yield srv


@pytest.fixture
def qcow2_image(www):
    path = www / "disk.qcow2"
    images.qcow2(str(path), size=64 * MiB, writes=[(0, 3 * MiB, 0x11), (32 * MiB, 2 * MiB, 0x22)])
    return path


def sha256(path):
    return images.sha256_file(str(path))


def visible(pool_dir):
    """What an operator (or libvirt) would see in the pool: the non-hidden entries."""
    return sorted(name for name in os.listdir(pool_dir) if not name.startswith("."))


def download(run_module, args, **options):
    """Run the download module once; return its result record."""
    record, _run = run_module("directdownload.kvm.download", args, **options)
    return record


def args_for(server, path, pool, **extra):
    args = {"url": server.url(path), "pool_path": str(pool), "retry_delay": 0.1, "progress_interval": 0.2}
    args.update(extra)
    return args


def test_download_check_real_check_then_idempotent(run_module, server, pool, qcow2_image):
    args = args_for(server, "disk.qcow2", pool, checksum="{SHA-256}" + sha256(qcow2_image).upper(), format="qcow2")

    pre = download(run_module, args, check=True, diff=True)
    assert pre["status"] == "changed" and not os.path.exists(pool / "disk.qcow2")
    assert pre["result"]["diff"]["before"]["exists"] is False

    real = download(run_module, args, diff=True)
    result = real["result"]
    assert real["status"] == "changed", result
    assert result["path"] == str(pool / "disk.qcow2") and result["format"] == "qcow2"
    assert result["virtual_size"] == 64 * MiB
    assert result["checksum"] == "{SHA-256}" + sha256(qcow2_image)
    assert result["bytes_downloaded"] == os.path.getsize(qcow2_image) and result["attempts"] == 1
    assert result["resumed_from"] == 0 and result["url"] == result["final_url"] == server.url("disk.qcow2")
    assert sha256(pool / "disk.qcow2") == sha256(qcow2_image)
    assert visible(pool) == ["disk.qcow2"]
    assert sorted(os.listdir(pool)) == [".disk.qcow2.ddinfo.json", "disk.qcow2"]

    gets_before = len(server.requests_for("/disk.qcow2"))
    post = download(run_module, args, check=True)
    again = download(run_module, args)
    assert post["status"] == "ok" and again["status"] == "ok"
    assert again["result"]["bytes_downloaded"] == 0 and again["result"]["format"] == "qcow2"
    assert len(server.requests_for("/disk.qcow2")) == gets_before, "a re-run must not touch the network"


def test_checksum_from_a_checksum_file_url_over_the_same_transport(run_module, server, pool, www, qcow2_image):
    """get_url's ``sha256:<URL>``: the SHA256SUMS file is read with the image's credentials, and its line for the
    file decides; the result echoes the Ansible form; a file without a line for the image fails before any byte."""
    digest = sha256(qcow2_image)
    (www / "SHA256SUMS").write_text("%s  other.qcow2\n%s *disk.qcow2\n" % ("0" * 64, digest.upper()))
    (www / "disk.qcow2.sha256").write_text(digest + "\n")
    secret = "s3cr3t-basic-pw"
    basic = "Basic " + __import__("base64").b64encode(("ops:" + secret).encode()).decode()
    for path in ("/SHA256SUMS", "/disk.qcow2"):
        server.set_fault(path, require_headers={"Authorization": basic})
    creds = {"url_username": "ops", "url_password": secret, "force_basic_auth": True}
    record = download(run_module, args_for(server, "disk.qcow2", pool, checksum="sha256:" + server.url("SHA256SUMS"),
                                           **creds), diff=True)
    assert record["status"] == "changed", record["result"]
    assert record["result"]["checksum"] == "sha256:" + digest
    assert secret not in json.dumps(record)
    assert [r.headers.get("authorization") for r in server.requests_for("/SHA256SUMS")] == [basic]
    # A single-digest file (.sha256) and check mode: the checksum file is read, the image is not.
    gets = len(server.requests_for("/disk.qcow2"))
    again = download(run_module, args_for(server, "disk.qcow2", pool,
                                          checksum="sha256:" + server.url("disk.qcow2.sha256"), **creds), check=True)
    assert again["status"] == "ok" and len(server.requests_for("/disk.qcow2")) == gets
    # Nothing for the file: a clear message, nothing downloaded.
    (www / "SHA256SUMS").write_text("%s  other.qcow2\n" % ("0" * 64))
    failed = download(run_module, args_for(server, "disk.qcow2", pool, name="second.qcow2",
                                           checksum="sha256:" + server.url("SHA256SUMS"), **creds))
    assert failed["status"] == "failed"
    assert "no SHA-256 checksum for disk.qcow2 in %s (it lists other.qcow2)" % server.url("SHA256SUMS") \
        in failed["result"]["msg"]
    assert len(server.requests_for("/disk.qcow2")) == gets and visible(pool) == ["disk.qcow2"]


def test_credentials_without_force_follow_a_401_challenge(run_module, server, pool, qcow2_image):
    basic = "Basic " + __import__("base64").b64encode(b"ops:pw-123456").decode()
    server.set_fault("/disk.qcow2", require_headers={"Authorization": basic})
    record = download(run_module, args_for(server, "disk.qcow2", pool, username="ops", password="pw-123456"))
    assert record["status"] == "changed", record["result"]
    statuses = [(r.status, r.headers.get("authorization")) for r in server.requests_for("/disk.qcow2")]
    assert statuses[:2] == [(401, None), (200, basic)]


def test_one_default_mode_then_mode_owner_group_changes_alone(run_module, server, pool, www, qcow2_image):
    """A plain and an extracted image get the same documented mode (0644); changing only the mode, owner or
    group of an installed image reports changed with a diff and downloads nothing; the next run is ok."""
    images.compress(str(qcow2_image), str(www / "disk.qcow2.xz"), "xz")
    plain = download(run_module, args_for(server, "disk.qcow2", pool))
    packed = download(run_module, args_for(server, "disk.qcow2.xz", pool, name="packed.qcow2"))
    assert plain["status"] == packed["status"] == "changed"
    modes = {name: oct(os.stat(pool / name).st_mode & 0o7777) for name in ("disk.qcow2", "packed.qcow2")}
    assert modes == {"disk.qcow2": "0o644", "packed.qcow2": "0o644"}

    gets = len(server.requests_for("/disk.qcow2"))
    group = __import__("grp").getgrgid(os.getgid()).gr_name
    owner = __import__("pwd").getpwuid(os.getuid()).pw_name
    args = args_for(server, "disk.qcow2", pool, mode="0640", owner=owner, group=group)
    check = download(run_module, args, check=True, diff=True)
    assert check["status"] == "changed" and oct(os.stat(pool / "disk.qcow2").st_mode & 0o777) == "0o644"
    changed = download(run_module, args, diff=True)
    assert changed["status"] == "changed", changed["result"]
    assert changed["result"]["msg"] == "changed the file attributes"
    assert changed["result"]["diff"]["before"]["mode"] == "0644"
    assert changed["result"]["diff"]["after"]["mode"] == "0640"
    assert oct(os.stat(pool / "disk.qcow2").st_mode & 0o777) == "0o640"
    assert len(server.requests_for("/disk.qcow2")) == gets and changed["result"]["bytes_downloaded"] == 0
    again = download(run_module, args)
    assert again["status"] == "ok" and again["result"]["mode"] == "0640"
    # Symbolic modes, as ansible.builtin.file takes them; the record stays valid (no re-hash, no download).
    symbolic = download(run_module, dict(args, mode="u=rw,g=,o="))
    assert symbolic["status"] == "changed" and oct(os.stat(pool / "disk.qcow2").st_mode & 0o777) == "0o600"
    assert len(server.requests_for("/disk.qcow2")) == gets
    # A new image with an octal mode is installed with it (set before the rename).
    fresh = download(run_module, args_for(server, "disk.qcow2", pool, name="fresh.qcow2", mode="0600"))
    assert fresh["status"] == "changed" and oct(os.stat(pool / "fresh.qcow2").st_mode & 0o777) == "0o600"


def test_changed_checksum_replaces_and_force_redownloads(run_module, server, pool, www, qcow2_image):
    args = args_for(server, "disk.qcow2", pool)
    first = download(run_module, args)
    assert first["status"] == "changed" and first["result"]["checksum"].startswith("{SHA-256}")
    images.qcow2(str(www / "disk.qcow2"), size=32 * MiB, writes=[(0, MiB, 0x33)])
    new_sum = "sha256:" + sha256(www / "disk.qcow2")
    replaced = download(run_module, dict(args, checksum=new_sum), diff=True)
    assert replaced["status"] == "changed" and replaced["result"]["virtual_size"] == 32 * MiB
    forced = download(run_module, dict(args, checksum=new_sum, force=True))
    assert forced["status"] == "changed" and forced["result"]["bytes_downloaded"] > 0


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zip", "zstd"])
def test_compressed_images_are_extracted_by_content(run_module, server, pool, www, qcow2_image, kind):
    # A misleading suffix on purpose: detection is by magic bytes, not by name.
    compressed = www / "disk-packed.bin"
    images.compress(str(qcow2_image), str(compressed), kind)
    args = args_for(server, "disk-packed.bin", pool, name="disk.qcow2", checksum="sha256:" + sha256(compressed))
    record = download(run_module, args)
    assert record["status"] == "changed", record["result"]
    assert record["result"]["format"] == "qcow2" and record["result"]["virtual_size"] == 64 * MiB
    assert sha256(pool / "disk.qcow2") == sha256(qcow2_image)
    assert visible(pool) == ["disk.qcow2"]


def test_iso_is_installed_as_is_and_raw_stays_sparse(run_module, server, pool, www):
    images.iso(str(www / "netinst.iso"), size=4 * MiB)
    record = download(run_module, args_for(server, "netinst.iso", pool, format="iso"))
    assert record["status"] == "changed" and record["result"]["format"] == "iso"

    images.sparse_raw(str(www / "holes.raw"), size=64 * MiB)
    record = download(run_module, args_for(server, "holes.raw", pool, format="raw"))
    assert record["result"]["format"] == "raw"
    assert images.allocated_bytes(str(pool / "holes.raw")) <= images.allocated_bytes(str(www / "holes.raw")) * 1.05


def test_https_private_ca_trust_and_host_name(run_module, www, pool, qcow2_image, tmp_path):
    ca = TestCA()
    ca_file = ca.ca_pem_path(tmp_path)
    with ImageServer(www, ssl_context=ca.server_context()) as https:
        args = args_for(https, "disk.qcow2", pool)
        untrusted = download(run_module, args)
        assert untrusted["status"] == "failed"
        assert "certificate" in untrusted["result"]["msg"].lower()
        assert untrusted["result"]["retry_elsewhere"] is True, "another host may hold the uploaded CA"
        assert untrusted["result"]["retry_here"] is False, "asking this host again gives the same answer"
        trusted = download(run_module, dict(args, ca_path=ca_file))
        assert trusted["status"] == "changed", trusted["result"]
    with ImageServer(www, ssl_context=ca.server_context(hostnames=("wrong.example.com",))) as wrong_host:
        refused = download(run_module, dict(args_for(wrong_host, "disk.qcow2", pool, name="other.qcow2"), ca_path=ca_file))
        assert refused["status"] == "failed"
        assert "host" in refused["result"]["msg"].lower()
    assert visible(pool) == ["disk.qcow2"]


def test_truncated_transfer_resumes_with_range(run_module, server, pool, qcow2_image):
    size = os.path.getsize(qcow2_image)
    server.set_fault("/disk.qcow2", truncate_at=size // 2, times=1)
    args = args_for(server, "disk.qcow2", pool, retries=0, checksum="sha256:" + sha256(qcow2_image))
    failed = download(run_module, args)
    assert failed["status"] == "failed" and failed["result"]["retry_elsewhere"] is True
    assert visible(pool) == [] and os.path.exists(pool / ".disk.qcow2.part")
    done = download(run_module, args)
    assert done["status"] == "changed", done["result"]
    assert done["result"]["resumed_from"] > 0
    assert done["result"]["bytes_downloaded"] == size - done["result"]["resumed_from"]
    assert any("bytes=%d-" % done["result"]["resumed_from"] in (r.headers.get("range") or "")
               for r in server.requests_for("/disk.qcow2"))
    assert sha256(pool / "disk.qcow2") == sha256(qcow2_image)


def test_if_range_mismatch_restarts_from_zero(run_module, server, pool, qcow2_image):
    size = os.path.getsize(qcow2_image)
    server.set_fault("/disk.qcow2", truncate_at=size // 2, times=1)
    args = args_for(server, "disk.qcow2", pool, retries=0)
    download(run_module, args)
    server.set_fault("/disk.qcow2", etag='"the-file-changed"')
    done = download(run_module, args)
    assert done["status"] == "changed", done["result"]
    assert done["result"]["resumed_from"] == 0 and done["result"]["bytes_downloaded"] == size


def test_500_then_success_and_stall_past_read_timeout(run_module, server, pool, qcow2_image):
    server.set_fault("/disk.qcow2", status=500, times=1)
    ok = download(run_module, args_for(server, "disk.qcow2", pool, retries=2))
    assert ok["status"] == "changed" and ok["result"]["attempts"] == 2

    server.set_fault("/disk.qcow2", stall_at=MiB, stall_seconds=30, times=1)
    stalled = download(run_module, args_for(server, "disk.qcow2", pool, name="stalled.qcow2", read_timeout=1, retries=1))
    assert stalled["status"] == "changed", stalled["result"]
    assert stalled["result"]["attempts"] == 2 and stalled["result"]["resumed_from"] >= MiB


def test_corrupt_body_redownloads_then_fails_with_both_digests(run_module, server, pool, qcow2_image):
    server.set_fault("/disk.qcow2", corrupt_at=12345)
    good = sha256(qcow2_image)
    failed = download(run_module, args_for(server, "disk.qcow2", pool, checksum="sha256:" + good))
    result = failed["result"]
    assert failed["status"] == "failed"
    assert result["retry_elsewhere"] is False and result["expected"] == "{SHA-256}" + good
    assert result["actual"].startswith("{SHA-256}") and result["actual"] != result["expected"]
    assert good in result["msg"]
    full_gets = [r for r in server.requests_for("/disk.qcow2", "GET") if not r.headers.get("range")]
    assert len(full_gets) == 2, "mismatch_retries defaults to 1: two downloads in all"
    size = os.path.getsize(qcow2_image)
    assert result["bytes_downloaded"] == 2 * size and "(%d bytes transferred in all)" % (2 * size) in result["msg"]
    assert os.listdir(pool) == []

    server.clear_requests()
    once = download(run_module, args_for(server, "disk.qcow2", pool, checksum="sha256:" + good, mismatch_retries=0))
    assert once["status"] == "failed" and "after 1 download " in once["result"]["msg"]
    assert len(server.requests_for("/disk.qcow2", "GET")) == 1


def test_non_2xx_and_backing_file_are_refused(run_module, server, pool, www, qcow2_image):
    missing = download(run_module, args_for(server, "missing.qcow2", pool, retries=3))
    assert missing["status"] == "failed" and "404" in missing["result"]["msg"]
    assert missing["result"]["retry_elsewhere"] is False
    assert len(server.requests_for("/missing.qcow2")) == 1, "a 404 is permanent: exactly one request"
    assert "permanent" in missing["result"]["retry_stopped"]

    images.qcow2_with_backing(str(www / "child.qcow2"), str(qcow2_image))
    refused = download(run_module, args_for(server, "child.qcow2", pool))
    assert refused["status"] == "failed" and "backing" in refused["result"]["msg"]
    assert refused["result"]["retry_elsewhere"] is False
    assert os.listdir(pool) == []

    wrong = download(run_module, args_for(server, "disk.qcow2", pool, format="iso"))
    assert wrong["status"] == "failed" and "qcow2" in wrong["result"]["msg"]
    assert os.listdir(pool) == []


def test_safety_gate_options_and_rule_through_the_module(run_module, server, pool, www, qcow2_image):
    # Issue 16 through ansible-playbook: the caps take units, a refusal names its rule, text from the image is
    # escaped (a backing-file name with a newline cannot forge a line), and nothing is left in the pool.
    images.sparse_raw(str(www / "four.raw"), 4 * MiB)
    capped = download(run_module, args_for(server, "four.raw", pool, max_size="1M"))
    assert capped["status"] == "failed" and capped["result"]["rule"] == "max_size"
    assert capped["result"]["retry_elsewhere"] is False and "max_size" in capped["result"]["msg"]
    assert os.listdir(pool) == []
    too_big = download(run_module, args_for(server, "disk.qcow2", pool, max_virtual_size="1M"))
    assert too_big["status"] == "failed" and too_big["result"]["rule"] == "max_virtual_size"
    subprocess.run([images.QEMU_IMG, "create", "-q", "-u", "-f", "qcow2", "-b", "/x\n[WARNING]: forged", "-F", "raw",
                    str(www / "forged.qcow2"), "16M"], check=True)
    forged = download(run_module, args_for(server, "forged.qcow2", pool, format="raw"))
    assert forged["status"] == "failed" and forged["result"]["rule"] == "backing_file"
    assert "\n" not in forged["result"]["msg"] and "/x\\n[WARNING]" in forged["result"]["msg"]
    assert os.listdir(pool) == []
    ok = download(run_module, args_for(server, "four.raw", pool, max_size="4M", max_expansion=10))
    assert ok["status"] == "changed" and ok["result"]["format"] == "raw"


def test_bad_inputs_fail_clearly(run_module, server, pool):
    cases = [
        (dict(checksum="{SHA-256}abc"), "64 hex characters"),
        (dict(url="ftp://example.invalid/x.qcow2"), "unsupported URL scheme"),
        (dict(name="../escape.qcow2"), "unsafe file name"),
        (dict(pool_path=str(pool / "missing")), "does not exist"),
    ]
    for extra, fragment in cases:
        record = download(run_module, args_for(server, "disk.qcow2", pool, **extra))
        assert record["status"] == "failed" and fragment in record["result"]["msg"], (extra, record["result"])


def test_secret_headers_never_shown(run_module, server, pool, qcow2_image):
    server.set_fault("/disk.qcow2", require_headers={"Authorization": "Bearer top-secret-token"})
    record, run = run_module("directdownload.kvm.download",
                             args_for(server, "disk.qcow2", pool, headers={"Authorization": "Bearer top-secret-token"}))
    assert record["status"] == "changed", record["result"]
    assert "top-secret-token" not in run.stdout + run.stderr + json.dumps(record)
    for name in os.listdir(pool):
        if name.startswith("."):
            assert "top-secret-token" not in (pool / name).read_text()


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "tmpfs-pool"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                      check=False, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_enospc_on_a_small_pool(run_module, server, www, small_tmpfs):
    images.random_raw(str(www / "big.raw"), size=16 * MiB)
    refused = download(run_module, args_for(server, "big.raw", small_tmpfs))
    assert refused["status"] == "failed" and "space" in refused["result"]["msg"].lower()
    assert os.listdir(small_tmpfs) == []

    server.set_fault("/big.raw", no_length=True)  # size unknown: the disk fills up during the write
    full = download(run_module, args_for(server, "big.raw", small_tmpfs, retries=0))
    assert full["status"] == "failed" and "no space left" in full["result"]["msg"].lower()
    assert os.listdir(small_tmpfs) == []


def test_kill_9_mid_download_leaves_no_image_and_resumes(tmp_path, www, pool):
    images.random_raw(str(www / "slow.raw"), size=24 * MiB)
    good = sha256(www / "slow.raw")
    with ImageServer(www) as srv:
        srv.set_fault("/slow.raw", rate=4 * MiB)
        play = [{"hosts": "all", "gather_facts": False, "tasks": [{
            "name": "Slow download", "directdownload.kvm.download": args_for(
                srv, "slow.raw", pool, checksum="sha256:" + good)}]}]
        proc = start_playbook(tmp_path / "killed", play)
        try:
            wait_for_progress(proc, pool, "slow.raw", 4 * MiB)
        finally:
            kill_tree(proc)
            kill_module(pool, "slow.raw")
        assert visible(pool) == [], "a killed download must not leave an image in the pool"
        assert os.path.exists(pool / ".slow.raw.part")
        srv.clear_faults()
        run = run_playbook_in(tmp_path / "again", play)
        result = run.task("Slow download")["result"]
        assert run.task("Slow download")["status"] == "changed", result
        assert result["resumed_from"] >= 4 * MiB
        assert sha256(pool / "slow.raw") == good
        assert sorted(os.listdir(pool)) == [".slow.raw.ddinfo.json", "slow.raw"]


def run_processes(workdir):
    """Every process of the ansible-playbook run in ``workdir``, found by the environment the run passes on
    (``ANSIBLE_CONFIG=<workdir>/ansible.cfg``): its workers, and the module of the download action plugin's async
    job, which the job's wrapper daemonised (no longer below ansible-playbook)."""
    marker = b"ANSIBLE_CONFIG=" + os.fsencode(str(workdir / "ansible.cfg"))
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open("/proc/%s/environ" % entry, "rb") as handle:
                    environ = handle.read().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                found.append(int(entry))
    return found


def module_processes(workdir, module="download"):
    """The module processes (AnsiballZ_<module>.py) of the run in ``workdir``: the process to signal, not the CLI's
    group."""
    found = []
    for pid in run_processes(workdir):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        # The interpreter running the module file; not the shell that starts it, nor the async wrapper (whose
        # arguments name the module file too).
        if len(argv) > 1 and argv[1].endswith(b"AnsiballZ_%s.py" % module.encode()) and not argv[0].endswith(b"sh"):
            found.append(pid)
    return found


def kill_run(proc, workdir):
    """SIGKILL ansible-playbook with its workers (kill_tree) and every other process of its run: the async job's
    module with what it started."""
    for pid in run_processes(workdir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    kill_tree(proc)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_keep_the_part_and_the_next_run_resumes(tmp_path, www, pool, signum):
    images.random_raw(str(www / "slow.raw"), size=24 * MiB)
    good = sha256(www / "slow.raw")
    with ImageServer(www) as srv:
        srv.set_fault("/slow.raw", rate=4 * MiB)
        play = [{"hosts": "all", "gather_facts": False, "tasks": [{
            "name": "Slow download", "directdownload.kvm.download": args_for(
                srv, "slow.raw", pool, checksum="sha256:" + good, format="raw")}]}]
        workdir = tmp_path / "interrupted"
        workdir.mkdir()
        results_file = workdir / "results.jsonl"
        results_file.touch()
        with start_playbook(workdir, play, results_file=results_file, output=True) as proc:
            try:
                wait_for_progress(proc, pool, "slow.raw", 4 * MiB)
                targets = module_processes(workdir)
                assert len(targets) == 1, targets
                os.kill(targets[0], signum)
                output, _err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    kill_run(proc, workdir)
        assert proc.returncode == 2, output
        results = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
        interrupted = [r for r in results if r.get("task") == "Slow download"][-1]
        result = interrupted["result"]
        assert interrupted["status"] == "failed", result
        assert "interrupted by %s at " % signum.name in result["msg"] and "run again to resume" in result["msg"]
        assert result["signal"] == signum.name and result["bytes_done"] >= 4 * MiB and result["retry_elsewhere"] is True
        assert "%d%%" % int(100 * result["bytes_done"] / (24 * MiB)) in result["msg"]
        assert visible(pool) == [], "an interrupted download must not leave an image in the pool"
        assert os.path.exists(pool / ".slow.raw.part") and sidecar(pool, "slow.raw")["bytes_done"] == result["bytes_done"]
        assert not module_processes(workdir), "the module process ended"

        srv.clear_faults()
        srv.clear_requests()
        run = run_playbook_in(tmp_path / "again", play)
        again = run.task("Slow download")["result"]
        assert run.task("Slow download")["status"] == "changed", again
        assert again["resumed_from"] == result["bytes_done"]
        assert [r.headers.get("range") for r in srv.requests_for("/slow.raw", "GET")] == [
            "bytes=%d-" % result["bytes_done"]]
        assert sha256(pool / "slow.raw") == good
        assert sorted(os.listdir(pool)) == [".slow.raw.ddinfo.json", "slow.raw"]


def test_concurrent_runs_download_once(tmp_path, server, pool, qcow2_image):
    server.set_fault("/disk.qcow2", rate=32 * MiB)
    play = [{"hosts": "all", "gather_facts": False, "tasks": [{
        "name": "Deploy", "directdownload.kvm.download": args_for(server, "disk.qcow2", pool)}]}]
    procs = []
    for i in range(3):
        procs.append(start_playbook(tmp_path / ("run%d" % i), play))
    for proc in procs:
        assert proc.wait(300) == 0
    gets = server.requests_for("/disk.qcow2", "GET")
    assert len(gets) == 1, "three concurrent runs for one image must download it once"
    assert sorted(os.listdir(pool)) == [".disk.qcow2.ddinfo.json", "disk.qcow2"]


def test_module_runs_without_ansible_for_benchmarks(tmp_path, server, pool, qcow2_image):
    """benchmarks/ run the module file directly with an args file: keep that path working."""
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args_for(server, "disk.qcow2", pool)}))
    module = os.path.join(str(COLLECTIONS_PATH), "ansible_collections", "directdownload", "kvm", "plugins",
                          "modules", "download.py")
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS_PATH))
    out = subprocess.run([sys.executable, module, str(args_file)], capture_output=True, text=True, env=env,
                         check=False)
    assert json.loads(out.stdout)["changed"] is True, out.stdout + out.stderr
    assert shutil.which("qemu-img")


@pytest.mark.parametrize("kind", [None, "gzip"])
def test_killed_during_inspection_then_the_next_run_installs(tmp_path, server, pool, www, qcow2_image, kind):
    """A SIGKILL while qemu-img inspects (an OOM kill, a reboot, an async timeout) leaves a complete ``.part``
    whose sidecar says bytes_done == total (and, for a compressed image, the extracted ``.extracting``). Before:
    every later run asked ``bytes=<size>-``, got 416 and kept the part, forever (or, compressed, downloaded it all
    again). Now the next run removes the stale ``.extracting``, asks the last byte again (If-Range) and installs
    the verified part."""
    served = "disk.qcow2"
    if kind:
        served = "disk.qcow2.gz"
        images.compress(str(qcow2_image), str(www / served), kind)
    size = os.path.getsize(www / served)
    bin_dir = tmp_path / "hanging-bin"
    bin_dir.mkdir()
    marker = tmp_path / "inspecting"
    (bin_dir / "qemu-img").write_text("#!/bin/sh\ntouch %s\nexec sleep 600\n" % marker)
    (bin_dir / "qemu-img").chmod(0o755)
    play = [{"hosts": "all", "gather_facts": False, "tasks": [{
        "name": "Deploy", "directdownload.kvm.download": args_for(
            server, served, pool, checksum="sha256:" + sha256(www / served))}]}]
    workdir = tmp_path / "killed"
    proc = start_playbook(workdir, play, env={"PATH": "%s:%s" % (bin_dir, os.environ["PATH"])})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "ansible-playbook ended before the inspection"
            assert time.monotonic() < deadline, "the module never reached the inspection"
            time.sleep(0.1)
    finally:
        kill_run(proc, workdir)  # the module process and the hanging qemu-img, each by its PID
    state = sidecar(pool, "disk.qcow2")
    assert state["bytes_done"] == state["total"] == size and visible(pool) == []
    assert (pool / ".disk.qcow2.extracting").exists() == bool(kind)

    server.clear_requests()
    run = run_playbook_in(tmp_path / "again", play)
    record = run.task("Deploy")
    assert record["status"] == "changed", record["result"]
    assert record["result"]["resumed_from"] == size - 1 and record["result"]["bytes_downloaded"] == 1
    assert [r.headers.get("range") for r in server.requests_for("/" + served, "GET")] == ["bytes=%d-" % (size - 1)]
    assert sha256(pool / "disk.qcow2") == sha256(qcow2_image)
    assert sorted(os.listdir(pool)) == [".disk.qcow2.ddinfo.json", "disk.qcow2"]


def test_fifo_at_the_destination_and_long_names_are_refused_in_check_mode_too(run_module, server, pool):
    os.mkfifo(str(pool / "disk.qcow2"))
    for check in (True, False):
        started = time.monotonic()
        record = download(run_module, args_for(server, "disk.qcow2", pool), check=check)
        assert record["status"] == "failed" and "is a FIFO" in record["result"]["msg"], record["result"]
        assert time.monotonic() - started < 60
    os.unlink(pool / "disk.qcow2")
    name = "d" * 228 + ".qcow2"  # installs, then could not write its record (File name too long): refused now
    for check in (True, False):
        record = download(run_module, args_for(server, "disk.qcow2", pool, name=name), check=check)
        assert record["status"] == "failed" and "at most 229 fit" in record["result"]["msg"], record["result"]
        assert record["result"].get("retry_elsewhere") is False
    assert os.listdir(pool) == []
