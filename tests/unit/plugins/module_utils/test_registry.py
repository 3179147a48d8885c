# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The registry state file: locking, atomic writes, corruption handling, schema versions, tables."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
from ansible_collections.directdownload.kvm.plugins.module_utils._registry import Registry, RegistryError

# The directory holding ansible_collections/, as this process imported it: child writers import the same code.
REPO_COLLECTIONS = str(Path(reg.__file__).parents[5])

TEMPLATE = {
    "name": "debian-12",
    "url": "https://user:pw@mirror.example/debian-12.qcow2?sig=abc",
    "format": "qcow2",
    "type": "template",
    "checksum": "{SHA-256}" + "a" * 64,
    "http_headers": {"Authorization": "Bearer s3cret"},
    "size": 1024,
}


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_COLLECTIONS + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------------------------------------------------------
# basic reads and writes
# ---------------------------------------------------------------------------------------------------------------

def test_missing_file_reads_as_empty_document(tmp_path):
    registry = Registry(tmp_path / "nope" / "registry.json")
    assert registry.read() == reg.empty_document()
    assert not (tmp_path / "nope").exists(), "a read must not create anything"


def test_first_write_creates_private_dir_and_file(tmp_path):
    path = tmp_path / "state" / "dd" / "registry.json"
    with Registry(path).transaction() as doc:
        reg.upsert_template(doc, TEMPLATE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(str(path) + ".lock").stat().st_mode) == 0o600
    on_disk = json.loads(path.read_text())
    assert on_disk["schema_version"] == reg.SCHEMA_VERSION
    assert on_disk["templates"]["debian-12"]["http_headers"] == {"Authorization": "Bearer s3cret"}
    # people-readable and diffable: sorted keys, indented, trailing newline
    assert path.read_text() == reg.serialize(on_disk)
    assert list(on_disk) == sorted(on_disk)


def test_mode_is_0600_even_with_a_permissive_umask_and_an_old_0644_file(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(reg.serialize(reg.empty_document()))
    path.chmod(0o644)
    old = os.umask(0)
    try:
        with Registry(path).transaction() as doc:
            reg.upsert_template(doc, TEMPLATE)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unchanged_transaction_does_not_rewrite(tmp_path):
    path = tmp_path / "registry.json"
    with Registry(path).transaction() as doc:
        reg.upsert_template(doc, TEMPLATE)
    inode, mtime = path.stat().st_ino, path.stat().st_mtime_ns
    with Registry(path).transaction() as doc:
        before, after = reg.upsert_template(doc, TEMPLATE)
        assert before == after
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (inode, mtime)


def test_exception_in_transaction_writes_nothing(tmp_path):
    path = tmp_path / "registry.json"
    with Registry(path).transaction() as doc:
        reg.upsert_template(doc, TEMPLATE)
    text = path.read_text()
    with pytest.raises(RuntimeError):
        with Registry(path).transaction() as doc:
            reg.remove_template(doc, "debian-12")
            raise RuntimeError("boom")
    assert path.read_text() == text


def test_failed_rename_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "registry.json"
    with Registry(path).transaction() as doc:
        reg.upsert_template(doc, TEMPLATE)
    text = path.read_text()

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reg.os, "rename", refuse)  # _fs.write_atomic renames the temporary file over the registry
    with pytest.raises(RegistryError, match="cannot write the registry .*No space left"):
        with Registry(path).transaction() as doc:
            reg.remove_template(doc, "debian-12")
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.json", "registry.json.lock"]


@pytest.mark.parametrize("name", ["registry.json.deadbeef.tmp", ".registry.json.tmp.99999.deadbeef"])
def test_stale_temporary_from_a_killed_writer_is_removed_by_the_next_writer(tmp_path, name):
    path = tmp_path / "registry.json"
    leftover = tmp_path / name  # _fs.create_temp's name; the one of earlier releases
    leftover.write_text('{"half": ')
    keep = tmp_path / "registry.json.notmine.tmp"
    keep.write_text("someone else's")
    with Registry(path).transaction() as doc:
        reg.upsert_template(doc, TEMPLATE)
    assert not leftover.exists()
    assert keep.exists()


def test_default_path_is_expanded_for_the_running_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert reg.default_registry_path() == str(tmp_path / ".local/state/directdownload/registry.json")
    assert Registry().path == str(tmp_path / ".local/state/directdownload/registry.json")
    assert Registry("~/x/r.json").path == str(tmp_path / "x/r.json")


