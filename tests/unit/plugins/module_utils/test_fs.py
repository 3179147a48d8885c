# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The file-system helpers (_fs): temporary files that never follow a planted symlink, our own files that are
never a FIFO, one unlink and one fsync policy. Real files, real FIFOs, real symlinks."""

from __future__ import annotations

import errno
import os
import stat
import threading

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _fs
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import PartFile
from ansible_collections.directdownload.kvm.tests.unit.lib.require import other_group


def test_json_sidecars_are_replaced_whole(tmp_path):
    path = str(tmp_path / ".x.json")
    _fs.write_json_atomic(path, {"a": 1})
    _fs.write_json_atomic(path, {"a": 2}, durable=True)
    assert _fs.read_json(path) == {"a": 2}
    assert sorted(os.listdir(tmp_path)) == [".x.json"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    (tmp_path / "bad.json").write_text("{")
    assert _fs.read_json(str(tmp_path / "bad.json")) is None
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    assert _fs.read_json(str(tmp_path / "deep.json")) is None


def test_mode_and_group_are_set_before_the_name_shows_the_content(tmp_path, monkeypatch):
    # The progress sidecar is read by an operator group while it is replaced: a chown after the rename left a
    # window in which the new file had root's group (seen in CI as a flaky test_progress).
    group = other_group().gr_gid
    path = str(tmp_path / ".x.json")
    at_rename = []
    rename = os.rename

    def watching_rename(src, dst):
        at_rename.append(os.stat(src))
        rename(src, dst)
    monkeypatch.setattr(os, "rename", watching_rename)
    old_umask = os.umask(0o077)
    try:
        _fs.write_json_atomic(path, {"a": 1}, mode=0o640, gid=group)
    finally:
        os.umask(old_umask)
    (before,) = at_rename
    assert (stat.S_IMODE(before.st_mode), before.st_gid) == (0o640, group)
    after = os.stat(path)
    assert (stat.S_IMODE(after.st_mode), after.st_gid) == (0o640, group)


def test_temporary_names_are_random_and_exclusive(tmp_path):
    fd1, path1 = _fs.create_temp(str(tmp_path), ".x.json")
    fd2, path2 = _fs.create_temp(str(tmp_path), ".x.json")
    os.close(fd1)
    os.close(fd2)
    assert path1 != path2
    for path in (path1, path2):
        name = os.path.basename(path)
        assert name.startswith(".x.json.") and name.endswith(".tmp")
        assert len(name) == len(".x.json") + _fs.TEMP_NAME_EXTRA
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_symlink_at_the_old_predictable_temp_name_is_not_followed(tmp_path):
    """The progress sidecar's temporary file used to be ``.<name>.part.json.<pid>.tmp``, opened O_CREAT|O_TRUNC:
    a symlink planted there made the (root-run) module overwrite its target. Whatever is planted at that name
    (or at the sidecar's own name), the victim keeps its bytes."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    pool = tmp_path / "pool"
    pool.mkdir()
    part = PartFile(str(pool), "disk.qcow2")
    old_temp = pool / (".disk.qcow2.part.json.%d.tmp" % os.getpid())
    old_temp.symlink_to(victim)
    part.save_state({"identity": {"url_id": "a"}, "bytes_done": 1})
    part.save_state({"bytes_done": 1, "segments": {"done": []}})  # a transfer in ranges: the same sidecar
    assert victim.read_bytes() == b"precious"
    assert os.path.islink(old_temp)

    # A symlink at the sidecar itself is replaced by the rename, never written through.
    os.unlink(part.sidecar_path)
    os.symlink(str(victim), part.sidecar_path)
    part.save_state({"identity": {"url_id": "a"}, "bytes_done": 2})
    assert victim.read_bytes() == b"precious"
    assert not os.path.islink(part.sidecar_path) and _fs.read_json(part.sidecar_path)["bytes_done"] == 2


def test_the_part_itself_is_never_opened_through_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    part = PartFile(str(tmp_path), "disk.qcow2")
    os.symlink(str(victim), part.path)
    with pytest.raises(_fs.NotRegularFile, match="symlink"):
        part.open_for_write(0)
    assert victim.read_bytes() == b"precious"


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path):
    fifo = str(tmp_path / ".disk.qcow2.lock")
    os.mkfifo(fifo)
    outcome = []

    def attempt():
        for flags in (os.O_RDONLY, os.O_RDWR | os.O_CREAT, os.O_WRONLY):
            try:
                os.close(_fs.open_regular(fifo, flags))
                outcome.append("opened")
            except _fs.NotRegularFile as exc:
                outcome.append(exc.kind)
        outcome.append(_fs.read_json(fifo))

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "opening a FIFO blocked"
    assert outcome == ["FIFO", "FIFO", "FIFO", None]
    assert _fs.kind_at(fifo) == "FIFO" and _fs.kind_at(str(tmp_path / "none")) is None


def test_unlink_and_fsync_policies(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    assert _fs.unlink_if_present(str(path)) is True
    assert _fs.unlink_if_present(str(path)) is False
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError) as failure:  # only ENOENT is swallowed
        _fs.unlink_if_present(str(tmp_path / "d"))
    assert failure.value.errno in (errno.EISDIR, errno.EPERM)
    _fs.fsync_directory(str(tmp_path))
    path.write_bytes(b"y")
    _fs.fsync_path(str(path))


def test_a_hard_link_is_never_opened_for_writing_nor_truncated(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    planted = str(tmp_path / ".disk.qcow2.part")
    os.link(str(victim), planted)
    assert _fs.kind_at(planted) == "hard link"
    for flags in (os.O_RDWR, os.O_RDWR | os.O_CREAT | os.O_TRUNC, os.O_WRONLY | os.O_TRUNC):
        with pytest.raises(_fs.NotRegularFile, match="hard link"):
            _fs.open_regular(planted, flags)
    assert victim.read_bytes() == b"precious"
    os.close(_fs.open_regular(planted))  # reading is harmless
    os.unlink(planted)
    fd = _fs.open_regular(str(victim), os.O_RDWR | os.O_TRUNC)  # one name: truncated as asked
    os.close(fd)
    assert victim.read_bytes() == b""
