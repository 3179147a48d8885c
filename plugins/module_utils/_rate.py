# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Limits on a transfer while it runs: the ``max_rate`` cap (one token bucket shared by every connection of a
download), the ``lowest_speed`` watchdog (per connection) and the overall ``timeout`` (a :class:`_retry.Budget`).

Cost: nothing when no limit is set (``Limits.paced`` is False and the receive loop stays as it was). With a cap
or a minimum speed, one lock and a few float operations per received buffer (256 KiB in a single stream, one
block in a segmented download), and a watcher that wakes four times a second.

Sizes and rates take the suffixes of curl (``--limit-rate``) and aria2 (``--max-download-limit``): ``K``, ``M``,
``G`` (and ``T``), 1024-based, case-insensitive, with an optional ``B``, ``iB`` or ``/s`` after them (``10M``,
``512k``, ``1.5MiB/s``). Ansible's ``human_to_bytes`` filter reads them the same way.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Optional, Union

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput, SourceError
from ansible_collections.directdownload.kvm.plugins.module_utils._retry import Budget

_MULTIPLIERS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*(?:/\s*s)?\s*$", re.IGNORECASE)
# How often the watcher looks at the connections (lowest_speed, timeout).
WATCH_INTERVAL = 0.25
# Largest read while a cap is set: low caps read less at a time, so the pacing stays smooth.
PACED_READ_MIN = 16 * 1024


