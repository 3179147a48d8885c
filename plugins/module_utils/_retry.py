# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The retry policy of one download, pure (no I/O, no sleeping): which failures earn another attempt on THIS host,
how long to wait before it, and whether the wait fits the overall ``timeout`` budget.

Two questions, two answers:

* ``error.retry_elsewhere`` (``_errors.py``): could another host or mirror succeed? The deployment asks that.
* :func:`classify` here: is another attempt on this host, a little later, worth making? The engine asks that; the
  error's own ``retry_here`` is its answer where the status and reason below do not decide.

A 404 is permanent here (asking again is asking for the same missing file) whatever another host may think;
a 503 is temporary. Classes:

==============  ===============================================================================================
``permanent``   HTTP 400, 401, 403, 404, 410 and every other 4xx except 408 and 429; a refused redirect, a TLS
                verification failure, a server that cannot serve ranges where they are needed; an image refused
                by policy, a checksum mismatch (those have their own budget: ``mismatch_retries``), bad input
``temporary``   HTTP 408, 429, 5xx; connection refused, reset or broken; connect and read timeouts; a truncated
                body; a connection closed by the ``lowest_speed`` watchdog; a range the resource no longer has
==============  ===============================================================================================

Temporary failures wait ``retry_delay * 2**(n-1)`` (n = the retry's number), at most ``MAX_BACKOFF`` seconds, with
"equal jitter" (a random point in the upper half of that delay, so that hosts that failed together do not come back
together). A ``Retry-After`` answer (seconds or an HTTP date) is honoured instead when it is longer, if it fits the
budget: the rest of ``timeout`` when one is set, else ``MAX_RETRY_AFTER``; a server that asks for more than fits
ends the retries (waiting longer than the budget, or coming back earlier than the server asked, both waste time).
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime
from typing import Optional

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    ChecksumMismatch,
    HTTPStatusError,
    ImageRejected,
    InvalidInput,
    SourceError,
)

PERMANENT = "permanent"
TEMPORARY = "temporary"

# Named in the issue; every other 4xx but 408/429 is permanent too.
PERMANENT_STATUSES = (400, 401, 403, 404, 410)
TEMPORARY_STATUSES = (408, 429)
# SourceError reasons that are permanent here whatever the error's retry scope says: the overall timeout
# is spent, or the server refused to resume a second time in this run (one restart from byte 0 is the limit).
PERMANENT_REASONS = ("timeout", "resume_refused", "resume")
# The longest backoff between two attempts (a Retry-After may ask for more).
MAX_BACKOFF = 30.0
# Without a ``timeout``, the longest Retry-After honoured: a server asking for more ends the retries.
MAX_RETRY_AFTER = 600.0


def classify(exc: BaseException) -> str:
    """``PERMANENT`` or ``TEMPORARY`` for this host (see the module docstring)."""
    if isinstance(exc, (ChecksumMismatch, ImageRejected, InvalidInput)):
        return PERMANENT
    status = getattr(exc, "status", None)
    if isinstance(exc, HTTPStatusError) and isinstance(status, int):
        if status in TEMPORARY_STATUSES or status >= 500:
            return TEMPORARY
        if status == 416 or exc.details.get("reason") == "range_not_satisfiable":
            return TEMPORARY  # the resource changed under the .part: the next attempt starts over
        if 400 <= status < 500:
            return PERMANENT
    if isinstance(exc, SourceError):
        if exc.details.get("reason") in PERMANENT_REASONS:
            return PERMANENT
        # The source's own judgement: refused redirects, TLS verification and missing range support say no.
        return TEMPORARY if exc.retry_here else PERMANENT
    return PERMANENT


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or None when absent or
    unreadable. A date in the past means 0."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return max(0.0, float(value))
    text = str(value).strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class Budget:
    """The overall ``timeout`` of a download (None: no limit), measured on the monotonic clock."""

    def __init__(self, timeout=None, clock=time.monotonic):
        self.timeout = None if timeout in (None, 0) else float(timeout)
        self._clock = clock
        self.started = clock()

    def elapsed(self) -> float:
        return self._clock() - self.started

    def remaining(self) -> Optional[float]:
        """Seconds left, or None without a limit (never negative)."""
        if self.timeout is None:
            return None
        return max(0.0, self.timeout - self.elapsed())

    def expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0


class Decision:
    """What to do after a failed attempt: ``retry`` (bool), ``delay`` (seconds), ``why`` (for the log when
    retrying, for the failure message when not), ``retry_after`` (the server's wish, seconds, or None)."""

    def __init__(self, retry, delay=0.0, why="", retry_after=None):
        self.retry = retry
        self.delay = delay
        self.why = why
        self.retry_after = retry_after

    def __repr__(self):
        return "Decision(retry=%r, delay=%.2f, why=%r)" % (self.retry, self.delay, self.why)


class RetryPolicy:
    """``decide(exc, attempts)`` after attempt number ``attempts`` (1 = the first) failed with ``exc``.

    ``retries``: attempts allowed after the first; ``retry_delay``: the first backoff in seconds; ``budget``: a
    :class:`Budget`; ``rng``: ``random.random``-like, for tests; ``now``: wall clock for HTTP-date Retry-After.
    """

    def __init__(self, retries, retry_delay=1.0, budget=None, rng=random.random, now=time.time,
                 max_backoff=MAX_BACKOFF, max_retry_after=MAX_RETRY_AFTER):
        self.retries = max(0, int(retries))
        self.retry_delay = max(0.0, float(retry_delay or 0))
        self.budget = budget or Budget(None)
        self.rng = rng
        self.now = now
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after

    def backoff(self, attempts: int) -> float:
        """The jittered exponential delay before retry number ``attempts`` (1 = the first retry)."""
        full = min(self.retry_delay * (2 ** max(0, attempts - 1)), self.max_backoff)
        return full / 2.0 + self.rng() * full / 2.0

    def decide(self, exc: BaseException, attempts: int) -> Decision:
        if classify(exc) == PERMANENT:
            return Decision(False, why="a permanent failure: not retried on this host")
        if attempts > self.retries:
            return Decision(False, why="no retries left (retries=%d)" % self.retries)
        remaining = self.budget.remaining()
        if remaining is not None and remaining <= 0:
            return Decision(False, why="the timeout of %g s is spent" % self.budget.timeout)
        delay = self.backoff(attempts)
        retry_after = parse_retry_after(getattr(exc, "details", {}).get("retry_after"), self.now())
        why = "backoff"
        if retry_after is not None:
            limit = remaining if remaining is not None else self.max_retry_after
            if retry_after > limit:
                return Decision(False, retry_after=retry_after, why=(
                    "the server asks to wait %.0f s (Retry-After), more than %s" % (
                        retry_after, "the %.0f s left of timeout" % remaining if remaining is not None
                        else "the %.0f s this module waits at most without a timeout" % self.max_retry_after)))
            if retry_after >= delay:
                delay, why = retry_after, "Retry-After"
        if remaining is not None and delay >= remaining:
            return Decision(False, why="the next attempt would start after the timeout of %g s"
                                       % self.budget.timeout)
        return Decision(True, delay=delay, why=why, retry_after=retry_after)
