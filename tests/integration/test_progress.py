# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Progress in the play output (the ``download`` action plugin), through real ``ansible-playbook`` runs against
rate-limited loopback servers: the lines, the unchanged module result, check mode and the user's own ``async:``,
segmented Metalink downloads, and a controller killed mid-download (its lease stops the job on the host)."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import time

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._metalink import NS_V4
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

from ansible_collections.directdownload.kvm.tests.integration.conftest import (
    VENV_PYTHON,
    kill_tree,
    sidecar,
    start_playbook,
    wait_for_progress,
    wait_until_gone,
)

MiB = 1024 * 1024
LINE = re.compile(r"^\[localhost\] slow\.raw: (\d+\.\d)%, [\d.]+ (?:KiB|MiB) of 24\.0 MiB, [\d.]+ MB/s(?:, ETA [^,]+)?"
                  r"(?:, 2 connections)?, from (http://127\.0\.0\.1:\d+/\S+)$", re.M)


@pytest.fixture
def slow(www):
    images.random_raw(str(www / "slow.raw"), size=24 * MiB)
    with ImageServer(www) as srv:
        srv.set_fault("/slow.raw", rate=4 * MiB)
        yield srv


def download_play(args, **task):
    task = dict({"name": "Download", "directdownload.kvm.download": args}, **task)
    return [{"hosts": "all", "gather_facts": False, "tasks": [task]}]


def args_for(server, pool, **extra):
    args = {"url": server.url("slow.raw"), "pool_path": str(pool), "retry_delay": 0.1, "read_timeout": 5}
    args.update(extra)
    return args


def isolated(tmp_path):
    """Async job files and remote temporary directories in the test's own directories, to see them cleaned up."""
    dirs = {"ANSIBLE_ASYNC_DIR": tmp_path / "async", "ANSIBLE_REMOTE_TMP": tmp_path / "remote-tmp"}
    for path in dirs.values():
        path.mkdir()
    return dirs


def leftovers(dirs):
    return sorted(str(p) for d in dirs.values() for p in d.iterdir())


def test_progress_lines_for_a_slow_download(run_playbook, slow, pool, tmp_path):
    """On by default: no directdownload_progress_interval anywhere, a line every 5 s of a 12 s download."""
    assert "DIRECTDOWNLOAD_PROGRESS_INTERVAL" not in os.environ
    slow.set_fault("/slow.raw", rate=2 * MiB)
    dirs = isolated(tmp_path)
    started = time.monotonic()
    run = run_playbook(download_play(args_for(slow, pool)), env=dirs)
    elapsed = time.monotonic() - started
    lines = LINE.findall(run.stdout)
    assert 2 <= len(lines) <= elapsed / 5 + 1, run.output_tail()
    percents = [float(percent) for percent, _url in lines]
    assert percents == sorted(percents) and 0 < percents[0] < 100
    assert {url for _percent, url in lines} == {slow.url("slow.raw")}
    record = run.task("Download")
    assert record["status"] == "changed" and record["result"]["bytes_downloaded"] == 24 * MiB
    assert leftovers(dirs) == [], "the async job and its temporary files must be cleaned up"
    assert sorted(os.listdir(pool)) == [".slow.raw.ddinfo.json", "slow.raw"]

    # The result is the module's own: the same keys as a run without progress (interval 0: no job at all).
    other = tmp_path / "pool2"
    other.mkdir()
    plain = run_playbook(download_play(args_for(slow, other), vars={"directdownload_progress_interval": 0}),
                         env=dirs)
    assert not LINE.findall(plain.stdout)
    assert sorted(plain.task("Download")["result"]) == sorted(record["result"])
    assert "ansible_job_id" not in record["result"] and "invocation" in record["result"]


def test_check_mode_and_the_users_async_run_the_module_as_before(run_playbook, slow, pool, tmp_path):
    dirs = isolated(tmp_path)
    watched = {"directdownload_progress_interval": 1}
    check = run_playbook(download_play(args_for(slow, pool), vars=watched), check=True, env=dirs)
    result = check.task("Download")["result"]
    assert check.task("Download")["status"] == "changed" and result["msg"] == "would download: not installed"
    assert not LINE.findall(check.stdout) and os.listdir(pool) == []
    assert slow.requests_for("/slow.raw", "GET") == []

    run = run_playbook(download_play(args_for(slow, pool), vars=watched, **{"async": 120, "poll": 1}), env=dirs)
    record = run.task("Download")
    assert record["status"] == "changed", run.output_tail()
    assert record["result"]["ansible_job_id"] and record["result"]["bytes_downloaded"] == 24 * MiB
    assert not LINE.findall(run.stdout), "the user's own async job is polled by Ansible, not by the plugin"
    assert sorted(os.listdir(pool)) == [".slow.raw.ddinfo.json", "slow.raw"]


