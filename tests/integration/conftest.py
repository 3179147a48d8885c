# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for integration tests that run the real ``ansible-playbook``.

Usage in a test::

    def test_ping(run_playbook):
        run = run_playbook('''
        - hosts: all
          gather_facts: false
          tasks:
            - name: Ping
              ansible.builtin.ping:
        ''')
        assert run.task("Ping")["status"] == "ok"

``run_playbook(playbook, inventory=None, extra_vars=None, check=False, diff=False, env=None, expect_rc=0,
extra_args=(), timeout=900)`` returns a :class:`PlaybookRun`. ``playbook`` is YAML text, a path to a
playbook file, or a list of plays (Python objects). The default inventory is ``localhost`` with the local
connection and this venv's Python as interpreter (never rely on interpreter discovery on this machine).
``run_module(module, args, ...)`` wraps one module call into a one-task play and returns its result record.

Every task result is captured as JSON by ``callback_plugins/directdownload_test_results.py``; each record is
``{"host", "task" (full name: "<role fqcn> : <name>" inside a role), "name" (bare name), "role", "action",
"status" (ok|changed|failed|skipped|unreachable), "ignored", "result"}``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.directdownload.kvm.tests.integration.hosts.kvmhosts import KvmHosts, can_run
from ansible_collections.directdownload.kvm.tests.unit.lib.procs import pid_alive
from ansible_collections.directdownload.kvm.tests.unit.lib.require import missing
# The fixtures both levels share (an empty pool, a www directory) are the unit level's, not copies.
from ansible_collections.directdownload.kvm.tests.unit.conftest import pool, www  # noqa: F401 pylint: disable=unused-import

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS_PATH = REPO_ROOT / ".build" / "collections"
CALLBACK_DIR = Path(__file__).resolve().parent / "callback_plugins"
CALLBACK_NAME = "directdownload_test_results"
RESULTS_FILE_ENV = "DIRECTDOWNLOAD_TEST_RESULTS"

# The venv that runs pytest also serves as the managed-host interpreter: it has lxml and cryptography.
VENV_PYTHON = sys.executable


def _venv_tool(name):
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH; run `make setup` first")
    return found


def default_inventory(python=VENV_PYTHON):
    """The inventory used when a test passes none: localhost over the local connection."""
    return f"localhost ansible_connection=local ansible_python_interpreter={python}\n"


class PlaybookRun:
    """What one ansible-playbook run produced."""

    def __init__(self, argv, rc, stdout, stderr, results):
        self.argv = argv
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.results = results

    def tasks(self, name, host=None):
        """Every result record of the task called ``name`` (optionally only for ``host``), in run order.

        ``name`` matches the task's bare name or its full name: a role's task "Record the copy" is found by
        ``"Record the copy"`` and by ``"directdownload.kvm.deploy : Record the copy"``.
        """
        return [r for r in self.results
                if name in (r["task"], r.get("name")) and (host is None or r["host"] == host)]

    def task(self, name, host=None):
        """The result record of the task called ``name``; fails the test when it did not run exactly once."""
        found = self.tasks(name, host)
        if len(found) != 1:
            seen = sorted({r["task"] for r in self.results})
            pytest.fail(f"expected one result for task {name!r} (host={host}), got {len(found)}; tasks seen: {seen}\n{self.output_tail()}")
        return found[0]

    def changed_tasks(self):
        return [r for r in self.results if r["status"] == "changed"]

    def failed_tasks(self):
        return [r for r in self.results if r["status"] == "failed" and not r["ignored"]]

    def output_tail(self, lines=60):
        out = "\n".join(self.stdout.splitlines()[-lines:])
        err = "\n".join(self.stderr.splitlines()[-lines:])
        return f"--- ansible-playbook stdout (tail) ---\n{out}\n--- stderr (tail) ---\n{err}"

    def __repr__(self):
        return f"PlaybookRun(rc={self.rc}, results={len(self.results)}, changed={len(self.changed_tasks())})"


