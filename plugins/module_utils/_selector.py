# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Which source to use next, for one file: the description's order (priority, preference, location), failover,
and quarantine of a source that served bad bytes for the rest of the download. Pure bookkeeping: no I/O, no lock
(the transfer calls it under its own lock). What each source did is reported in the ``sources`` result."""

from __future__ import annotations

import time
from typing import AbstractSet, Any, Iterable, Optional, Union

from ansible_collections.directdownload.kvm.plugins.module_utils._description import SourceRef
from ansible_collections.directdownload.kvm.plugins.module_utils._retry import parse_retry_after
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import redact_url


def error_text(exc: BaseException) -> str:
    return getattr(exc, "msg", None) or str(exc) or exc.__class__.__name__


class _State:
    __slots__ = ("ref", "failures", "active", "bytes", "pieces_rejected", "error", "set_aside", "quarantined",
                 "slow", "not_before")

    def __init__(self, ref: SourceRef) -> None:
        self.ref = ref
        self.failures = 0
        self.active = 0
        self.bytes = 0
        self.pieces_rejected = 0
        self.error = None
        self.set_aside = False  # dropped for this transfer (unreachable, no ranges, too many failures)
        self.quarantined = False  # served bytes that failed a hash: never asked again in this download
        self.slow = False
        self.not_before = 0.0  # busy (503/429): not picked again before this monotonic time


# A fan-out peer that answers one of these will not serve us in this download (no token, no such file, its copy
# changed): set aside for good. A busy one (503) is asked again after its Retry-After.
PEER_REFUSALS = (401, 403, 404, 410)
BUSY_STATUSES = (429, 503)
MAX_BUSY_WAIT = 30.0


def is_busy(exc: BaseException) -> bool:
    return getattr(exc, "status", None) in BUSY_STATUSES


def refuses_peer(ref: SourceRef, exc: BaseException) -> bool:
    """True when ``exc`` from the peer ``ref`` means it will not serve this download: 401/403/404/410, a pin
    mismatch or another TLS failure, any error not retryable elsewhere."""
    if not getattr(ref, "peer", False):
        return False
    details = getattr(exc, "details", None) or {}
    return (getattr(exc, "status", None) in PEER_REFUSALS or details.get("reason") == "tls"
            or getattr(exc, "retry_elsewhere", True) is False)


class SourceSelector:
    """The sources of one file (``_description.SourceRef`` in try order) and what happened to each.

    ``errors`` lists ``{"url": redacted, "error": message}`` for every failure, in order (the ``mirror_errors``
    result); ``scopes`` runs parallel to it: each failure's ``(retry_here, retry_elsewhere)``."""

    def __init__(self, refs: Iterable[SourceRef], max_failures: int = 3) -> None:
        self.refs = list(refs)
        self.max_failures = max(1, int(max_failures))
        self._state = {}
        for ref in self.refs:
            self._state.setdefault(ref.url, _State(ref))
        self.errors = []
        self.scopes = []

    def state(self, url: str) -> _State:
        return self._state[url]

    # -- failover: one source at a time

    def candidates(self) -> list[SourceRef]:
        """The sources still worth trying, in order: not quarantined; those set aside as slow last."""
        refs = [r for r in self.refs if not self._state[r.url].quarantined]
        refs.sort(key=lambda r: self._state[r.url].slow)
        return refs

    def record_error(self, ref: SourceRef, exc: BaseException, scope: Optional[tuple[bool, bool]] = None) -> None:
        """One failure of ``ref``; ``scope`` ``(retry_here, retry_elsewhere)`` instead of the error's own."""
        self.errors.append(dict(url=ref.redacted, error=error_text(exc)))
        if scope is None:
            scope = (getattr(exc, "retry_here", True), getattr(exc, "retry_elsewhere", True))
        self.scopes.append(tuple(scope))
        if refuses_peer(ref, exc):
            state = self._state.get(ref.url)
            if state is not None and not state.quarantined:
                state.quarantined = True
                state.error = error_text(exc)

    def set_aside_slow(self, url: str) -> None:
        if url in self._state:
            self._state[url].slow = True

    def quarantine(self, url: str, why: str) -> bool:
        """``url`` served bytes that failed a hash: never asked again in this download. Returns False when it
        already was."""
        state = self._state.get(url)
        if state is None or state.quarantined:
            return False
        state.quarantined = True
        state.error = why
        self.errors.append(dict(url=state.ref.redacted, error=why))
        self.scopes.append((False, False))
        return True

    def count_bytes(self, url: str, count: int) -> None:
        if url in self._state:
            self._state[url].bytes += count

    # -- several at once: the scheduler's questions

    def failed(self, ref: SourceRef, exc: BaseException, fatal: bool = False) -> bool:
        """A connection to ``ref`` failed. Returns True when the source is set aside now (``fatal``: it can take no
        part at all, e.g. no exact ranges; else after ``max_failures`` failures)."""
        state = self._state[ref.url]
        self.record_error(ref, exc, scope=(True, True))
        if state.quarantined:  # a peer that refused us (refuses_peer)
            state.set_aside = True
            return True
        if is_busy(exc):
            wait = parse_retry_after((getattr(exc, "details", None) or {}).get("retry_after"))
            state.not_before = time.monotonic() + min(MAX_BUSY_WAIT, 2.0 if wait is None else wait)
            fatal = False
        state.failures += 1
        if not state.set_aside and (fatal or state.failures >= self.max_failures):
            state.set_aside = True
            state.error = state.error or error_text(exc)
            return True
        return False

    def piece_rejected(self, ref: SourceRef, why: str) -> None:
        """A piece from ``ref`` failed its hash: counted, and the source is quarantined for the rest of the
        download (its other bytes cannot be trusted more than the piece that failed)."""
        self._state[ref.url].pieces_rejected += 1
        self.quarantine(ref.url, why)

    def alive(self) -> list[SourceRef]:
        """The usable sources. When fan-out peers are among them, only the peers: the origin and its mirrors are
        the fallback of a fan-out receiver, asked once no peer is left (docs/fanout.md)."""
        alive = [r for r in self.refs if self.usable(r.url)]
        peers = [r for r in alive if getattr(r, "peer", False)]
        return peers or alive

    def usable(self, url: str) -> bool:
        state = self._state[url]
        return not (state.set_aside or state.quarantined)

    def cap(self, ref: SourceRef, connections: int, per_source: Optional[int] = None) -> int:
        """How many connections ``ref`` may have: an even share of ``connections`` over the live sources (or
        ``per_source``), at most the server's own ``max_connections``."""
        alive = max(1, len(self.alive()))
        cap = per_source or -(-connections // alive)
        if ref.max_connections:
            cap = min(cap, ref.max_connections)
        return max(1, cap)

    def pick(self, connections: int, avoid: AbstractSet[str] = frozenset(),
             per_source: Optional[int] = None) -> Union[SourceRef, bool, None]:
        """The least busy usable source (not in ``avoid`` unless nothing else is alive); None when every one is at
        its connection cap; False when none is alive."""
        alive = self.alive()
        if not alive:
            return False
        now = time.monotonic()
        ready = [r for r in alive if self._state[r.url].not_before <= now]
        preferred = [r for r in ready if r.url not in avoid] or ready
        free = [r for r in preferred if self._state[r.url].active < self.cap(r, connections, per_source)]
        if not free:
            return None
        return min(free, key=lambda r: (self._state[r.url].active, r.rank))

    def started(self, ref: SourceRef) -> None:
        self._state[ref.url].active += 1

    def stopped(self, ref: SourceRef) -> None:
        self._state[ref.url].active -= 1

    def merge(self, other: SourceSelector) -> None:
        """Take in what a transfer's own selector (over some of these sources) saw: errors, bytes, rejected pieces,
        quarantines; a source it set aside keeps its error (it may be tried again by a later attempt)."""
        self.errors.extend(other.errors)
        self.scopes.extend(other.scopes)
        for url, theirs in other._state.items():  # pylint: disable=protected-access
            mine = self._state.get(url)
            if mine is None:
                continue
            mine.bytes += theirs.bytes
            mine.pieces_rejected += theirs.pieces_rejected
            mine.quarantined = mine.quarantined or theirs.quarantined
            mine.error = mine.error or theirs.error

    # -- the result

    def report(self) -> list[dict[str, Any]]:
        """``[{url, bytes, pieces_rejected, error, peer}]``, one entry per source (URLs redacted), in try order;
        ``peer`` tells a fan-out peer from the origin and its mirrors."""
        return [dict(url=redact_url(r.url), bytes=self._state[r.url].bytes,
                     pieces_rejected=self._state[r.url].pieces_rejected, error=self._state[r.url].error,
                     peer=bool(getattr(r, "peer", False)))
                for r in self.refs]
