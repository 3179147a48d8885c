# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The retry policy (_retry): the pure rules, then the engine following them against a real loopback server
(a 404 is asked once, a 503 with Retry-After waits what the server said, the timeout bounds the waits)."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _download, _retry
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    ChecksumMismatch,
    HTTPStatusError,
    ImageRejected,
    SourceError,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._http import SourceOptions, status_error
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import open_source
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

MiB = 1024 * 1024


def source_error(reason, here=True, **details):
    return SourceError("failed: %s" % reason, reason=reason, **details).retry_scope(here, True)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 405, 451])
def test_client_errors_are_permanent(status):
    assert _retry.classify(status_error("http://h/x", status)) == _retry.PERMANENT


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_timeouts_rate_limits_and_server_errors_are_temporary(status):
    assert _retry.classify(status_error("http://h/x", status)) == _retry.TEMPORARY


def test_a_404_stays_permanent_here_even_if_another_host_may_help():
    error = status_error("http://h/x", 404)
    error.retry_scope(True, True)  # the error's own scope does not decide a status the table knows
    assert _retry.classify(error) == _retry.PERMANENT


@pytest.mark.parametrize("reason", ["connection", "refused", "truncated", "read_timeout", "connect_timeout",
                                    "too_slow", "closed"])
def test_transport_failures_are_temporary(reason):
    assert _retry.classify(source_error(reason)) == _retry.TEMPORARY


def test_permanent_transport_failures():
    assert _retry.classify(source_error("tls", here=False)) == _retry.PERMANENT
    assert _retry.classify(source_error("redirect", here=False)) == _retry.PERMANENT
    assert _retry.classify(source_error("timeout")) == _retry.PERMANENT  # the budget is spent
    assert _retry.classify(source_error("resume_refused")) == _retry.PERMANENT
    assert _retry.classify(ChecksumMismatch("m", "a", "b")) == _retry.PERMANENT
    assert _retry.classify(ImageRejected("backing file")) == _retry.PERMANENT
    assert _retry.classify(ValueError("bug")) == _retry.PERMANENT


def test_a_changed_resource_under_the_part_is_temporary():
    error = HTTPStatusError("416", 416, reason="range_not_satisfiable")
    assert _retry.classify(error) == _retry.TEMPORARY


def test_parse_retry_after():
    now = 1_000_000_000.0
    assert _retry.parse_retry_after("2") == 2.0
    assert _retry.parse_retry_after(7) == 7.0
    assert _retry.parse_retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90, abs=1)
    assert _retry.parse_retry_after(formatdate(now - 90, usegmt=True), now) == 0.0
    for junk in (None, "", "soon", "-3", True):
        assert _retry.parse_retry_after(junk) is None


def test_backoff_doubles_with_jitter_in_the_upper_half():
    low = _retry.RetryPolicy(5, retry_delay=1.0, rng=lambda: 0.0)
    high = _retry.RetryPolicy(5, retry_delay=1.0, rng=lambda: 1.0)
    assert [low.backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [high.backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert high.backoff(10) == _retry.MAX_BACKOFF


def test_decisions():
    clock = [100.0]
    budget = _retry.Budget(60, clock=lambda: clock[0])
    policy = _retry.RetryPolicy(2, retry_delay=1.0, budget=budget, rng=lambda: 1.0)
    temporary = status_error("http://h/x", 503)
    assert policy.decide(temporary, 1).retry and policy.decide(temporary, 1).delay == 1.0
    assert not policy.decide(temporary, 3).retry, "retries bounds the attempts"
    assert not policy.decide(status_error("http://h/x", 404), 1).retry

    honoured = policy.decide(status_error("http://h/x", 503, retry_after=20), 1)
    assert honoured.retry and honoured.delay == 20 and honoured.why == "Retry-After"
    shorter = policy.decide(status_error("http://h/x", 503, retry_after=0), 2)
    assert shorter.retry and shorter.delay == 2.0, "our own backoff when the server asks for less"
    too_long = policy.decide(status_error("http://h/x", 503, retry_after=61), 1)
    assert not too_long.retry and "Retry-After" in too_long.why and too_long.retry_after == 61

    clock[0] += 59.5
    assert not policy.decide(temporary, 1).retry, "a wait that ends after the timeout is not started"
    clock[0] += 1
    assert "spent" in policy.decide(temporary, 1).why


def test_without_a_timeout_retry_after_is_bounded():
    policy = _retry.RetryPolicy(3, retry_delay=0)
    assert policy.decide(status_error("http://h/x", 429, retry_after=600), 1).retry
    assert not policy.decide(status_error("http://h/x", 429, retry_after=601), 1).retry


# ---------------------------------------------------------------------------------------------------------------
# The engine follows the policy (real loopback server)


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    images.random_raw(str(root / "disk.raw"), size=MiB)
    pool = tmp_path / "pool"
    pool.mkdir()
    with ImageServer(root) as server:
        yield server, pool


def request_for(server, pool, path="disk.raw", **kwargs):
    kwargs.setdefault("source_options", SourceOptions(read_timeout=5))
    kwargs.setdefault("progress_interval", 0)
    kwargs.setdefault("image_format", "raw")
    return _download.DownloadRequest(server.url(path), str(pool), **kwargs)


def test_a_404_makes_exactly_one_request(setup):
    server, pool = setup
    with pytest.raises(HTTPStatusError) as failure:
        _download.run(request_for(server, pool, "missing.raw", retries=5, retry_delay=0), open_source)
    assert failure.value.status == 404
    assert len(server.requests_for("/missing.raw")) == 1
    assert failure.value.details["attempts"] == 1 and "permanent" in failure.value.details["retry_stopped"]


def test_503_with_retry_after_waits_what_the_server_asked(setup):
    server, pool = setup
    server.set_fault("/disk.raw", status=503, times=1, headers={"Retry-After": "2"})
    logged = []
    result = _download.run(request_for(server, pool, retries=2, retry_delay=0.01), open_source, log=logged.append)
    first, second = server.requests_for("/disk.raw")
    assert first.status == 503 and second.status == 200
    assert second.time - first.time >= 2.0, "Retry-After: 2 must be honoured (our own backoff is 0.01 s)"
    assert result["attempts"] == 2
    assert any("Retry-After" in line and "2.0 s" in line for line in logged), logged


def test_retry_after_beyond_the_timeout_fails_at_once(setup):
    server, pool = setup
    server.set_fault("/disk.raw", status=503, headers={"Retry-After": "30"})
    started = time.monotonic()
    with pytest.raises(HTTPStatusError) as failure:
        _download.run(request_for(server, pool, retries=5, retry_delay=0.01, timeout=5), open_source)
    assert time.monotonic() - started < 3
    assert len(server.requests_for("/disk.raw")) == 1
    assert "Retry-After" in failure.value.details["retry_stopped"]


def test_retries_stop_when_the_timeout_is_spent(setup):
    server, pool = setup
    server.set_fault("/disk.raw", status=500)
    started = time.monotonic()
    with pytest.raises(HTTPStatusError) as failure:
        _download.run(request_for(server, pool, retries=50, retry_delay=0.4, timeout=2.5), open_source)
    elapsed = time.monotonic() - started
    assert elapsed < 3.5, "the overall timeout bounds the backoff"
    assert 2 <= len(server.requests_for("/disk.raw")) < 10
    assert "timeout" in failure.value.details["retry_stopped"]
