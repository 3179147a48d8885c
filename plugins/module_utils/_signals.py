# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""SIGINT and SIGTERM as an ordinary, resumable failure of the download.

``interruptible()`` (the ``download`` module wraps its engine call in it) turns both signals into
:class:`Interrupted`, raised in the main thread wherever it is: the receive/hash/write pipeline and the segmented
downloader stop their threads on the way out, the engine keeps the ``.part`` and its sidecar, and the module
fails with a parsable result ("interrupted at 41% ...; run again to resume") instead of dying mid-write (SIGTERM's
default) or taking the KeyboardInterrupt path. ``deferred()`` holds a signal back for a few system calls that
must not be cut in two (the rename into the pool and the record); SIGKILL cannot be caught and needs nothing:
the part and its sidecar on disk are resumable at every moment.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import DirectDownloadError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STATE = {"installed": 0, "deferred": 0, "pending": None}


class Interrupted(DirectDownloadError):
    """The run was stopped by a signal. Retryable here and elsewhere: the next run resumes."""

    def __init__(self, signum, msg=None, **details):
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        super().__init__(msg or "interrupted by %s" % name, signal=name, **details)
        self.signum = signum
        self.signal_name = name


def _handler(signum, _frame):
    if _STATE["deferred"]:
        _STATE["pending"] = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread. Outside the main thread
    (where handlers cannot be set) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    _STATE["installed"] += 1
    try:
        yield
    finally:
        _STATE["installed"] -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM back until the block is done (no-op without :func:`interruptible`). Yields a list that
    holds the name of the signal that arrived meanwhile, if any: the caller finishes its work and reports it."""
    arrived = []
    if not _STATE["installed"] or threading.current_thread() is not threading.main_thread():
        yield arrived
        return
    _STATE["deferred"] += 1
    try:
        yield arrived
    finally:
        _STATE["deferred"] -= 1
        pending, _STATE["pending"] = _STATE["pending"], None
        if pending is not None:
            arrived.append(signal.Signals(pending).name)