# ---------------------------------------------------------------------------------------------------------------
# corrupt files and schema versions
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, reason", [
    ('{"schema_version": 1, "templates": {', "not valid JSON"),
    ("", "is empty"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"schema_version": 1, "templates": []}', "unexpected structure"),
    ('{"schema_version": 1, "copies": {}}', "unexpected structure"),
    ('{"schema_version": "one"}', "invalid schema_version"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
])
def test_corrupt_file_gives_clear_error_and_is_never_overwritten(tmp_path, content, reason):
    path = tmp_path / "registry.json"
    raw = content if isinstance(content, bytes) else content.encode()
    path.write_bytes(raw)
    with pytest.raises(RegistryError, match=reason) as info:
        Registry(path).read()
    assert str(path) in info.value.msg and "left untouched" in info.value.msg or "not UTF-8" in reason
    with pytest.raises(RegistryError, match=reason):
        with Registry(path).transaction() as doc:
            reg.upsert_template(doc, TEMPLATE)
    assert path.read_bytes() == raw


@pytest.mark.parametrize("text", [
    "[" * 100000 + "]" * 100000,
    '{"schema_version": 1, "templates": {"a": {"http_headers": {"x": ' + "[" * 100000 + "]" * 100000 + "}}}}",
    '{"schema_version": 1, "templates": {"a": {"notes": ' + "[" * 500 + "]" * 500 + "}}}",  # parses; deep anyway
])
def test_a_deeply_nested_file_is_refused_as_corrupt_not_a_crash(tmp_path, text):
    path = tmp_path / "registry.json"
    path.write_text(text)
    for attempt in (lambda: Registry(path).read(), lambda: Registry(path).transaction().__enter__()):
        with pytest.raises(RegistryError, match="unexpected structure .*nested deeper than 64 levels.*left untouched"):
            attempt()
    assert path.read_text() == text


@pytest.mark.parametrize("text", [
    '{"schema_version": 1, "templates": {"a": {"http_headers": ["x"]}}}',
    '{"schema_version": 1, "certificates": {"a": []}}',
    '{"schema_version": 1, "certificates": {"a": {"hosts": []}}}',
])
def test_records_of_the_wrong_shape_are_refused(tmp_path, text):
    path = tmp_path / "registry.json"
    path.write_text(text)
    with pytest.raises(RegistryError, match="unexpected structure"):
        Registry(path).read()


def test_a_symlinked_registry_path_is_written_through(tmp_path):
    """Two paths to one registry (a link to a file on a shared mount): one file, one lock, the link kept."""
    real = tmp_path / "real" / "registry.json"
    with Registry(real).transaction() as doc:
        reg.upsert_template(doc, TEMPLATE)
    link_dir = tmp_path / "home"
    link_dir.mkdir()
    link = link_dir / "registry.json"
    link.symlink_to(real)
    via_link = Registry(link)
    assert via_link.path == str(real) and via_link.lock_path == str(real) + ".lock"
    with via_link.transaction() as doc:
        reg.upsert_template(doc, dict(TEMPLATE, name="alma-9"))
    assert link.is_symlink() and os.readlink(str(link)) == str(real)
    assert sorted(Registry(real).read()["templates"]) == ["alma-9", "debian-12"]
    assert sorted(os.listdir(str(link_dir))) == ["registry.json"]  # no second lock, no second file
    # A dangling link: the registry is created at its target.
    dangling = link_dir / "new.json"
    dangling.symlink_to(tmp_path / "real" / "new.json")
    with Registry(dangling).transaction() as doc:
        reg.upsert_template(doc, TEMPLATE)
    assert dangling.is_symlink() and "debian-12" in Registry(tmp_path / "real" / "new.json").read()["templates"]


def test_a_symlinked_lock_file_is_refused(tmp_path):
    path = tmp_path / "registry.json"
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "registry.json.lock").symlink_to(victim)
    with pytest.raises(RegistryError, match="cannot open the registry lock"):
        with Registry(path).transaction():
            pass
    assert victim.read_text() == "keep"


def test_unreadable_file_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        # root reads a 0000 file anyway; a directory in place of the file fails the same code path for everyone
        path = tmp_path / "registry.json"
        path.mkdir()
    else:
        path = tmp_path / "registry.json"
        path.write_text("{}")
        path.chmod(0)
    with pytest.raises(RegistryError, match="cannot read the registry"):
        Registry(path).read()


