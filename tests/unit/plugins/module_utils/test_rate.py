# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Transfer limits (_rate): the pure pieces, then the engine under them against real loopback servers: a
``max_rate`` cap that holds within 10% over several seconds (one stream, and a segmented metalink download over
two mirrors), a connection below ``lowest_speed`` recycled and resumed, the overall ``timeout``."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _download, _rate
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput, SourceError
from ansible_collections.directdownload.kvm.plugins.module_utils._http import HttpSource, SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._description import from_metalink
from ansible_collections.directdownload.kvm.plugins.module_utils._metalink import NS_V4, parse_metalink
from ansible_collections.directdownload.kvm.plugins.module_utils._pieces import DEFAULT_UNIT_SIZE
from ansible_collections.directdownload.kvm.plugins.module_utils._sink import DEFAULT_READ_SIZE
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import open_source
from ansible_collections.directdownload.kvm.plugins.module_utils._transfer import segmented_download
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

MiB = 1024 * 1024


@pytest.mark.parametrize("text, value", [
    ("1000", 1000), (2048, 2048), ("10K", 10240), ("10k", 10240), ("1.5M", 1572864), ("2G", 2 * 1024 ** 3),
    ("4MiB", 4 * MiB), ("4MB/s", 4 * MiB), (" 8 m ", 8 * MiB), ("", None), (None, None), ("0", None), (0, None),
])
def test_parse_rate(text, value):
    assert _rate.parse_rate(text) == value


@pytest.mark.parametrize("text", ["fast", "10X", "-1M", "1,5M", True])
def test_parse_rate_refuses(text):
    with pytest.raises(InvalidInput, match="max_rate"):
        _rate.parse_rate(text)


def test_limits_refuse_a_minimum_above_the_cap():
    with pytest.raises(InvalidInput, match="lowest_speed"):
        _rate.Limits(max_rate="1M", lowest_speed="1M")
    with pytest.raises(InvalidInput, match="shared by 4 connections"):
        _rate.Limits(max_rate="4M", lowest_speed="1M", connections=4)
    with pytest.raises(InvalidInput, match="lowest_speed_time"):
        _rate.Limits(lowest_speed="1M", lowest_speed_time=0)
    assert not _rate.Limits().paced and not _rate.Limits().watched
    assert _rate.Limits(timeout=5).watched and not _rate.Limits(timeout=5).paced


def test_token_bucket_books_bytes_after_each_other():
    clock = [0.0]
    waits = []
    bucket = _rate.TokenBucket(1000, clock=lambda: clock[0])
    bucket.consume(500, waits.append)
    bucket.consume(500, waits.append)
    assert waits == [0.5, 1.0]
    clock[0] = 5.0  # idle for a while: no more than a quarter of a second saved up
    bucket.consume(1000, waits.append)
    assert waits[-1] == 0.75


def test_speed_watchdog_judges_the_average_over_a_sliding_window():
    clock = [0.0]
    watchdog = _rate.SpeedWatchdog(1000, 2, clock=lambda: clock[0])
    clock[0] = 1.5
    assert watchdog.too_slow() is None, "nothing is judged before the connection is lowest_speed_time old"
    clock[0] = 2.0
    assert watchdog.too_slow() == 0.0, "nothing at all for 2 s"
    watchdog = _rate.SpeedWatchdog(1000, 2, clock=lambda: clock[0])
    for _step in range(4):  # 2000 bytes/s
        clock[0] += 0.5
        watchdog.add(1000)
        assert watchdog.too_slow() is None
    clock[0] += 0.5  # from now on 100 bytes/s
    watchdog.add(50)
    assert watchdog.too_slow() is None, "the last 2 s still average 1525 bytes/s"
    for _step in range(2):
        clock[0] += 0.5
        watchdog.add(50)
    assert watchdog.too_slow() == pytest.approx((1000 + 3 * 50) / 2.0), "1.5 s slow drag the window below"


def test_read_size_under_low_caps():
    assert _rate.Limits().read_size(DEFAULT_READ_SIZE) == DEFAULT_READ_SIZE
    assert _rate.Limits(max_rate="100M").read_size(DEFAULT_READ_SIZE) == DEFAULT_READ_SIZE
    assert _rate.Limits(max_rate="256K").read_size(DEFAULT_READ_SIZE) == 32 * 1024
    assert _rate.Limits(max_rate="10K").read_size(DEFAULT_READ_SIZE) == _rate.PACED_READ_MIN