def test_progress_for_a_pool_path_the_host_expands(run_playbook, slow, pool, tmp_path):
    """$VAR in pool_path is expanded by the module on the host: the plugin asks the module (check mode) where."""
    play = download_play(args_for(slow, "$DD_TEST_POOL"), vars={"directdownload_progress_interval": 1},
                         environment={"DD_TEST_POOL": str(pool)})
    run = run_playbook(play, env=isolated(tmp_path))
    assert len(LINE.findall(run.stdout)) >= 2, run.output_tail()
    assert run.task("Download")["result"]["path"] == str(pool / "slow.raw")


def test_a_delegated_download_whose_home_is_not_the_passwd_entrys(run_playbook, slow, pool, tmp_path):
    """The AWX inventory's case (docs/awx.md): delegated, and the job's ``~`` (HOME) is not ``~<user>`` as the
    controller side expands it. The job writes ``$HOME/.ansible_async/<jid>``; the plugin reads the file the job
    named (before: async_status looked in the passwd entry's home, ``could not find job``)."""
    home = tmp_path / "home"
    home.mkdir()
    inventory = ("kvm1 ansible_connection=local ansible_python_interpreter={0}\n"
                 "kvm2 ansible_connection=local ansible_python_interpreter={0}\n").format(VENV_PYTHON)
    play = [{"hosts": "kvm1", "gather_facts": False, "tasks": [{
        "name": "Download", "directdownload.kvm.download": args_for(slow, pool), "delegate_to": "kvm2"}]}]
    run = run_playbook(play, inventory=inventory, env={"HOME": str(home)})
    record = run.task("Download")
    assert record["status"] == "changed", record["result"]
    assert record["result"]["bytes_downloaded"] == 24 * MiB and "ansible_job_id" not in record["result"]
    assert re.search(r"^\[kvm1 -> kvm2\] slow\.raw: [\d.]+%", run.stdout, re.M), run.output_tail()
    assert (home / ".ansible_async").is_dir() and list((home / ".ansible_async").iterdir()) == [], "job file removed"


def test_a_vanished_job_file_is_asked_of_async_status(tmp_path, www, pool, run_playbook):
    """The job file gone while the download runs: async_status (in the job's directory) says so, the task fails,
    and the download, which nobody can watch any more, is stopped (its lease dated back), keeping its .part."""
    images.random_raw(str(www / "slow.raw"), size=24 * MiB)
    dirs = isolated(tmp_path)
    with ImageServer(www) as srv:
        srv.set_fault("/slow.raw", rate=MiB)
        play = download_play(args_for(srv, pool), vars={"directdownload_progress_lease": 60})
        with start_playbook(tmp_path / "vanished", play, env=dirs, output=True) as proc:
            try:
                wait_for_progress(proc, pool, "slow.raw", MiB)
                jobs = list(dirs["ANSIBLE_ASYNC_DIR"].iterdir())
                assert len(jobs) == 1, jobs
                jobs[0].unlink()
                output, _err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    kill_tree(proc)
        assert proc.returncode == 2 and "could not find job" in output, output
        # its next progress update (2 s), not the lease's 60 s
        wait_until_gone(_sidecar(pool)["pid"], 15, "the unwatched download did not stop")
        assert os.path.exists(pool / ".slow.raw.part") and not os.path.exists(pool / "slow.raw")


def test_segmented_metalink_download_shows_progress(run_playbook, www, pool, tmp_path):
    images.random_raw(str(www / "slow.raw"), size=24 * MiB)
    data = (www / "slow.raw").read_bytes()
    with ImageServer(www) as first, ImageServer(www) as second:
        for server in (first, second):
            server.set_fault("/slow.raw", rate=2 * MiB)
        (www / "slow.raw.meta4").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="%s"><file name="slow.raw"><size>%d</size>'
            '<hash type="sha-256">%s</hash><url priority="1">%s</url><url priority="2">%s</url></file></metalink>\n'
            % (NS_V4, len(data), hashlib.sha256(data).hexdigest(), first.url("slow.raw"), second.url("slow.raw")))
        args = {"url": first.url("slow.raw.meta4"), "pool_path": str(pool), "connections": 2, "read_timeout": 5,
                "progress_interval": 0.5}
        run = run_playbook(download_play(args, vars={"directdownload_progress_interval": 1}), env=isolated(tmp_path))
    lines = [line for line in run.stdout.splitlines() if LINE.match(line)]
    assert len(lines) >= 2 and all(", 2 connections, from " + first.url("slow.raw.meta4") in line for line in lines), \
        run.output_tail()
    assert run.task("Download")["result"]["bytes_downloaded"] == len(data)