def test_newer_schema_is_refused_and_file_kept(tmp_path):
    path = tmp_path / "registry.json"
    text = json.dumps({"schema_version": reg.SCHEMA_VERSION + 1, "templates": {}, "future_table": {}})
    path.write_text(text)
    with pytest.raises(RegistryError, match=r"schema_version 2, newer than this collection understands \(1\)"):
        Registry(path).read()
    with pytest.raises(RegistryError, match="upgrade the directdownload.kvm collection"):
        with Registry(path).transaction():
            pass
    assert path.read_text() == text


def test_older_schema_is_migrated(tmp_path):
    # version 0: no schema_version, templates as a list, no copies/certificates tables (a hand-seeded file)
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"templates": [{"name": "alpine", "url": "http://m/alpine.qcow2", "format": "qcow2"}]}))
    doc = Registry(path).read()
    assert doc["schema_version"] == reg.SCHEMA_VERSION
    assert doc["templates"]["alpine"]["url"] == "http://m/alpine.qcow2"
    assert doc["templates"]["alpine"]["id"]
    assert doc["copies"] == [] and doc["certificates"] == {} and doc["claims"] == []
    with Registry(path).transaction() as doc:
        reg.upsert_template(doc, TEMPLATE)
    on_disk = json.loads(path.read_text())
    assert on_disk["schema_version"] == reg.SCHEMA_VERSION
    assert set(on_disk["templates"]) == {"alpine", "debian-12"}


# ---------------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------------

def test_templates_upsert_get_remove():
    doc = reg.empty_document()
    before, after = reg.upsert_template(doc, TEMPLATE)
    assert before is None
    template_id = after["id"]
    assert len(template_id) == 36 and after["created_at"] == after["updated_at"]
    assert reg.get_template(doc, name="debian-12")["id"] == template_id
    assert reg.get_template(doc, template_id=template_id)["name"] == "debian-12"
    assert reg.get_template(doc, name="debian-12", template_id="other") is None
    assert reg.get_template(doc, name="nope") is None

    # same content: no change, even an attempt to pass another id keeps the stored id
    before, after = reg.upsert_template(doc, dict(TEMPLATE))
    assert before == after
    # other content: updated, id kept
    later = reg.utc_now() + timedelta(seconds=5)
    before, after = reg.upsert_template(doc, dict(TEMPLATE, size=2048), now=later)
    assert before["size"] == 1024 and after["size"] == 2048 and after["id"] == template_id
    assert after["updated_at"] != after["created_at"]

    assert reg.remove_template(doc, template_id=template_id)["name"] == "debian-12"
    assert reg.remove_template(doc, name="debian-12") is None
    assert reg.list_templates(doc) == []


def test_public_template_masks_secrets():
    doc = reg.empty_document()
    _before, record = reg.upsert_template(doc, TEMPLATE)
    shown = reg.public_template(record)
    assert shown["http_headers"] == {"Authorization": reg.MASK}
    assert "pw" not in shown["url"] and "abc" not in shown["url"]
    assert "s3cret" not in json.dumps(shown)
    assert record["http_headers"]["Authorization"] == "Bearer s3cret", "the stored record is not modified"
    changed = dict(record, http_headers={"Authorization": "Bearer new", "X-Extra": "1"})
    shown_after = reg.public_template(changed, previous=record)
    assert shown_after["http_headers"] == {"Authorization": reg.MASK + " (changed)", "X-Extra": reg.MASK + " (changed)"}
    assert reg.public_template(record, previous=record)["http_headers"] == {"Authorization": reg.MASK}


def test_copies_local_and_shared():
    doc = reg.empty_document()
    local = {"template_id": "t1", "template_name": "debian-12", "host": "kvm1", "pool": "local", "install_path": "/p/t1",
             "size": 10, "virtual_size": 20}
    before, after = reg.record_copy(doc, local)
    assert before is None and after["state"] == "Ready" and after["download_state"] == "DOWNLOADED"
    assert after["downloaded_at"] and after["shared"] is False
    # same copy again: unchanged, download time kept
    before, again = reg.record_copy(doc, dict(local))
    assert before == again
    # host-local copy is not visible from another host
    assert reg.find_copy(doc, "t1", "kvm2", "local") is None
    assert reg.find_copy(doc, "t1", None, "local")["host"] == "kvm1"

    shared = dict(local, host="kvm2", pool="nfs-1", shared=True)
    reg.record_copy(doc, shared)
    assert reg.find_copy(doc, "t1", "kvm3", "nfs-1")["host"] == "kvm2", "a shared copy serves every host"
    reg.record_copy(doc, dict(local, host="kvm2"))
    assert [(c["host"], c["pool"]) for c in reg.list_copies(doc)] == [("kvm1", "local"), ("kvm2", "local"), ("kvm2", "nfs-1")]
    assert len(reg.list_copies(doc, host="kvm2")) == 2
    assert len(reg.list_copies(doc, pool="local")) == 2
    assert reg.list_copies(doc, template_id="t2") == []

    assert reg.remove_copy(doc, "t1", "kvm1", "local")["host"] == "kvm1"
    assert reg.remove_copy(doc, "t1", "kvm1", "local") is None
    assert len(reg.remove_copies_of(doc, "t1")) == 2 and doc["copies"] == []
    with pytest.raises(InvalidInput, match="needs pool"):
        reg.record_copy(doc, {"template_id": "t1", "host": "h"})


