# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action plugin of ``directdownload.kvm.download``: progress lines in the play output while the image downloads.

The module runs on the host as an async job (as ``async:`` would run it); meanwhile this plugin reads the download's
progress sidecar ``<pool>/.<name>.part.json`` and the job file on the host (one shell command, first after 0.1 s,
the wait doubling up to once a second) and prints a line every ``directdownload_progress_interval`` seconds (default 5),
then returns the module's own result, read from the job file the async wrapper named (``results_file``).
Every read also renews the job's lease (``_progress.Lease``): a download whose controller went away stops by itself
within a minute, keeping its ``.part``, as a synchronous one does when its SSH session ends. A SIGINT or SIGTERM the
worker gets while watching (Ctrl-C) is sent on to the module, which a plain run's process group would have reached.

The module runs as before, without a job, in check mode, when the task has its own ``async:``, when the interval is
0, on connections that cannot run async jobs (Windows shells, always-pipelining or natively async connections), and
when the job cannot be started.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import time

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash
from ansible.vars.clean import remove_internal_keys

from ansible_collections.directdownload.kvm.plugins.module_utils._download import default_name
from ansible_collections.directdownload.kvm.plugins.module_utils._progress import (
    LEASE_ENV,
    LEASE_SECONDS_ENV,
    progress_line,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import PartFile
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import safe_file_name

# Seconds between progress lines (0: no job, no lines): variable, else controller environment, else default.
INTERVAL_VAR, INTERVAL_ENV, DEFAULT_INTERVAL = "directdownload_progress_interval", "DIRECTDOWNLOAD_PROGRESS_INTERVAL", 5
# The job's lease: without a renewal for this long the download stops (the controller is gone).
LEASE_VAR, LEASE_ENV_CONTROLLER, DEFAULT_LEASE = "directdownload_progress_lease", "DIRECTDOWNLOAD_PROGRESS_LEASE", 60
# The async wrapper's own limit; the lease is what stops an abandoned download.
JOB_TIME_LIMIT = 7 * 24 * 3600
_SEPARATOR = "--directdownload-job--"
# Seconds between two looks at the host: the first (and the step by which the wait grows), the longest.
FIRST_POLL, LONGEST_POLL = 0.1, 1.0
# Keys the async machinery adds to a module result; the task returns the module's result as it is.
_ASYNC_KEYS = ("ansible_job_id", "started", "finished", "results_file")


class ActionModule(ActionBase):

    _supports_check_mode = True
    _supports_async = True
    _lease_seconds = DEFAULT_LEASE
    _forwarded = None

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        interval = self._seconds(task_vars, INTERVAL_VAR, INTERVAL_ENV, DEFAULT_INTERVAL)
        self._lease_seconds = max(5, int(self._seconds(task_vars, LEASE_VAR, LEASE_ENV_CONTROLLER, DEFAULT_LEASE)))
        sidecar = None
        if interval > 0 and self._can_run_a_job():
            sidecar = self._sidecar_path(task_vars)
        if sidecar is None:
            return self._run_module(result, task_vars)
        job = self._start_job(task_vars)
        if job is None:
            return self._run_module(result, task_vars)
        forwarded = self._forwarded = _Forwarded()
        try:
            with forwarded:
                return merge_hash(result, self._watch(job, sidecar, interval, task_vars))
        except BaseException:
            # Interrupted while watching (Ctrl-C, SIGTERM, an error): stop the download now, not a lease later. In
            # a plain run the worker's SIGINT/SIGTERM reach the module through its process group; the job's module
            # is outside it, so it gets the signal from here (it keeps its .part and ends as "interrupted").
            self._stop_job(job, forwarded.signum)
            forwarded.resume()  # then what Ansible's worker does with that signal
            raise

    # -- the plain run (today's behaviour, the user's own async included)

    def _run_module(self, result, task_vars):
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        result = merge_hash(result, self._execute_module(task_vars=task_vars, wrap_async=wrap_async))
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    # -- deciding

    def _seconds(self, task_vars, variable, environment, default):
        value = task_vars.get(variable)
        if value is None:
            value = os.environ.get(environment, default)
        try:
            return max(0.0, float(self._templar.template(value)))
        except (AnsibleError, TypeError, ValueError):
            raise AnsibleError("%s must be a number of seconds, got %r" % (variable, value)) from None

    def _can_run_a_job(self):
        if self._task.async_val or self._task.check_mode:
            return False
        connection = self._connection
        if connection.has_native_async or connection.always_pipeline_modules:
            return False
        return not getattr(connection._shell, "_IS_WINDOWS", False)

    def _sidecar_path(self, task_vars):
        """Where the module will write progress: computed from the options like the module does, or, for a
        libvirt pool or a pool_path the host must expand, asked of the module itself in check mode with force
        (which decides from the options alone: no network, no hashing). None when it cannot be known."""
        args = self._task.args
        pool_path, name, url = args.get("pool_path"), args.get("name"), args.get("url")
        try:
            name = safe_file_name(name) if name else default_name(url)
        except Exception:  # pylint: disable=broad-except
            return None  # the module reports the bad name
        if isinstance(pool_path, str) and not args.get("pool") and pool_path.startswith("/") \
                and "$" not in pool_path and "~" not in pool_path:
            return PartFile(pool_path, name).sidecar_path
        saved = self._task.check_mode
        self._task.check_mode = True
        try:
            probe = self._execute_module(module_args=dict(args, force=True), task_vars=task_vars)
        except AnsibleError:
            return None
        finally:
            self._task.check_mode = saved
        path = probe.get("path")
        if probe.get("failed") or not isinstance(path, str) or not path.startswith("/"):
            return None  # the real run reports the error
        return PartFile(os.path.dirname(path), os.path.basename(path)).sidecar_path

    # -- the job

    def _sudoable(self):
        """Our commands on the host run as the job does: with become when the task has it. Without become, not
        ``sudoable`` either: the local connection then opens a pty for each command, and after a Ctrl-C the worker
        (a session leader) was seen to die silently while its stop command ran in such a pty."""
        return getattr(self._connection, "become", None) is not None

    def _shell_quote(self, text):
        return self._connection._shell.quote(text)

    def _start_job(self, task_vars):
        """Start the module as an async job holding a lease in its temporary directory. None: not started."""
        if self._connection._shell.tmpdir is None:
            self._make_tmp_path()
        # The lease file is made by the first look (touch), or by the module's first check: no command of its own.
        lease = self._connection._shell.join_path(self._connection._shell.tmpdir, "directdownload-lease")
        environment = self._task.environment
        if environment is None:
            environment = self._task.environment = []
        added = {LEASE_ENV: lease, LEASE_SECONDS_ENV: str(self._lease_seconds)}
        environment.append(added)
        self._task.async_val = JOB_TIME_LIMIT
        cleanup = self._cleanup_remote_tmp
        try:
            started = self._execute_module(task_vars=task_vars, wrap_async=True)
            # The job removes its own temporary directory; the ones of later calls (async_status) are ours.
            self._cleanup_remote_tmp = cleanup
        except AnsibleError as exc:
            self._display.vvv("directdownload.kvm.download: cannot start an async job (%s): running it directly"
                              % to_text(exc))
            return None
        finally:
            self._task.async_val = 0
            environment.remove(added)
        if started.get("failed") or not started.get("ansible_job_id"):
            self._display.vvv("directdownload.kvm.download: the async job did not start (%s): running it directly"
                              % started.get("msg", ""))
            return None
        started["lease"] = lease
        return started

    def _read(self, job, sidecar):
        """One cheap look at the host (no Python): renew the lease, read the sidecar and the job file (its text)."""
        commands = []
        if job.get("lease"):
            commands.append("touch %s 2>/dev/null" % self._shell_quote(job["lease"]))
        commands.append("cat %s 2>/dev/null" % self._shell_quote(sidecar))
        commands.append("echo; echo %s" % _SEPARATOR)
        commands.append("cat %s 2>/dev/null" % self._shell_quote(job.get("results_file") or "/nonexistent"))
        out = self._low_level_execute_command("; ".join(commands) + "; true", sudoable=self._sudoable()).get(
            "stdout", "")
        state_text, _sep, job_text = to_text(out).partition(_SEPARATOR)
        return _json_object(state_text), job_text

    def _watch(self, job, sidecar, interval, task_vars):
        host = task_vars.get("inventory_hostname", "?")
        if self._task.delegate_to and self._task.delegate_to != host:
            host = "%s -> %s" % (host, self._task.delegate_to)
        name = os.path.basename(sidecar)[1:-len(".part.json")]
        baseline = shown = None
        started = last_shown = last_seen = time.monotonic()
        missing = 0
        # Adaptive polling: a short download is seen ending within a fraction of a second (a look every 0.1 s more
        # up to 0.5 s), a long one costs one shell command a second after the first 10 s (never slower than the
        # interval, nor than the lease needs).
        longest = min(LONGEST_POLL, max(interval, FIRST_POLL), self._lease_seconds / 5.0)
        delay = FIRST_POLL
        while True:
            time.sleep(delay)
            self._forwarded.check()
            delay = min(delay + FIRST_POLL, 0.5, longest) if time.monotonic() - started < 10 else longest
            try:
                state, job_text = self._read(job, sidecar)
            except AnsibleError as exc:
                self._display.vvvv("directdownload.kvm.download: reading the progress failed: %s" % to_text(exc))
                if time.monotonic() - last_seen > self._lease_seconds + 30:
                    return dict(failed=True, retry_here=True, retry_elsewhere=True, ansible_job_id=job["ansible_job_id"], msg=(
                        "lost the host while watching the download (%s); the download stopped there within %d s, "
                        "keeping its .part: run again to resume" % (to_text(exc), self._lease_seconds)))
                continue
            self._forwarded.check()
            now = time.monotonic()
            last_seen = now
            seen = _version(state)
            if baseline is None:
                baseline = shown = seen  # what a run before this one left: not this download's progress
            elif seen != baseline and isinstance((state or {}).get("pid"), int):
                job["pid"] = state["pid"]  # this run's module
            # A line for each new figure (the module rewrites the sidecar every progress_interval seconds), not for
            # the first save, which has moved no byte yet.
            if state and seen not in (baseline, shown) and state.get("rate") and now - last_shown >= interval:
                last_shown, shown = now, seen
                if self._task.no_log:  # no_log: the figures, not where they come from
                    state = dict(state, source=None)
                self._display.display(progress_line(host, name, state))
            status = self._job_status(job, job_text)
            if status is None:
                # The job file the wrapper named is gone, unreadable or not JSON (the wrapper writes it before it
                # reports the start, and replaces it atomically): ask async_status, in the directory the wrapper used.
                missing += 1
                if missing < 3:
                    continue
                status = self._async_status(job, task_vars)
                if status.get("failed"):  # no job file, no result: stop the download, which nobody can watch
                    self._expire_lease(job)
                    return _module_result(status, job)
            missing = 0
            if status.get("finished") or (status.get("failed") and "finished" not in status):
                self._remove_job_file(job)
                return _module_result(status, job)

    def _job_status(self, job, text):
        """The job file as async_status reads it (None: no file, or no JSON object). The async wrapper writes it
        (atomically) as plain JSON: ``{"started": true, "finished": false, ...}`` while the module runs, then the
        module's own result; decoded here as async_status's result is (``_parse_returned_data``), without starting
        Python on the host."""
        text = (text or "").strip()
        if _json_object(text) is None:
            return None
        data = self._parse_job_text(text)
        if "started" not in data:
            data["finished"] = True
            data["ansible_job_id"] = job["ansible_job_id"]
        elif "finished" not in data:
            data["finished"] = False
        remove_internal_keys(data)
        return data

    def _parse_job_text(self, text):
        res = {"stdout": text, "stderr": "", "rc": 0}
        if len(inspect.signature(self._parse_returned_data).parameters) > 1:
            return self._parse_returned_data(res, "legacy")  # ansible-core >= 2.19: async_status's profile
        return self._parse_returned_data(res)  # pylint: disable=no-value-for-parameter

    def _expire_lease(self, job):
        self._stop_job(job, None)

    def _stop_job(self, job, signum):
        """Date the lease back to 1970 (POSIX ``touch -t``): the download stops at its next progress update,
        keeping its ``.part``; the async wrapper then removes its temporary directory. With ``signum``, also send
        it to the module process (its pid as this run's sidecar gave it). Best effort."""
        command = "touch -t 197001010000 %s" % self._shell_quote(job["lease"])
        if signum is not None and job.get("pid"):
            command += "; kill -%s %d" % (signal.Signals(signum).name[3:], job["pid"])
        try:
            self._low_level_execute_command(command + " 2>/dev/null; true", sudoable=self._sudoable())
        except BaseException:  # pylint: disable=broad-except
            pass  # the lease runs out by itself

    def _remove_job_file(self, job):
        """What ``async_status mode=cleanup`` does (remove the job's results file), without starting Python; and the
        job's temporary directory. One command, or two with become (the job file is the become user's, the
        temporary directory the login user's)."""
        commands = []
        if job.get("results_file"):
            commands.append(("rm -f -- %s" % self._shell_quote(job["results_file"]), self._sudoable()))
        # The async wrapper removes its temporary directory only after writing the result: do not leave it behind
        # when the task ends first (both removals ignore the other).
        job_tmp = os.path.dirname(job["lease"]) if job.get("lease") else None
        if self._should_remove_tmp_path(job_tmp):
            commands.append((self._connection._shell.remove(job_tmp, recurse=True), False))
        if commands and getattr(self._connection, "become", None) is None:
            commands = [("; ".join(command for command, _sudoable in commands), False)]
        for command, sudoable in commands:
            self._low_level_execute_command(command, sudoable=sudoable)

    def _async_status(self, job, task_vars):
        """The async_status module, asked about the job file the wrapper reported (``results_file``): not about
        ``~/.ansible_async`` expanded again on this side, which is another directory whenever the job's ``~`` is not
        the one ``_remote_expand_user`` finds (delegation, become, a HOME that is not the passwd entry's)."""
        jid = job["ansible_job_id"]
        results_file = job.get("results_file")
        async_dir = os.path.dirname(results_file) if results_file else self._remote_expand_user(
            self.get_shell_option("async_dir", default="~/.ansible_async"))
        status = self._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                      module_args={"jid": jid, "mode": "status", "_async_dir": async_dir})
        self._remove_tmp_path(self._connection._shell.tmpdir)
        for key in ("started", "finished"):
            if key in status:
                status[key] = bool(status[key])
        return status


