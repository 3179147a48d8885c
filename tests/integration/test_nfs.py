# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""``nfs://`` URLs through real ``ansible-playbook`` runs: ``download`` into a pool directory, ``url_check``,
registration and deployment of an NFS template with the playbooks, and a metalink that mixes an NFS and an HTTP
mirror. The server is a real nfs-ganesha on loopback (tests/unit/lib/nfs.py); images are made by qemu-img at run
time. This machine has no kernel NFS client, so the modules read with libnfs-utils (``nfs_transport: auto`` picks
it); the kernel-mount path is covered by tests/unit/plugins/module_utils/test_nfs.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._metalink import NS_V4
from ansible_collections.directdownload.kvm.tests.integration.conftest import (
    REPO_ROOT, VENV_PYTHON, _venv_tool, _write_inventory, _write_playbook, playbook_env)
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib import nfs as nfs_lib
from ansible_collections.directdownload.kvm.tests.unit.lib.nfs import GaneshaServer, ganesha_available
from ansible_collections.directdownload.kvm.tests.unit.lib.require import require
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

MiB = images.MiB
VIRTUAL = 64 * MiB
MODULE = "directdownload.kvm.download"
PLAYBOOKS = REPO_ROOT / "playbooks"

# The shared ganesha server and a fresh directory in its export, per test.
nfs_server = nfs_lib.nfs_server
nfs_export = nfs_lib.nfs_export


@pytest.fixture(name="image")
def image_fixture(nfs_export):
    """A qcow2 with data in two places, in the export."""
    return images.qcow2(nfs_export.path / "disk.qcow2", VIRTUAL, writes=[(0, 3 * MiB, 0x11), (32 * MiB, MiB, 0x22)])


def sha256(path):
    return images.sha256_file(str(path))


def visible(pool):
    return sorted(name for name in os.listdir(pool) if not name.startswith("."))


def args_for(url, pool, **extra):
    args = {"url": url, "pool_path": str(pool), "retry_delay": 0.1, "progress_interval": 0.2, "read_timeout": 5}
    args.update(extra)
    return args


@pytest.mark.parametrize("version", [3, 4])
def test_download_into_pool_then_idempotent(run_module, nfs_export, image, pool, version):
    url = nfs_export.url("disk.qcow2", version)
    args = args_for(url, pool, checksum="sha256:" + sha256(image), format="qcow2")

    pre = run_module(MODULE, args, check=True)[0]
    assert pre["status"] == "changed" and visible(pool) == []

    record = run_module(MODULE, args)[0]
    result = record["result"]
    assert record["status"] == "changed", result
    assert result["path"] == str(pool / "disk.qcow2") and result["format"] == "qcow2"
    assert result["virtual_size"] == VIRTUAL
    assert result["checksum"] == "sha256:" + sha256(image), "the checksum is echoed in the form given"
    assert result["bytes_downloaded"] == os.path.getsize(image) and result["attempts"] == 1
    assert result["url"].startswith("nfs://127.0.0.1%s/disk.qcow2" % nfs_export.path)
    assert sha256(pool / "disk.qcow2") == sha256(image)
    assert visible(pool) == ["disk.qcow2"]

    again = run_module(MODULE, args)[0]
    assert again["status"] == "ok" and again["result"]["bytes_downloaded"] == 0


def test_compressed_image_over_nfs_is_extracted(run_module, nfs_export, image, pool):
    packed = images.compress(image, nfs_export.path / "disk.qcow2.gz", "gzip")
    args = args_for(nfs_export.url("disk.qcow2.gz"), pool, checksum="sha256:" + sha256(packed))
    record = run_module(MODULE, args)[0]
    assert record["status"] == "changed", record["result"]
    assert record["result"]["path"] == str(pool / "disk.qcow2") and record["result"]["format"] == "qcow2"
    assert sha256(pool / "disk.qcow2") == sha256(image)
    assert visible(pool) == ["disk.qcow2"]


