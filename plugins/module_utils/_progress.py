# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""What an operator sees of a running download, in one place for both ends:

- on the KVM host, the engine writes the progress sidecar ``<pool>/.<name>.part.json`` (figures plus the one-line
  ``progress`` summary made by :func:`describe`; ``_sink.PartFile.save_state``: mode 0640, group from the agent
  settings);
- on the controller, the ``download`` action plugin reads that sidecar while the module runs as an async job and
  prints :func:`progress_line` in the play output; the job holds a :class:`Lease` that the plugin renews, so that a
  download whose controller went away (Ctrl-C, killed, network gone) stops, keeping its resumable ``.part``, as a
  synchronous one does when its SSH session ends.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Optional

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput, SourceError
from ansible_collections.directdownload.kvm.plugins.module_utils._install import human_size

# Set by the download action plugin for the async job it starts (see Lease).
LEASE_ENV = "DIRECTDOWNLOAD_LEASE"
LEASE_SECONDS_ENV = "DIRECTDOWNLOAD_LEASE_SECONDS"


def human_rate(bytes_per_second: float) -> str:
    """``5037663`` -> ``'5.0 MB/s'``; decimal, as network rates are quoted."""
    return "%.1f MB/s" % (float(bytes_per_second) / 1e6)


def human_seconds(seconds: float) -> str:
    """``75`` -> ``'1 min 15 s'``; ``3.72`` -> ``'3.7 s'``."""
    if float(seconds) < 10:
        return "%.1f s" % float(seconds)
    seconds = int(round(float(seconds)))
    if seconds < 60:
        return "%d s" % seconds
    if seconds < 3600:
        return "%d min %02d s" % (seconds // 60, seconds % 60)
    return "%d h %02d min" % (seconds // 3600, seconds % 3600 // 60)


def describe(state: Mapping[str, Any]) -> str:
    """The figures of a progress state as one line: ``45.2%, 22.6 MiB of 50.0 MiB, 5.0 MB/s, ETA 4 s``.

    Accepts what any sidecar holds (missing keys are left out), so older or partial sidecars still read."""
    done, total = state.get("bytes_done"), state.get("total")
    parts = []
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        parts.append("%.1f%%" % (100.0 * done / total))
        parts.append("%s of %s" % (human_size(done), human_size(total)))
    elif isinstance(done, int):
        parts.append("%s of an unknown size" % human_size(done))
    if isinstance(state.get("rate"), (int, float)):
        parts.append(human_rate(state["rate"]))
    if isinstance(state.get("eta"), (int, float)):
        parts.append("ETA %s" % human_seconds(state["eta"]))
    if state.get("connections"):
        parts.append("%d connections" % state["connections"])
    return ", ".join(parts)


def progress_line(host: str, name: str, state: Mapping[str, Any]) -> str:
    """The line the action plugin prints: ``[kvm-a] debian-12.qcow2: 45.2%, ..., from http://mirror/...``."""
    line = "[%s] %s: %s" % (host, name, describe(state) or "starting")
    if state.get("source"):
        line += ", from %s" % state["source"]
    return line


def group_id(name: Optional[str]) -> Optional[int]:
    """The gid of the operator group ``name`` (agent settings ``progress_group``), or None when none is set."""
    if not name:
        return None
    import grp  # pylint: disable=import-outside-toplevel
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise InvalidInput("the progress_group %r of the agent settings is not a group on this host (the agent role "
                           "creates it)" % name) from None


class ControllerGone(SourceError):
    """The controller stopped renewing the lease of this async download: stop, keep the resumable ``.part``."""

    retry_here = False
    retry_elsewhere = False


class Lease:
    """The heartbeat of the controller that started this download as an async job.

    The action plugin creates the file ``path`` and touches it every second or so while it watches the job; the
    engine calls :meth:`check` with each progress update (every few seconds, never per block). A lease not renewed
    for ``seconds`` means nobody is watching any more: the download stops like a synchronous one whose SSH session
    ended. A lease file that does not exist yet stops nothing: the first check makes it (so that a controller gone
    before its first look still lets the lease run out); one that cannot be made (its directory is gone) stops
    nothing either.
    """

    def __init__(self, path, seconds, clock=time.time):
        self.path = path
        self.seconds = float(seconds)
        self.clock = clock

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> Optional[Lease]:
        environ = os.environ if environ is None else environ
        path = environ.get(LEASE_ENV)
        if not path:
            return None
        try:
            seconds = float(environ.get(LEASE_SECONDS_ENV) or 60)
        except ValueError:
            seconds = 60.0
        return cls(path, max(seconds, 5.0))

    def check(self) -> None:
        try:
            renewed = os.stat(self.path).st_mtime
        except OSError:
            try:
                with open(self.path, "a"):
                    pass
            except OSError:
                pass
            return
        idle = self.clock() - renewed
        if idle > self.seconds:
            raise ControllerGone(
                "stopped: the controller that started this download has not been watching it for %d s (interrupted "
                "or disconnected); the .part is kept and the next run resumes it" % idle, reason="controller_gone")
