# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one way a test says that it needs a real part of the machine (a tool, root, a server it can start).

On a developer's machine a missing part skips the test, with the reason. Under ``CI=true`` (GitHub Actions, GitLab
and most CI systems set it) the same test FAILS: the CI image is meant to have every part (``bindep.txt``), so a
green CI run means every one of these tests really ran. Never call ``pytest.skip`` for a missing part directly::

    from ansible_collections.directdownload.kvm.tests.unit.lib.require import needs_tool, require, require_tool

    KEYTOOL = require_tool("keytool", finder=_certs.find_keytool)   # inside a test or fixture: the path
    @needs_tool("strace")                                           # on a test: checked when it runs
    def test_x(): ...
    require(ganesha_available())                                    # a reason string, or None when all is there
    require_root("mounting a tmpfs")
    other_group()                                                   # a group that is not the process's own
    with tmpfs(path, "1m"): ...                                     # a real tmpfs, always unmounted
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import shutil
import subprocess

import pytest

CI_VARIABLE = "CI"


def in_ci():
    """True when the tests run in CI (``CI`` set to true/1/yes): missing parts fail there instead of skipping."""
    return os.environ.get(CI_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def missing(reason):
    """A real part is missing: skip the test here, fail it under ``CI=true``. Never returns."""
    if in_ci():
        pytest.fail("%s (CI=%s: every real part must be there, see bindep.txt)" % (reason, os.environ[CI_VARIABLE]),
                    pytrace=False)
    pytest.skip(reason)


def require(reason):
    """:func:`missing` when ``reason`` (what a ``*_available()`` check returned) is not None or empty."""
    if reason:
        missing(reason)


def require_tool(name, finder=None):
    """The path of executable ``name`` (``finder()`` when given, else ``shutil.which``), or :func:`missing`."""
    found = finder() if finder is not None else shutil.which(name)
    if not found:
        missing("%s is not installed (see bindep.txt)" % name)
    return found


def needs_tool(name, finder=None):
    """Decorator form of :func:`require_tool`: the test is checked when it runs (not at collection time)."""
    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            require_tool(name, finder)
            return func(*args, **kwargs)
        return wrapper
    return decorate


def require_root(what):
    """:func:`missing` unless this process runs as root; ``what`` says what needs it."""
    if os.geteuid() != 0:
        missing("%s needs root" % what)


def other_group():
    """A group of this host that is not the process's own (``grp.struct_group``), to see a file change group.
    Every Debian host has several, so a host with a single group fails the test everywhere, CI or not."""
    for entry in grp.getgrall():
        if entry.gr_gid != os.getegid():
            return entry
    pytest.fail("this host has a single group: cannot test the operator group")
    return None


@contextlib.contextmanager
def tmpfs(mount_point, size):
    """Mount a real tmpfs of ``size`` (mount's syntax: ``1m``, ``128m``) on the existing directory
    ``mount_point``; unmounted in any case. :func:`missing` when it cannot be mounted (needs root)."""
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", str(mount_point)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if result.returncode != 0:
        missing("cannot mount a tmpfs here: %s" % result.stderr.decode(errors="replace").strip())
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