def test_missing_file_and_wrong_export_fail_clearly(run_module, nfs_export, pool):
    missing = run_module(MODULE, args_for(nfs_export.url("nope.qcow2", 4), pool, retries=0))[0]
    assert missing["status"] == "failed"
    assert "file not found" in missing["result"]["msg"]
    assert missing["result"]["retry_elsewhere"] is False  # every host would see the same

    wrong = run_module(MODULE, args_for("nfs://127.0.0.1/no/such/export/disk.qcow2?version=3", pool, retries=0))[0]
    assert wrong["status"] == "failed"
    assert "export not found" in wrong["result"]["msg"] and "MNT3ERR_ACCES" in wrong["result"]["msg"]
    assert wrong["result"]["retry_elsewhere"] is True  # export rules may leave out only this host
    assert os.listdir(pool) == []


def test_url_check_over_nfs(run_module, nfs_export, image):
    record = run_module("directdownload.kvm.url_check", {"url": nfs_export.url("disk.qcow2", 3)})[0]
    result = record["result"]
    assert record["status"] == "ok", result
    assert result["reachable"] is True
    assert result["size"] == os.path.getsize(image)
    assert result["virtual_size"] == VIRTUAL and result["format_detected"] == "qcow2"

    missing = run_module("directdownload.kvm.url_check", {"url": nfs_export.url("nope.qcow2", 3)})[0]
    assert missing["result"].get("reachable") is not True
    assert "file not found" in json.dumps(missing["result"])


def test_server_stopped_mid_transfer_installs_nothing(tmp_path, pool):
    """A private ganesha in its own network namespace; ansible-playbook runs in that namespace. The server is
    frozen once the ``.part`` holds 16 MiB, then stopped by PID: the task fails and the pool shows no image."""
    require(ganesha_available())
    export = tmp_path / "export"
    export.mkdir()
    source = images.random_raw(export / "disk.raw", 256 * MiB)
    workdir = tmp_path / "ansible"
    workdir.mkdir()
    (workdir / "ansible.cfg").touch()
    results = workdir / "results.jsonl"
    results.touch()
    play = [{"hosts": "all", "gather_facts": False, "tasks": [{
        "name": "Download", MODULE: args_for("", pool, format="raw", retries=1, checksum="sha256:" + sha256(source))}]}]
    with GaneshaServer(export, versions=(3, 4), isolated=True) as server:
        play[0]["tasks"][0][MODULE]["url"] = server.url("disk.raw", 4)
        argv = [_venv_tool("ansible-playbook"), "-i", str(_write_inventory(None, workdir)),
                str(_write_playbook(play, workdir))]
        with server.client_namespace():  # the playbook and the module it runs inherit the namespace
            proc = subprocess.Popen(argv, cwd=workdir, env=playbook_env(workdir, results), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            part = pool / ".disk.raw.part"
            deadline = time.monotonic() + 120
            while not (part.exists() and part.stat().st_size > 16 * MiB):
                assert proc.poll() is None, "the playbook ended before the transfer was under way"
                assert time.monotonic() < deadline, "the transfer never started"
                time.sleep(0.005)
            server.freeze()
            server.stop_ganesha()
            output = proc.communicate(timeout=300)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    record = [json.loads(line) for line in results.read_text().splitlines()][0]
    assert proc.returncode == 2, output
    assert record["status"] == "failed"
    assert "nfs" in record["result"]["msg"].lower()
    assert visible(pool) == []  # nothing partial at the final name


# ---------------------------------------------------------------------------------------------------------------
# Registration and deployment with the playbooks
# ---------------------------------------------------------------------------------------------------------------

def test_register_and_deploy_an_nfs_template(run_playbook, nfs_export, image, tmp_path):
    pool = tmp_path / "pool-kvm1"
    pool.mkdir()
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[kvm_hosts]\nkvm1 ansible_connection=local ansible_python_interpreter=%s directdownload_pools='%s'\n"
        % (VENV_PYTHON, json.dumps([{"path": str(pool)}])))
    registry = tmp_path / "state" / "registry.json"
    url = nfs_export.url("disk.qcow2", 3)
    common = {"directdownload_registry": str(registry), "template_name": "nfs-disk"}

    run_playbook(PLAYBOOKS / "register_template.yml", inventory=inventory, extra_vars=dict(
        common, template_url=url, template_format="qcow2", template_checksum="sha256:" + sha256(image)))
    state = json.loads(registry.read_text())
    templates = state["templates"]
    template = next(iter(templates.values())) if isinstance(templates, dict) else templates[0]
    assert template["url"] == url and template["size"] == os.path.getsize(image)
    assert template["virtual_size"] == VIRTUAL and template["checked_on"] == "kvm1"

    run = run_playbook(PLAYBOOKS / "deploy_template.yml", inventory=inventory, extra_vars=dict(
        common, deploy_claim_delay=1, deploy_download_retries=0))
    installed = visible(pool)
    assert len(installed) == 1 and sha256(pool / installed[0]) == sha256(image), (os.listdir(pool), run.output_tail())
    copies = json.loads(registry.read_text())["copies"]
    assert len(copies) == 1