def _write_playbook(playbook, workdir):
    if isinstance(playbook, (list, dict)):
        path = workdir / "playbook.yml"
        path.write_text(yaml.safe_dump(playbook if isinstance(playbook, list) else [playbook], sort_keys=False))
        return path
    if isinstance(playbook, Path) or ("\n" not in playbook and Path(playbook).is_file()):
        return Path(playbook)
    path = workdir / "playbook.yml"
    path.write_text(playbook)
    return path


def _write_inventory(inventory, workdir):
    if inventory is None:
        inventory = default_inventory()
    if isinstance(inventory, Path) or ("\n" not in inventory and Path(inventory).exists()):
        return Path(inventory)
    path = workdir / "inventory.ini"
    path.write_text(inventory)
    return path


def playbook_env(workdir, results_file=None, env=None):
    """Environment for ansible-playbook / ansible runs: our collections, our callback, no colour, no retries."""
    run_env = dict(os.environ)
    run_env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS_PATH),
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
        "ANSIBLE_CALLBACKS_ENABLED": CALLBACK_NAME,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-local-tmp"),
        "ANSIBLE_PYTHON_INTERPRETER": VENV_PYTHON,
        # A stray ansible.cfg in the current directory must not change what the tests exercise.
        "ANSIBLE_CONFIG": str(workdir / "ansible.cfg"),
    })
    if results_file is not None:
        run_env[RESULTS_FILE_ENV] = str(results_file)
    if env:
        run_env.update({key: str(value) for key, value in env.items()})
    return run_env


def run_playbook_in(workdir, playbook, inventory=None, extra_vars=None, check=False, diff=False, env=None,
                    expect_rc=0, extra_args=(), timeout=900):
    """Run ansible-playbook with files kept under ``workdir``; see the module docstring."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ansible.cfg").touch()
    run_number = len(list(workdir.glob("results-*.jsonl")))
    results_file = workdir / f"results-{run_number}.jsonl"
    results_file.touch()
    argv = [_venv_tool("ansible-playbook"), "-i", str(_write_inventory(inventory, workdir))]
    if extra_vars:
        vars_file = workdir / f"extra-vars-{run_number}.json"
        vars_file.write_text(json.dumps(extra_vars))
        argv += ["-e", f"@{vars_file}"]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    argv += list(extra_args)
    argv.append(str(_write_playbook(playbook, workdir)))
    with subprocess.Popen(argv, cwd=workdir, env=playbook_env(workdir, results_file, env), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)  # its workers too: a timed-out run must not leave processes behind
            raise
    proc = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    results = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
    run = PlaybookRun(argv, proc.returncode, proc.stdout, proc.stderr, results)
    if expect_rc is not None and run.rc != expect_rc:
        pytest.fail(f"ansible-playbook exited {run.rc}, expected {expect_rc}\n{run.output_tail()}")
    return run


def descendants(pid):
    """Every process below ``pid``: Ansible's workers call setsid(), so a process-group kill would miss them."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, encoding="ascii", errors="replace") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc):
    """SIGKILL ``proc`` (a Popen) and everything it started, the module processes included, at once."""
    for pid in [proc.pid] + descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


# --------------------------------------------------------------------------------------------------------------
# A download the test interrupts: ansible-playbook in the background, the module seen through its sidecar