def test_claims_one_download_per_template_and_pool():
    doc = reg.empty_document()
    status, claim = reg.claim_copy(doc, "t1", "kvm1", "nfs-1", shared=True, holder="run-a")
    assert status == "granted" and claim["token"]
    # another host on the same shared pool waits
    assert reg.claim_copy(doc, "t1", "kvm2", "nfs-1", shared=True)[0] == "busy"
    # the same claimant retrying gets its claim back
    assert reg.claim_copy(doc, "t1", "kvm1", "nfs-1", shared=True, token=claim["token"]) == ("granted", claim)
    # host-local pools with the same name on two hosts do not block each other
    assert reg.claim_copy(doc, "t1", "kvm1", "local")[0] == "granted"
    assert reg.claim_copy(doc, "t1", "kvm2", "local")[0] == "granted"
    # an expired claim (dead holder) is taken over
    later = reg.utc_now() + timedelta(seconds=reg.DEFAULT_CLAIM_TTL + 1)
    status, taken = reg.claim_copy(doc, "t1", "kvm2", "nfs-1", shared=True, now=later)
    assert status == "granted" and taken["token"] != claim["token"]
    # once the copy is recorded everyone sees it
    reg.record_copy(doc, {"template_id": "t1", "host": "kvm2", "pool": "nfs-1", "shared": True})
    assert reg.claim_copy(doc, "t1", "kvm3", "nfs-1", shared=True)[0] == "exists"
    assert reg.release_claim(doc, taken["token"])["token"] == taken["token"]
    assert reg.release_claim(doc, taken["token"]) is None


def test_certificates_and_host_status():
    doc = reg.empty_document()
    before, after = reg.upsert_certificate(doc, "mirror-ca", "PEM1", subject="CN=ca", zone="z1")
    assert before is None and after["hosts"] == {} and after["subject"] == "CN=ca"
    assert reg.upsert_certificate(doc, "mirror-ca", "PEM1", subject="CN=ca", zone="z1")[0] == after
    reg.set_certificate_host_status(doc, "mirror-ca", "kvm1", "UPLOADED", details="imported")
    reg.set_certificate_host_status(doc, "mirror-ca", "kvm2", "FAILED", details="keytool exited 1")
    b, a = reg.set_certificate_host_status(doc, "mirror-ca", "kvm1", "UPLOADED", details="imported")
    assert b == a, "same status again: unchanged, timestamp kept"
    assert [c["alias"] for c in reg.list_certificates(doc, host="kvm2")] == ["mirror-ca"]
    assert reg.list_certificates(doc, host="kvm2")[0]["hosts"] == {"kvm2": doc["certificates"]["mirror-ca"]["hosts"]["kvm2"]}
    assert reg.list_certificates(doc, host="kvm9") == []
    # same PEM with other metadata keeps host statuses; a new PEM resets them
    _before, after = reg.upsert_certificate(doc, "mirror-ca", "PEM1", subject="CN=ca", zone="z2")
    assert set(after["hosts"]) == {"kvm1", "kvm2"}
    _before, after = reg.upsert_certificate(doc, "mirror-ca", "PEM2", subject="CN=ca2")
    assert after["hosts"] == {}
    with pytest.raises(InvalidInput, match="must be one of"):
        reg.set_certificate_host_status(doc, "mirror-ca", "kvm1", "DONE")
    with pytest.raises(InvalidInput, match="no certificate"):
        reg.set_certificate_host_status(doc, "other", "kvm1", "UPLOADED")
    assert reg.remove_certificate(doc, "mirror-ca")["pem"] == "PEM2"
    assert reg.list_certificates(doc) == []