# ---------------------------------------------------------------------------------------------------------------
# Metalink with an NFS and an HTTP mirror
# ---------------------------------------------------------------------------------------------------------------

def write_metalink(path, urls, data):
    entries = "".join('<url priority="%d">%s</url>' % (i + 1, url.replace("&", "&amp;")) for i, url in enumerate(urls))
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="%s"><file name="disk.qcow2">'
                    '<size>%d</size><hash type="sha-256">%s</hash>%s</file></metalink>\n'
                    % (NS_V4, len(data), hashlib.sha256(data).hexdigest(), entries))


@pytest.fixture(name="http_mirror")
def http_mirror_fixture(www, image):
    """The image over HTTP too: ``(www, server)`` (``www``, ``pool``: tests/integration/conftest.py)."""
    (www / "disk.qcow2").write_bytes(open(image, "rb").read())
    with ImageServer(www) as server:
        yield www, server


def test_metalink_prefers_the_nfs_mirror(run_module, nfs_export, image, pool, http_mirror):
    root, http = http_mirror
    data = open(image, "rb").read()
    nfs_url = nfs_export.url("disk.qcow2", 4)
    write_metalink(root / "disk.qcow2.meta4", [nfs_url, http.url("disk.qcow2")], data)
    record = run_module(MODULE, args_for(http.url("disk.qcow2.meta4"), pool, format="qcow2"))[0]
    result = record["result"]
    assert record["status"] == "changed", result
    assert result["final_url"].startswith("nfs://127.0.0.1%s/disk.qcow2" % nfs_export.path)
    assert result["mirror_errors"] == []
    assert sha256(pool / "disk.qcow2") == sha256(image)
    assert http.requests_for("/disk.qcow2") == []  # the HTTP mirror was never needed


def test_metalink_fails_over_from_a_broken_nfs_mirror_to_http(run_module, nfs_export, image, pool, http_mirror):
    root, http = http_mirror
    data = open(image, "rb").read()
    broken = nfs_export.url("missing/disk.qcow2", 3)
    write_metalink(root / "disk.qcow2.meta4", [broken, http.url("disk.qcow2")], data)
    record = run_module(MODULE, args_for(http.url("disk.qcow2.meta4"), pool, checksum="sha256:" + sha256(image)))[0]
    result = record["result"]
    assert record["status"] == "changed", result
    assert result["final_url"] == http.url("disk.qcow2")
    assert [error["url"].split("?")[0] for error in result["mirror_errors"]] == [broken.split("?")[0]]
    assert sha256(pool / "disk.qcow2") == sha256(image)


def test_segmented_metalink_uses_http_for_ranges_the_nfs_mirror_cannot_serve(run_module, nfs_export, image, pool, http_mirror):
    """connections: 2 splits the file into byte ranges. nfs-cat cannot seek, so the NFS mirror (libnfs here)
    refuses ranges (reason no_range) and the HTTP mirror serves them; the result is still exact."""
    root, http = http_mirror
    data = open(image, "rb").read()
    write_metalink(root / "disk.qcow2.meta4", [nfs_export.url("disk.qcow2", 4), http.url("disk.qcow2")], data)
    record = run_module(MODULE, args_for(http.url("disk.qcow2.meta4"), pool, connections=2, format="qcow2"))[0]
    result = record["result"]
    assert record["status"] == "changed", result
    assert sha256(pool / "disk.qcow2") == sha256(image)
    assert any(r.headers.get("range") for r in http.requests_for("/disk.qcow2"))
    assert [("cannot read byte ranges" in error["error"]) for error in result["mirror_errors"]] == [True]