def start_playbook(workdir, playbook, env=None, results_file=None, output=False):
    """ansible-playbook in the background (a Popen), in a session of its own, so that the test can SIGKILL the whole
    tree (:func:`kill_tree`) or signal its process group as a terminal's Ctrl-C does. ``output``: stdout and
    stderr in one text pipe (read them with ``communicate``), else neither is kept."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ansible.cfg").touch()
    argv = [_venv_tool("ansible-playbook"), "-i", str(_write_inventory(None, workdir)),
            str(_write_playbook(playbook, workdir))]
    pipe = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen(argv, cwd=workdir, env=playbook_env(workdir, results_file, env),  # pylint: disable=consider-using-with
                            stdin=subprocess.DEVNULL, stdout=pipe, stderr=subprocess.STDOUT if output else pipe,
                            text=True, start_new_session=True)


def sidecar(pool_dir, name):
    """The progress sidecar (``.<name>.part.json``) of the download of ``name`` into ``pool_dir``; {} until there is
    one (or while it is being replaced)."""
    try:
        return json.loads((Path(pool_dir) / (".%s.part.json" % name)).read_text())
    except (OSError, ValueError):
        return {}


def wait_for_progress(proc, pool_dir, name, at_least, timeout=60):
    """Wait until the download of ``name`` has kept ``at_least`` bytes (its sidecar says so) while ``proc`` (the
    background ansible-playbook) still runs; the sidecar then."""
    deadline = time.monotonic() + timeout
    state = sidecar(pool_dir, name)
    while state.get("bytes_done", 0) < at_least:
        assert time.monotonic() < deadline, "the download never got going: %r" % state
        assert proc.poll() is None, "ansible-playbook ended before the test could interrupt it"
        time.sleep(0.05)
        state = sidecar(pool_dir, name)
    return state


def kill_module(pool_dir, name):
    """SIGKILL the download module by the pid its sidecar names: it runs as an async job of the download action
    plugin, which its wrapper daemonised, so it is not below ansible-playbook."""
    pid = sidecar(pool_dir, name).get("pid")
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until_gone(pid, timeout, what):
    """Fail with ``what`` unless ``pid`` ends within ``timeout`` seconds; SIGKILL it at the end in any case."""
    try:
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            assert time.monotonic() < deadline, what
            time.sleep(0.1)
    finally:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def namespaced_hosts(tmp_path_factory, name, count, **options):
    """Start ``count`` namespaced KVM hosts (tests/integration/hosts) under a fresh directory called ``name``, yield
    them and stop them: the body of a module-scoped ``kvm_hosts`` fixture (``yield from``). Not root: skipped here,
    failed under ``CI=true``; any other missing part fails."""
    reason = can_run()
    if reason == "needs root (network namespaces, mounts)":
        missing(reason)
    if reason:
        pytest.fail(f"the namespaced KVM hosts cannot start: {reason} (see bindep.txt)")
    hosts = KvmHosts(tmp_path_factory.mktemp(name), count=count, **options)
    hosts.start()
    yield hosts
    hosts.stop()


@pytest.fixture
def venv_python():
    """Path of the Python interpreter to use as ansible_python_interpreter."""
    return VENV_PYTHON


@pytest.fixture
def run_playbook(tmp_path):
    """Callable running ansible-playbook; every call in one test gets its own results file."""
    workdir = tmp_path / "ansible"

    def _run(playbook, inventory=None, extra_vars=None, check=False, diff=False, env=None, expect_rc=0,
             extra_args=(), timeout=900):
        return run_playbook_in(workdir, playbook, inventory=inventory, extra_vars=extra_vars, check=check, diff=diff,
                               env=env, expect_rc=expect_rc, extra_args=extra_args, timeout=timeout)

    return _run


@pytest.fixture
def run_module(run_playbook):
    """Run one module on localhost (or ``hosts``) in a one-task play; returns (record, PlaybookRun).

    ``expect_rc`` defaults to None here because a failing module is often what the test wants to see.
    """

    def _run(module, args=None, hosts="all", check=False, diff=False, inventory=None, env=None, expect_rc=None,
             task_vars=None):
        task = {"name": "Module under test", module: args or {}}
        if task_vars:
            task["vars"] = task_vars
        play = [{"hosts": hosts, "gather_facts": False, "tasks": [task]}]
        run = run_playbook(play, inventory=inventory, check=check, diff=diff, env=env, expect_rc=expect_rc)
        return run.task("Module under test"), run

    return _run
