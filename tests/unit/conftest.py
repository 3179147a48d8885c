# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures shared by the unit tests: the pattern every test file uses, defined once.

- ``pool``: an empty pool directory (``<tmp>/pool``).
- ``www``: an empty directory for a loopback server to serve (``<tmp>/www``); a test writes what it serves.
- ``server``: an :class:`ImageServer` (plain HTTP) over ``www``, stopped after the test.
- ``ca``: one private test CA for the whole run (``tests/unit/lib/tls.py``); make another ``TestCA`` only where a
  test needs a second, distrusted or expired one.
- ``mount_tmpfs(size, name="tmpfs")``: a real tmpfs of ``size`` (``1m``, ``128m``) at ``<tmp>/<name>``, unmounted
  after the test; ``small_tmpfs``: a 1 MiB one (ENOSPC on purpose). Both need root: ``require.tmpfs`` skips them
  elsewhere and fails them under CI=true.

A test file may still define a fixture of the same name when it needs another content (a module-scoped corpus,
for example); pytest then uses the file's own one.
"""

from __future__ import annotations

import contextlib

import pytest

from ansible_collections.directdownload.kvm.tests.unit.lib.require import tmpfs
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA


@pytest.fixture
def pool(tmp_path):
    """An empty pool directory."""
    path = tmp_path / "pool"
    path.mkdir()
    return path


@pytest.fixture
def www(tmp_path):
    """An empty directory for a test's loopback server to serve."""
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def server(www):
    """A plain HTTP :class:`ImageServer` serving ``www``."""
    with ImageServer(www) as srv:
        yield srv


@pytest.fixture
def servers(image):
    """``start(**fault)`` starts one more :class:`ImageServer` over ``image.root`` (the test module's own ``image``
    fixture), with an optional fault on ``image.name``; all are closed at the end."""
    started = []

    def start(**fault):
        srv = ImageServer(image.root)
        started.append(srv)
        if fault:
            srv.set_fault("/" + image.name, **fault)
        return srv

    yield start
    for srv in started:
        srv.close()


@pytest.fixture(scope="session")
def ca():
    """The run's private test CA."""
    return TestCA(common_name="directdownload unit test CA")


@pytest.fixture
def mount_tmpfs(tmp_path):
    """``mount_tmpfs(size, name="tmpfs")`` -> the mount point of a real tmpfs, unmounted after the test."""
    with contextlib.ExitStack() as stack:
        def make(size, name="tmpfs"):
            mount_point = tmp_path / name
            mount_point.mkdir()
            return stack.enter_context(tmpfs(mount_point, size))
        yield make


@pytest.fixture
def small_tmpfs(mount_tmpfs):
    """A 1 MiB tmpfs: writing more fails with ENOSPC."""
    return mount_tmpfs("1m", "tiny")