# ---------------------------------------------------------------------------------------------------------------
# The engine under limits (real loopback servers)

SIZE = 20 * MiB
CAP = 4 * MiB  # 5 s for SIZE: "several seconds"


@pytest.fixture
def www(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "disk.raw").write_bytes(data)
    return root, hashlib.sha256(data).hexdigest()


@pytest.fixture
def pool(tmp_path):
    path = tmp_path / "pool"
    path.mkdir()
    return path


def request_for(url, pool, **kwargs):
    kwargs.setdefault("source_options", SourceOptions(read_timeout=10))
    kwargs.setdefault("retry_delay", 0)
    kwargs.setdefault("progress_interval", 0.2)
    kwargs.setdefault("image_format", "raw")
    return _download.DownloadRequest(url, str(pool), **kwargs)


class TimedSource:
    """The engine's real HttpSource, observed: when the first body opened and when its last byte arrived, so the
    rate is measured over the transfer alone (not the lock, fsync, qemu-img and rename around it, which a loaded
    2-core machine stretches). Passed to the engine as its ``open_source``, the injection point it has for this."""

    def __init__(self):
        self.opened = None
        self.last = None

    def __call__(self, url, request):
        source = open_source(url, request)
        real_open = source.open

        def timed_open(*args, **kwargs):
            body = real_open(*args, **kwargs)
            if self.opened is None:
                self.opened = time.monotonic()
            real_readinto = body.readinto

            def readinto(buf):
                count = real_readinto(buf)
                self.last = time.monotonic()
                return count
            body.readinto = readinto
            return body
        source.open = timed_open
        return source


def test_max_rate_holds_on_one_stream(www, pool):
    root, _digest = www
    timed = TimedSource()
    with ImageServer(root) as server:
        result = _download.run(request_for(server.url("disk.raw"), pool, max_rate="4M"), timed)
    rate = result["bytes_downloaded"] / (timed.last - timed.opened)
    print("max_rate 4M, one stream: %.0f bytes/s over %.2f s = %.1f%% of the cap (whole run: %.1f%%)" % (
        rate, timed.last - timed.opened, 100 * rate / CAP, 100 * result["bytes_downloaded"] / result["elapsed"] / CAP))
    assert result["bytes_downloaded"] == SIZE
    assert 0.9 * CAP <= rate <= 1.1 * CAP


def write_metalink(root, urls, digest, name="disk.raw"):
    document = ('<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="%s"><file name="%s"><size>%d</size>'
                '<hash type="sha-256">%s</hash>%s</file></metalink>' % (
                    NS_V4, name, SIZE, digest,
                    "".join('<url priority="%d">%s</url>' % (i + 1, url) for i, url in enumerate(urls))))
    (root / "disk.raw.meta4").write_text(document)


def test_max_rate_holds_across_the_connections_of_a_segmented_download(www, tmp_path):
    root, digest = www
    with ImageServer(root) as first, ImageServer(root) as second:
        write_metalink(root, [first.url("disk.raw"), second.url("disk.raw")], digest)
        metalink_file = from_metalink(parse_metalink((root / "disk.raw.meta4").read_bytes()))
        limits = _rate.Limits(max_rate="4M", connections=4)
        result = segmented_download(metalink_file, lambda url: HttpSource(url, SourceOptions(read_timeout=10)),
                                    str(tmp_path / ".disk.raw.part"), connections=4,
                                    checksums=metalink_file.expected_checksums(), limits=limits)
        served = {server.port: sum(r.bytes_sent for r in server.requests_for("/disk.raw")) for server in
                  (first, second)}
    rate = result["bytes_downloaded"] / result["elapsed"]
    print("max_rate 4M, segmented over 4 connections and 2 mirrors: %.0f bytes/s over %.2f s = %.1f%% of the cap"
          % (rate, result["elapsed"], 100 * rate / CAP))
    assert all(served.values()), "both mirrors took part"
    assert result["bytes_downloaded"] == SIZE and result["digests"]["sha256"] == digest
    assert 0.9 * CAP <= rate <= 1.1 * CAP


def test_the_engine_passes_max_rate_to_a_segmented_download(www, pool):
    root, digest = www
    with ImageServer(root) as first, ImageServer(root) as second:
        write_metalink(root, [first.url("disk.raw"), second.url("disk.raw")], digest)
        result = _download.run(request_for(first.url("disk.raw.meta4"), pool, max_rate="8M", connections=4),
                               open_source)
    assert result["bytes_downloaded"] == SIZE
    assert result["elapsed"] >= SIZE / (8 * MiB) * 0.9, "the cap held (the whole run takes at least the capped time)"


