# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_peer: the fan-out peer server over real TLS on loopback, and the receiver's pinning (_http/_trust)."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _peer
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput, SourceError
from ansible_collections.directdownload.kvm.plugins.module_utils._http import HttpSource, SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._trust import normalize_fingerprint

TOKEN = "peer-token-0123456789abcdef"
SIZE = 3 * 1024 * 1024 + 17


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """An in-process PeerServer on 127.0.0.1 serving ``a.bin`` (and nothing else of its pool)."""

    def __init__(self, tmp_path, max_uploads=4, big=False):
        self.pool = tmp_path / "pool"
        self.pool.mkdir()
        self.data = os.urandom(SIZE)
        (self.pool / "a.bin").write_bytes(self.data)
        (self.pool / "b.bin").write_bytes(b"not served")
        if big:  # large enough that an unread body blocks the upload in sendfile
            with open(self.pool / "big.bin", "wb") as handle:
                handle.truncate(256 * 1024 * 1024)
        files = [str(self.pool / "a.bin")] + ([str(self.pool / "big.bin")] if big else [])
        self.entries = _peer.describe_files(files)
        cert_pem, key_pem, self.fingerprint = _peer.make_certificate("127.0.0.1")
        self.cert, self.key = tmp_path / "cert.pem", tmp_path / "key.pem"
        self.cert.write_bytes(cert_pem)
        self.key.write_bytes(key_pem)
        self.log = tmp_path / "server.log"
        self.server = _peer.PeerServer("127.0.0.1", 0, _peer.entries_from_config({"files": self.entries}), TOKEN,
                                       str(self.cert), str(self.key), max_uploads=max_uploads, log_file=str(self.log))
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name="a.bin"):
        return "https://127.0.0.1:%d/%s" % (self.port, name)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def raw(self, method, path, headers=None, token=TOKEN, read_body=True):
        """One request with a pinned-less context (the test checks the server, not the pin)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=context)
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = "Bearer " + token
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in all_headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read() if read_body else None
        if read_body:
            conn.close()
        return response, body, conn


@pytest.fixture()
def served(tmp_path):
    peer = Served(tmp_path)
    yield peer
    peer.close()


def peer_options(fingerprint, token=TOKEN):
    return SourceOptions.for_peer(SourceOptions(connect_timeout=5, read_timeout=10), token, fingerprint)


def _read_all(body):
    out = bytearray()
    buf = bytearray(256 * 1024)
    while True:
        count = body.readinto(buf)
        if not count:
            return bytes(out)
        out += buf[:count]


# -- serving ------------------------------------------------------------------------------------------------------

def test_whole_file_over_pinned_tls_is_byte_exact(served):
    source = HttpSource(served.url(), peer_options(served.fingerprint))
    with source.open() as body:
        assert body.size == SIZE
        assert body.accept_ranges
        assert _read_all(body) == served.data
    assert served.server.bytes_sent == SIZE


def test_ranges_206_and_content_range(served):
    source = HttpSource(served.url(), peer_options(served.fingerprint))
    with source.open(offset=1000, end=5000) as body:
        assert body.offset == 1000 and body.size == SIZE
        assert _read_all(body) == served.data[1000:5000]
    response, data, _conn = served.raw("GET", "/a.bin", {"Range": "bytes=-10"})
    assert response.status == 206 and data == served.data[-10:]
    assert response.getheader("Content-Range") == "bytes %d-%d/%d" % (SIZE - 10, SIZE - 1, SIZE)
    response, data, _conn = served.raw("GET", "/a.bin", {"Range": "bytes=%d-" % SIZE})
    assert response.status == 416 and response.getheader("Content-Range") == "bytes */%d" % SIZE
    response, data, _conn = served.raw("GET", "/a.bin", {"Range": "bytes=0-1,5-6"})  # several ranges: the whole file
    assert response.status == 200 and data == served.data


def test_etag_if_range_and_head(served):
    response, data, _conn = served.raw("HEAD", "/a.bin")
    assert response.status == 200 and data == b""
    assert response.getheader("Content-Length") == str(SIZE)
    assert response.getheader("Accept-Ranges") == "bytes"
    etag = response.getheader("ETag")
    assert etag and etag.startswith('"')
    response, data, _conn = served.raw("GET", "/a.bin", {"Range": "bytes=10-19", "If-Range": etag})
    assert response.status == 206 and data == served.data[10:20]
    response, data, _conn = served.raw("GET", "/a.bin", {"Range": "bytes=10-19", "If-Range": '"another"'})
    assert response.status == 200 and data == served.data
    # Resume through the source: validators from a first body, then a ranged open with If-Range.
    source = HttpSource(served.url(), peer_options(served.fingerprint))
    with source.open(offset=SIZE - 100, validators={"etag": etag}) as body:
        assert body.offset == SIZE - 100 and _read_all(body) == served.data[-100:]


def test_etag_is_the_verified_digest_when_given(tmp_path):
    peer = Served(tmp_path)
    try:
        digest = hashlib.sha256(peer.data).hexdigest()
        entries = _peer.describe_files([{"path": str(peer.pool / "a.bin"), "name": "t.qcow2", "sha256": digest}])
        assert _peer.entries_from_config({"files": entries})["t.qcow2"].etag == '"sha256:%s"' % digest
    finally:
        peer.close()


@pytest.mark.parametrize("token, status", [(None, 401), ("wrong-token-0123456789abcdef", 403), ("", 403),
                                           (TOKEN.upper(), 403), (TOKEN + "x", 403)])
def test_token_missing_or_wrong(served, token, status):
    response, data, _conn = served.raw("GET", "/a.bin", token=token)
    assert response.status == status
    assert data == b""
    if status == 401:
        assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
    # Unauthenticated clients learn nothing about which files exist.
    response, _data, _conn = served.raw("GET", "/nope.bin", token=token)
    assert response.status == status


@pytest.mark.parametrize("path", ["/b.bin", "/", "/a.bin/", "/../b.bin", "/..%2fb.bin", "/%2e%2e/b.bin", "/%61.bin",
                                  "//a.bin", "/pool/a.bin", "/a.bin/../a.bin", "/./a.bin", "/..", "/%2e%2e%2fetc%2fpasswd",
                                  "/a.bin%00", "/*"])
def test_anything_but_the_allowlist_is_refused(served, path):
    response, data, _conn = served.raw("GET", path)
    assert response.status == 404, path
    assert data == b""


def test_query_string_does_not_change_the_file(served):
    response, data, _conn = served.raw("GET", "/a.bin?x=../b.bin")
    assert response.status == 200 and data == served.data


def test_symlink_swapped_in_is_refused(served):
    target = served.pool / "a.bin"
    os.rename(target, served.pool / "a.orig")
    os.symlink(served.pool / "a.orig", target)  # the same bytes, through a symlink
    response, _data, _conn = served.raw("GET", "/a.bin")
    assert response.status == 410


def test_another_file_renamed_over_is_refused(served):
    replacement = served.pool / "evil"
    replacement.write_bytes(b"x" * SIZE)
    os.rename(replacement, served.pool / "a.bin")
    response, _data, _conn = served.raw("GET", "/a.bin")
    assert response.status == 410
    os.unlink(served.pool / "a.bin")
    response, _data, _conn = served.raw("GET", "/a.bin")
    assert response.status == 410


def test_file_changed_in_place_is_refused(served):
    with open(served.pool / "a.bin", "r+b") as handle:
        handle.write(b"corrupt")
    os.utime(served.pool / "a.bin", ns=(1, 1))
    response, _data, _conn = served.raw("GET", "/a.bin")
    assert response.status == 410


def test_concurrency_cap_answers_503_with_retry_after(tmp_path):
    peer = Served(tmp_path, max_uploads=1, big=True)
    try:
        first, _data, conn = peer.raw("GET", "/big.bin", read_body=False)  # not read: the upload blocks in sendfile
        assert first.status == 200
        time.sleep(0.3)
        response, _data, _conn = peer.raw("GET", "/a.bin")
        assert response.status == 503
        assert response.getheader("Retry-After") == str(_peer.RETRY_AFTER)
        response, _data, _conn = peer.raw("HEAD", "/a.bin")  # HEAD needs no upload slot
        assert response.status == 200
        first.close()
        conn.close()
        deadline = time.time() + 20
        while True:
            response, data, _conn = peer.raw("GET", "/a.bin")
            if response.status == 200 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert response.status == 200 and data == peer.data
    finally:
        peer.close()


def test_no_token_in_the_log(served):
    served.raw("GET", "/a.bin")
    served.raw("GET", "/a.bin", token="wrong-token-0123456789abcdef")
    text = served.log.read_text()
    assert "/a.bin" in text and " 403" in text
    assert TOKEN not in text and "wrong-token" not in text


# -- pinning (receiver side) ---------------------------------------------------------------------------------------

def test_pin_accepts_the_right_fingerprint_in_every_form(served):
    for form in (served.fingerprint, served.fingerprint.replace(":", "").lower(), "sha256:" + served.fingerprint):
        probe = HttpSource(served.url(), peer_options(form)).probe()
        assert probe["status"] == 200 and probe["size"] == SIZE


def test_pin_refuses_another_certificate_before_sending_the_token(served, tmp_path):
    _cert, _key, other = _peer.make_certificate("127.0.0.1")
    before = dict(served.server.statuses)
    with pytest.raises(SourceError) as caught:
        HttpSource(served.url(), peer_options(other)).open()
    assert caught.value.details["reason"] == "tls"
    assert not caught.value.retry_here  # the same peer will not change its certificate; another source may serve
    assert "pinned" in caught.value.msg
    assert TOKEN not in caught.value.msg
    assert served.server.statuses == before  # no request reached the server: the token was never sent


def test_pin_is_not_ca_validation(served):
    """The same server through ordinary CA validation is refused: only the pin makes it trusted."""
    with pytest.raises(SourceError):
        HttpSource(served.url(), SourceOptions(headers={"Authorization": "Bearer " + TOKEN}, trust_dir=None)).open()


def test_peer_options_carry_nothing_of_the_origin(tmp_path):
    base = SourceOptions(headers={"X-Origin-Secret": "s"}, url_username="u", url_password="p", connect_timeout=3,
                         proxy="http://proxy.example:3128")
    options = SourceOptions.for_peer(base, TOKEN, "AA" * 32)
    assert list(options.headers) == ["Authorization"]
    assert options.basic_auth is None and options.proxy == "" and not options.follow_redirects
    assert options.connect_timeout == 3
    assert TOKEN not in repr(options)
    with pytest.raises(InvalidInput):
        SourceOptions.for_peer(base, "", "AA" * 32)
    with pytest.raises(InvalidInput):
        HttpSource("http://127.0.0.1:1/a.bin", options).open()  # a pinned source is https only


@pytest.mark.parametrize("value", ["AB" * 31, "zz" * 32, "", "sha1:" + "ab" * 20])
def test_bad_fingerprints(value):
    with pytest.raises(InvalidInput):
        normalize_fingerprint(value)


def test_parse_range():
    assert _peer.parse_range(None, 10) is None
    assert _peer.parse_range("bytes=0-4", 10) == (0, 4)
    assert _peer.parse_range("bytes=5-", 10) == (5, 9)
    assert _peer.parse_range("bytes=-3", 10) == (7, 9)
    assert _peer.parse_range("bytes=-30", 10) == (0, 9)
    assert _peer.parse_range("bytes=8-100", 10) == (8, 9)
    assert _peer.parse_range("bytes=10-", 10) == "unsatisfiable"
    assert _peer.parse_range("bytes=-0", 10) == "unsatisfiable"
    assert _peer.parse_range("bytes=4-2", 10) is None
    assert _peer.parse_range("items=0-1", 10) is None
    assert _peer.parse_range("bytes=0-1,3-4", 10) is None


def test_describe_files_refuses_symlinks_duplicates_and_bad_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "t.qcow2").write_bytes(b"x")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "t.qcow2").write_bytes(b"y")
    os.symlink(tmp_path / "a" / "t.qcow2", tmp_path / "link.qcow2")
    for files in ([str(tmp_path / "link.qcow2")], [str(tmp_path / "a" / "t.qcow2"), str(tmp_path / "b" / "t.qcow2")],
                  [{"path": str(tmp_path / "a" / "t.qcow2"), "name": "../x"}], ["relative/t.qcow2"], [],
                  [str(tmp_path / "a")], [{"path": str(tmp_path / "a" / "t.qcow2"), "sha256": "12"}]):
        with pytest.raises(_peer.PeerError):
            _peer.describe_files(files)


# -- the daemon: start, stop, lifetime, a server left behind ------------------------------------------------------

def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture()
def state_dir(tmp_path):
    path = tmp_path / "state"
    yield str(path)
    for pid in _peer.find_servers(str(path)) if path.exists() else []:  # never leave a server behind
        os.kill(pid, 9)


def test_start_serve_restart_and_stop(tmp_path, state_dir):
    pool = tmp_path / "pool"
    pool.mkdir()
    data = os.urandom(100000)
    (pool / "t.qcow2").write_bytes(data)
    port = _free_port()
    result = _peer.start(state_dir, "127.0.0.1", port, [str(pool / "t.qcow2")], TOKEN, lifetime=60)
    assert result["changed"] and result["pid"]
    assert result["urls"] == {"t.qcow2": "https://127.0.0.1:%d/t.qcow2" % port}
    pid = result["pid"]
    argv = open("/proc/%d/cmdline" % pid, "rb").read().decode()
    environ = open("/proc/%d/environ" % pid, "rb").read().decode()
    assert TOKEN not in argv and TOKEN not in environ
    assert _peer.SERVER_MARKER in argv
    for name in os.listdir(state_dir):
        mode = os.stat(os.path.join(state_dir, name)).st_mode & 0o777
        assert name == _peer.LOG_FILE or mode == 0o600, name
        if name != _peer.TOKEN_FILE:
            assert TOKEN not in open(os.path.join(state_dir, name), errors="replace").read(), name
    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    with HttpSource(result["urls"]["t.qcow2"], peer_options(result["fingerprint"])).open() as body:
        assert _read_all(body) == data
    # The same deployment again: kept, same certificate.
    again = _peer.start(state_dir, "127.0.0.1", port, [str(pool / "t.qcow2")], TOKEN, lifetime=60)
    assert not again["changed"] and again["pid"] == pid and again["fingerprint"] == result["fingerprint"]
    # Check mode of a new deployment: would change, touches nothing.
    other_token = TOKEN + "-next"
    assert _peer.start(state_dir, "127.0.0.1", port, [str(pool / "t.qcow2")], other_token, check_mode=True)["changed"]
    assert _peer.find_servers(state_dir) == [pid]
    # A new deployment (another token): the old server is stopped, a new one with a new certificate starts.
    new = _peer.start(state_dir, "127.0.0.1", port, [str(pool / "t.qcow2")], other_token, lifetime=60)
    assert new["changed"] and new["stopped"] == [pid] and new["pid"] != pid
    assert new["fingerprint"] != result["fingerprint"]
    with pytest.raises(SourceError):  # the old pin no longer works
        HttpSource(result["urls"]["t.qcow2"], peer_options(result["fingerprint"], other_token)).open()
    stopped = _peer.stop(state_dir)
    assert stopped["changed"] and stopped["stopped"] == [new["pid"]]
    assert not os.path.exists("/proc/%d" % new["pid"]) or not _peer._alive(new["pid"])
    assert not _port_open(port)
    assert not os.path.exists(os.path.join(state_dir, _peer.TOKEN_FILE))
    assert not os.path.exists(os.path.join(state_dir, _peer.KEY_FILE))
    assert not _peer.stop(state_dir)["changed"]


def test_stop_checks_cmdline_before_killing(tmp_path, state_dir):
    os.makedirs(state_dir, mode=0o700)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with open(os.path.join(state_dir, _peer.PID_FILE), "w") as handle:
            handle.write("%d\n" % sleeper.pid)
        result = _peer.stop(state_dir)
        assert result["stopped"] == []
        assert sleeper.poll() is None  # not ours: alive
    finally:
        sleeper.kill()
        sleeper.wait()


def test_server_without_pid_file_is_found_and_stopped(tmp_path, state_dir):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "t.qcow2").write_bytes(b"z" * 1000)
    port = _free_port()
    result = _peer.start(state_dir, "127.0.0.1", port, [str(pool / "t.qcow2")], TOKEN, lifetime=60)
    os.unlink(os.path.join(state_dir, _peer.PID_FILE))  # as if lost
    assert _peer.find_servers(state_dir) == [result["pid"]]
    assert _peer.stop(state_dir)["stopped"] == [result["pid"]]
    assert not _port_open(port)


def test_lifetime_expiry(tmp_path, state_dir):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "t.qcow2").write_bytes(b"z" * 1000)
    port = _free_port()
    result = _peer.start(state_dir, "127.0.0.1", port, [str(pool / "t.qcow2")], TOKEN, lifetime=2)
    assert _port_open(port)
    deadline = time.time() + 15
    while _peer._alive(result["pid"]) and time.time() < deadline:
        time.sleep(0.1)
    assert not _peer._alive(result["pid"])
    assert not _port_open(port)
    assert _peer.find_servers(state_dir) == []
    assert not os.path.exists(os.path.join(state_dir, _peer.PID_FILE))
    assert "stopped" in open(os.path.join(state_dir, _peer.LOG_FILE)).read()


def test_port_in_use_is_an_error(tmp_path, state_dir):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "t.qcow2").write_bytes(b"z")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(_peer.PeerError, match="in use"):
            _peer.start(state_dir, "127.0.0.1", busy.getsockname()[1], [str(pool / "t.qcow2")], TOKEN)


def test_short_token_refused(tmp_path, state_dir):
    with pytest.raises(_peer.PeerError, match="16"):
        _peer.start(state_dir, "127.0.0.1", 1234, ["/etc/hostname"], "short")