def _sidecar(pool):
    return sidecar(pool, "slow.raw")


def _kept_part_resumes(srv, pool, run_playbook):
    """After an interrupted run: no image, the resumable .part with at least 2 MiB of 24, and the next run (at
    full speed) resumes from it."""
    assert os.path.exists(pool / ".slow.raw.part") and not os.path.exists(pool / "slow.raw")
    assert 2 * MiB <= _sidecar(pool)["bytes_done"] < 24 * MiB
    srv.clear_faults()
    again = run_playbook(download_play(args_for(srv, pool)))
    assert again.task("Download")["result"]["resumed_from"] >= 2 * MiB


def test_a_killed_controller_stops_the_download_by_its_lease(tmp_path, www, pool, run_playbook):
    images.random_raw(str(www / "slow.raw"), size=24 * MiB)
    with ImageServer(www) as srv:
        srv.set_fault("/slow.raw", rate=MiB)
        play = download_play(args_for(srv, pool), vars={"directdownload_progress_interval": 1,
                                                        "directdownload_progress_lease": 5})
        proc = start_playbook(tmp_path / "killed", play)
        try:
            wait_for_progress(proc, pool, "slow.raw", 2 * MiB)
        finally:
            kill_tree(proc)
        # The job is daemonized: it outlives the controller, until its lease (5 s) runs out; without the lease it
        # would go on for 20 s more and install the image.
        wait_until_gone(_sidecar(pool)["pid"], 15, "the abandoned download did not stop")
        _kept_part_resumes(srv, pool, run_playbook)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_of_ansible_playbook_stops_the_job_at_once(tmp_path, www, pool, run_playbook, signum):
    """Ctrl-C (SIGINT to the CLI's process group, as a terminal sends it) or SIGTERM: Ansible's worker gets it, and
    so does the job's module, daemonised outside that group: it stops within seconds (not after its lease of 60 s),
    keeping its .part for the next run."""
    images.random_raw(str(www / "slow.raw"), size=24 * MiB)
    with ImageServer(www) as srv:
        srv.set_fault("/slow.raw", rate=MiB)
        proc = start_playbook(tmp_path / "interrupted", download_play(args_for(srv, pool)))
        try:
            wait_for_progress(proc, pool, "slow.raw", 2 * MiB)
            time.sleep(1)  # the plugin has seen this run's sidecar (the module's pid)
            os.killpg(proc.pid, signum)
            assert proc.wait(30) != 0
        finally:
            if proc.poll() is None:
                kill_tree(proc)
        wait_until_gone(_sidecar(pool)["pid"], 10, "the download went on after the controller was interrupted")
        _kept_part_resumes(srv, pool, run_playbook)


def test_the_agent_roles_operator_group_reads_the_sidecar(run_playbook, slow, pool, tmp_path):
    """agent_progress_group: the role creates the group and writes progress_group; sidecars get it, mode 0640."""
    group = "ddtest-%d" % os.getpid()
    etc = tmp_path / "etc"
    try:
        run_playbook([{"hosts": "all", "gather_facts": False, "tasks": [{
            "name": "Apply the agent role", "ansible.builtin.include_role": {"name": "directdownload.kvm.agent"},
            "vars": {"agent_install_packages": False, "agent_config_dir": str(etc),
                     "agent_progress_group": group}}]}])
        assert json.loads((etc / "agent.json").read_text())["progress_group"] == group
        gid = grp.getgrnam(group).gr_gid
        play = download_play(args_for(slow, pool), vars={"directdownload_progress_interval": 0})
        settings = {"DIRECTDOWNLOAD_SETTINGS": str(etc / "agent.json")}
        with start_playbook(tmp_path / "watched", play, env=settings) as proc:
            seen = None
            deadline = time.monotonic() + 60
            while seen is None and proc.poll() is None and time.monotonic() < deadline:
                try:
                    seen = os.stat(pool / ".slow.raw.part.json")
                except FileNotFoundError:
                    time.sleep(0.05)
            assert proc.wait(120) == 0
        assert seen is not None, "the sidecar was never seen"
        assert stat.S_IMODE(seen.st_mode) == 0o640 and seen.st_gid == gid
    finally:
        subprocess.run(["groupdel", group], check=False, capture_output=True)