def parse_rate(value: Union[int, str, None], name: str = "max_rate") -> Optional[int]:
    """Bytes per second (an int) from ``value`` (int, or a string with a suffix), None for None, '' or 0."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, bool):
        raise InvalidInput("%s must be a number of bytes per second, not a boolean" % name)
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _RATE.match(str(value))
        if not match:
            raise InvalidInput("%s must be bytes per second, with an optional K, M or G suffix (1024-based), "
                               "for example 10M; got %r" % (name, value))
        number = float(match.group(1)) * _MULTIPLIERS[match.group(2).lower()]
    if number < 0:
        raise InvalidInput("%s must not be negative" % name)
    return int(number) or None


class TokenBucket:
    """At most ``rate`` bytes per second across every thread that calls :meth:`consume`.

    Virtual scheduling: each call books its bytes after those already booked and waits until their time. A
    receiver that fell behind (a busy CPU, a slow server) may catch up by at most ``burst`` seconds' worth of bytes;
    longer idle time is not saved up (a cap is a cap: over any T seconds at most ``rate * (T + burst)`` bytes)."""

    def __init__(self, rate, clock=time.monotonic, burst=0.25):
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._booked_until = None

    def consume(self, count: int, wait: Callable[[float], Any] = time.sleep) -> None:
        """Account ``count`` bytes just received; wait (with ``wait(seconds)``) until they fit the rate."""
        with self._lock:
            now = self._clock()
            start = now if self._booked_until is None else max(self._booked_until, now - self.burst)
            self._booked_until = start + count / self.rate
            delay = self._booked_until - now
        if delay > 0:
            wait(delay)


class SpeedWatchdog:
    """Is a connection below ``lowest_speed`` bytes/s over the last ``period`` seconds?

    ``add(count)`` from the receiving thread; ``too_slow()`` from the watcher returns the speed seen over the
    window when it is too low, else None. Nothing is judged before the connection is ``period`` seconds old."""

    def __init__(self, lowest_speed, period, clock=time.monotonic):
        self.lowest_speed = float(lowest_speed)
        self.period = float(period)
        self._clock = clock
        self.received = 0
        self._samples = [(clock(), 0)]

    def add(self, count: int) -> None:
        self.received += count

    def too_slow(self) -> Optional[float]:
        now = self._clock()
        received = self.received
        samples = self._samples
        samples.append((now, received))
        # Keep the newest sample that is at least ``period`` old as the base of the window.
        while len(samples) > 1 and samples[1][0] <= now - self.period:
            del samples[0]
        base_time, base_bytes = samples[0]
        if now - base_time < self.period:
            return None
        speed = (received - base_bytes) / (now - base_time)
        return speed if speed < self.lowest_speed else None


class Limits:
    """The limits of one download (every attempt and every connection of it). See the module docstring."""

    def __init__(self, max_rate=None, lowest_speed=None, lowest_speed_time=None, timeout=None, connections=1,
                 clock=time.monotonic):
        self.max_rate = parse_rate(max_rate, "max_rate")
        self.lowest_speed = parse_rate(lowest_speed, "lowest_speed")
        if lowest_speed_time is not None and float(lowest_speed_time) <= 0:
            raise InvalidInput("lowest_speed_time must be a number of seconds greater than 0")
        self.lowest_speed_time = float(lowest_speed_time) if lowest_speed_time is not None else 30.0
        if timeout is not None and float(timeout) < 0:
            raise InvalidInput("timeout must be 0 (no limit) or a number of seconds")
        connections = max(1, int(connections or 1))
        cap, minimum = self.max_rate or 0, self.lowest_speed or 0
        if cap and minimum and minimum * connections >= cap:
            raise InvalidInput(
                "lowest_speed (%d bytes/s per connection) must be below max_rate (%d bytes/s%s): a connection held "
                "to the cap would be closed as too slow" % (
                    minimum, cap, " shared by %d connections" % connections if connections > 1 else ""))
        self.clock = clock
        self.budget = Budget(timeout, clock=clock)
        self.bucket = TokenBucket(self.max_rate, clock=clock) if self.max_rate else None

    @classmethod
    def for_request(cls, request: Any) -> Limits:
        return cls(getattr(request, "max_rate", None), getattr(request, "lowest_speed", None),
                   getattr(request, "lowest_speed_time", None), getattr(request, "timeout", None),
                   getattr(request, "connections", 1))

    @property
    def paced(self) -> bool:
        """True when received bytes must be counted (a cap or a minimum speed is set)."""
        return self.bucket is not None or self.lowest_speed is not None

    @property
    def watched(self) -> bool:
        """True when a watcher must look at the connections (a minimum speed or an overall timeout)."""
        return self.lowest_speed is not None or self.budget.timeout is not None

    def read_size(self, default: int) -> int:
        """The read size to use: ``default``, or less under a low cap (about 1/8 s of the rate)."""
        if self.bucket is None:
            return default
        return int(max(PACED_READ_MIN, min(default, self.max_rate // 8)))

    def connection(self, url: Optional[str] = None) -> Connection:
        """The per-connection state: :class:`Connection`."""
        return Connection(self, url)

    def timeout_error(self, url: Optional[str] = None, done: Optional[int] = None) -> SourceError:
        return _limit_error("the download did not finish within timeout=%g s%s" % (
            self.budget.timeout, "" if done is None else " (%d bytes done)" % done), url, "timeout")


class Connection:
    """One connection under the download's :class:`Limits`: ``received(count, wait)`` after each read (waits for
    the cap), ``check()`` from the watcher (a SourceError to stop the connection with, or None)."""

    def __init__(self, limits, url=None):
        self.limits = limits
        self.url = url
        self.watchdog = SpeedWatchdog(limits.lowest_speed, limits.lowest_speed_time, limits.clock) \
            if limits.lowest_speed else None

    def received(self, count: int, wait: Callable[[float], Any] = time.sleep) -> None:
        if self.watchdog is not None:
            self.watchdog.add(count)
        if self.limits.bucket is not None:
            self.limits.bucket.consume(count, wait)

    def check(self) -> Optional[SourceError]:
        limits = self.limits
        if limits.budget.expired():
            return limits.timeout_error(self.url)
        if self.watchdog is not None:
            speed = self.watchdog.too_slow()
            if speed is not None:
                return _limit_error(
                    "the connection to %s stayed below lowest_speed=%d bytes/s for %g s (%d bytes/s): closed, the "
                    "transfer resumes where it stands" % (self.url or "the source", int(limits.lowest_speed),
                                                          limits.lowest_speed_time, speed),
                    self.url, "too_slow", speed=int(speed))
        return None


def _limit_error(msg, url, reason, **details):
    # A SourceError's default scope, here and elsewhere: another host (another network path) may well be faster.
    return SourceError(msg, url=url, reason=reason, **details)


# The options of ``download`` that limit a transfer and its retries; documented by the doc fragment
# directdownload.kvm._limits. (``url_check`` only probes: none of them apply to it.)
LIMITS_ARGUMENT_SPEC = dict(
    max_rate=dict(type="str"),
    lowest_speed=dict(type="str"),
    lowest_speed_time=dict(type="float", default=30.0),
    mismatch_retries=dict(type="int", default=1),
    timeout=dict(type="float"),
)