# ---------------------------------------------------------------------------------------------------------------
# real concurrency: separate processes
# ---------------------------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import json, os, sys, time
    from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
    path, writer, count, start_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    open("%s.ready-%d" % (start_file, writer), "w").close()
    while not os.path.exists(start_file):
        time.sleep(0.001)
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        with reg.Registry(path).transaction() as doc:
            reg.upsert_template(doc, {"name": "w%02d-%03d" % (writer, i), "url": "http://m/x.qcow2", "size": i})
            reg.set_certificate_host_status(doc, "ca", "host-%02d" % writer, "UPLOADED", details=str(i)) \\
                if "ca" in doc["certificates"] else None
        latencies.append(time.perf_counter() - started)
    print(json.dumps(latencies))
""")


def test_64_concurrent_writer_processes_lose_no_update(tmp_path):
    path = tmp_path / "registry.json"
    with Registry(path).transaction() as doc:
        reg.upsert_certificate(doc, "ca", "PEM")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    start_file = tmp_path / "go"
    writers, per_writer = 64, 5
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(n), str(per_writer), str(start_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env(), text=True)
             for n in range(writers)]
    try:
        # every interpreter started and imported: the writes really overlap and the wall time is the writes only
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("go.ready-*"))) < writers and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.perf_counter()
        start_file.touch()
        outputs = [proc.communicate(timeout=300) for proc in procs]
        wall = time.perf_counter() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    latencies = sorted(lat for out, _err in outputs for lat in json.loads(out))
    doc = Registry(path).read()
    expected = {"w%02d-%03d" % (n, i) for n in range(writers) for i in range(per_writer)}
    assert set(doc["templates"]) == expected, "lost updates: %s" % sorted(expected - set(doc["templates"]))[:10]
    assert set(doc["certificates"]["ca"]["hosts"]) == {"host-%02d" % n for n in range(writers)}
    assert {h["details"] for h in doc["certificates"]["ca"]["hosts"].values()} == {str(per_writer - 1)}
    assert len({t["id"] for t in doc["templates"].values()}) == writers * per_writer
    # figures for the report (no assertion on time: speed belongs to benchmarks/)
    print("\n64 writers x %d transactions: wall %.2fs, per-write latency median %.1f ms, p95 %.1f ms, max %.1f ms"
          % (per_writer, wall, latencies[len(latencies) // 2] * 1e3, latencies[int(len(latencies) * 0.95)] * 1e3,
             latencies[-1] * 1e3))


KILLED_WRITER = textwrap.dedent("""
    import sys
    from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
    path, writer = sys.argv[1], sys.argv[2]
    print("ready", flush=True)  # imported: the kill window starts now, not during a slow interpreter start
    i = 0
    while True:
        with reg.Registry(path).transaction() as doc:
            reg.record_copy(doc, {"template_id": "t-%s" % writer, "host": "h%06d" % i, "pool": "p", "size": i,
                                  "install_path": "/pool/" + "x" * 200})
        print(i, flush=True)  # printed only after the transaction returned: the write is committed
        i += 1
""")


def test_kill_9_during_writes_leaves_valid_file_with_every_committed_record(tmp_path):
    path = tmp_path / "registry.json"
    # a larger document makes each write take long enough for kills to land inside the write window
    with Registry(path).transaction() as doc:
        for n in range(1500):
            reg.upsert_template(doc, {"name": "filler-%04d" % n, "url": "http://m/%d.qcow2" % n, "size": n})
    script = tmp_path / "killed_writer.py"
    script.write_text(KILLED_WRITER)
    committed = {}
    for round_number in range(12):
        writers = []
        for w in range(3):
            name = "%d-%d" % (round_number, w)
            proc = subprocess.Popen([sys.executable, str(script), str(path), name], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, env=_child_env(), text=True)
            writers.append((name, proc))
        try:
            for _name, proc in writers:
                assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.4 + 0.05 * round_number)  # kill at varying points
        finally:
            for _name, proc in writers:
                os.kill(proc.pid, signal.SIGKILL)
            for name, proc in writers:
                out, _err = proc.communicate()
                lines = [int(line) for line in out.split()]
                committed[name] = lines[-1] if lines else -1
        # after every round the file is valid JSON and holds every committed record
        doc = Registry(path).read()
        for name, last in committed.items():
            hosts = {c["host"] for c in doc["copies"] if c["template_id"] == "t-" + name}
            assert {"h%06d" % i for i in range(last + 1)} <= hosts
        assert len(doc["templates"]) == 1500
    assert sum(last + 1 for last in committed.values()) > 0, "the writers never committed anything"
    # leftovers from killed writers are swept by the next writer
    with Registry(path).transaction() as doc:
        reg.upsert_template(doc, {"name": "after", "url": "http://m/a.qcow2"})
    assert [p.name for p in tmp_path.glob(".registry.json.tmp.*")] == []