def test_a_connection_below_lowest_speed_is_recycled_and_the_download_resumes(www, pool):
    root, digest = www
    with ImageServer(root) as server:
        server.set_fault("/disk.raw", rate=512 * 1024, times=1)  # the first connection crawls, later ones fly
        logged = []
        request = request_for(server.url("disk.raw"), pool, lowest_speed="1M", lowest_speed_time=2, retries=1)
        result = _download.run(request, open_source, log=logged.append)
        server.wait_idle()
        gets = server.requests_for("/disk.raw", "GET")
    assert result["attempts"] == 2 and len(gets) == 2
    assert result["resumed_from"] > 0 and gets[1].headers["range"] == "bytes=%d-" % result["resumed_from"]
    assert gets[1].headers.get("if-range"), "a resume is conditional on the validators"
    sent = sum(r.bytes_sent for r in gets)
    print("lowest_speed: resumed at byte %d; %d bytes sent in all, %d more than the image"
          % (result["resumed_from"], sent, sent - SIZE))
    # What is lost: the receive buffer being filled when the connection was closed (at most DEFAULT_READ_SIZE)
    # and the bytes in flight. Less than one piece (1 MiB: the unit of a segmented download).
    assert sent - SIZE < DEFAULT_UNIT_SIZE, "less than one extra piece fetched"
    assert any("lowest_speed" in line for line in logged)
    with open(result["path"], "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == digest


def test_a_slow_mirror_is_left_for_another_on_resume(www, pool):
    root, digest = www
    with ImageServer(root) as slow, ImageServer(root) as fast:
        slow.set_fault("/disk.raw", rate=512 * 1024)
        write_metalink(root, [slow.url("disk.raw"), fast.url("disk.raw")], digest)
        request = request_for(slow.url("disk.raw.meta4"), pool, lowest_speed="1M", lowest_speed_time=2, retries=1)
        result = _download.run(request, open_source)
        fast_gets = fast.requests_for("/disk.raw", "GET")
    assert result["attempts"] == 2 and result["resumed_from"] > 0
    assert result["url"] == fast.url("disk.raw")
    assert fast_gets[0].headers["range"] == "bytes=%d-" % result["resumed_from"], "resumed on the other mirror"


def test_a_slow_segment_goes_to_another_mirror(www, pool):
    root, digest = www
    with ImageServer(root) as slow, ImageServer(root) as fast:
        slow.set_fault("/disk.raw", rate=128 * 1024)
        write_metalink(root, [slow.url("disk.raw"), fast.url("disk.raw")], digest)
        request = request_for(slow.url("disk.raw.meta4"), pool, lowest_speed="512K", lowest_speed_time=1,
                              connections=2)
        result = _download.run(request, open_source)
    assert any("lowest_speed" in error["error"] for error in result["mirror_errors"]), result["mirror_errors"]
    with open(result["path"], "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == digest


def test_the_overall_timeout_stops_a_transfer_and_keeps_the_part(www, pool):
    root, _digest = www
    with ImageServer(root) as server:
        server.set_fault("/disk.raw", rate=2 * MiB)
        started = time.monotonic()
        with pytest.raises(SourceError, match="timeout=1.5") as failure:
            _download.run(request_for(server.url("disk.raw"), pool, timeout=1.5, retries=3), open_source)
    assert time.monotonic() - started < 3
    assert failure.value.details["reason"] == "timeout" and failure.value.details["attempts"] == 1
    assert os.path.getsize(pool / ".disk.raw.part") > 0, "the bytes so far stay resumable"


def test_no_limits_means_no_watcher_thread(www, pool):
    """The uncapped path stays the plain pipeline: no dd-watch thread, no pacing."""
    root, _digest = www
    names = set()
    stop = threading.Event()

    def spy():
        while not stop.is_set():
            names.update(thread.name for thread in threading.enumerate())
            time.sleep(0.01)

    watcher = threading.Thread(target=spy, daemon=True)
    watcher.start()
    try:
        with ImageServer(root) as server:
            server.set_fault("/disk.raw", rate=40 * MiB)
            _download.run(request_for(server.url("disk.raw"), pool), open_source)
    finally:
        stop.set()
        watcher.join()
    assert "dd-receive" in names and "dd-watch" not in names