class _Forwarded:
    """While watching, SIGINT and SIGTERM (which Ansible's worker gets from ``ansible-playbook``) are noted here, and
    :meth:`check` (between two looks at the host, never inside a command) raises, so that the job can be stopped
    first; :meth:`resume` then hands the signal to the worker's own handler. (Raising from the handler itself, in
    the middle of a command of the connection, left the worker unable to run the stop command.) Outside the main
    thread (no signal handlers there) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self.frame = None
        self.previous = {}

    def __enter__(self):
        try:
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:  # an ignored signal stays ignored
                    self.previous[signum] = signal.signal(signum, self._handler)
        except ValueError:  # not the main thread
            self._restore()
        return self

    def __exit__(self, *exc):
        self._restore()
        return False

    def _handler(self, signum, frame):
        if self.signum is None:
            self.signum, self.frame = signum, frame

    def check(self):
        if self.signum is not None:
            raise _Interrupted(self.signum)

    def _restore(self):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def resume(self):
        if self.signum is None:
            return
        handler = signal.getsignal(self.signum)
        if callable(handler):
            handler(self.signum, self.frame)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(self.signum)


class _Interrupted(BaseException):
    """A signal arrived while the plugin watched the job."""


def _version(state):
    return (state or {}).get("updated_at"), (state or {}).get("bytes_done")


def _json_object(text):
    text = (text or "").strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None  # being replaced, or half written: read again next time
    return data if isinstance(data, dict) else None


def _module_result(status, job):
    """The module's result from async_status: without the async keys, with interpreter discovery kept."""
    result = dict(status)
    for key in _ASYNC_KEYS:
        result.pop(key, None)
    # async_status adds empty stdout/stderr, the async wrapper the module's stderr: a plain run returns neither.
    for key in ("stdout", "stderr", "stdout_lines", "stderr_lines"):
        result.pop(key, None)
    facts = job.get("ansible_facts")
    if facts:
        result["ansible_facts"] = merge_hash(facts, result.get("ansible_facts") or {})
    return result
