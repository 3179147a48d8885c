# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The shared test servers do what their docstrings promise (checked with the standard library client)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys

import pytest

from ansible_collections.directdownload.kvm.tests.unit.lib import servers
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ForwardProxy, ImageServer
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import (
    TestCA, days_from_now, make_ca_certificate_pem)

SIZE = 300 * 1024


@pytest.fixture()
def data(tmp_path):
    payload = os.urandom(SIZE)
    (tmp_path / "f.bin").write_bytes(payload)
    (tmp_path / "sub").mkdir()
    return tmp_path, payload


@pytest.fixture()
def server(data):
    with ImageServer(data[0]) as srv:
        yield srv


def get(srv, path, method="GET", headers=None, timeout=10, context=None):
    if srv.scheme == "https":
        conn = http.client.HTTPSConnection(srv.host, srv.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    body = b""
    if method != "HEAD":
        try:
            body = response.read()
        except http.client.IncompleteRead as exc:
            body = exc.partial
    conn.close()
    return response, body


def test_full_get_head_and_validators(server, data):
    response, body = get(server, "/f.bin")
    assert response.status == 200 and body == data[1]
    assert response.getheader("Accept-Ranges") == "bytes"
    etag, last_modified = response.getheader("ETag"), response.getheader("Last-Modified")
    assert etag.startswith('"') and last_modified
    head = get(server, "/f.bin", "HEAD")[0]
    assert head.status == 200 and head.getheader("Content-Length") == str(SIZE) and head.getheader("ETag") == etag
    assert [r.method for r in server.requests] == ["GET", "HEAD"]
    assert server.wait_idle()
    assert server.requests[0].bytes_sent == SIZE and server.requests[0].status == 200


@pytest.mark.parametrize("spec,start,end", [("bytes=100-", 100, SIZE), ("bytes=5-9", 5, 10), ("bytes=-10", SIZE - 10, SIZE)])
def test_ranges(server, data, spec, start, end):
    response, body = get(server, "/f.bin", headers={"Range": spec})
    assert response.status == 206
    assert response.getheader("Content-Range") == "bytes %d-%d/%d" % (start, end - 1, SIZE)
    assert body == data[1][start:end]


def test_range_past_end_is_416(server):
    response = get(server, "/f.bin", headers={"Range": "bytes=%d-" % SIZE})[0]
    assert response.status == 416 and response.getheader("Content-Range") == "bytes */%d" % SIZE


def test_if_range(server, data):
    etag = get(server, "/f.bin", "HEAD")[0].getheader("ETag")
    match, body = get(server, "/f.bin", headers={"Range": "bytes=10-", "If-Range": etag})
    assert match.status == 206 and body == data[1][10:]
    mismatch, body = get(server, "/f.bin", headers={"Range": "bytes=10-", "If-Range": '"other"'})
    assert mismatch.status == 200 and body == data[1]


def test_hostile_range_answers(server, data):
    """ignore_if_range: a 206 whatever If-Range says (a broken proxy); range_start: a 206 for other bytes."""
    server.set_fault("/f.bin", ignore_if_range=True)
    answer, body = get(server, "/f.bin", headers={"Range": "bytes=10-", "If-Range": '"other"'})
    assert answer.status == 206 and body == data[1][10:]
    server.set_fault("/f.bin", range_start=0)
    answer, body = get(server, "/f.bin", headers={"Range": "bytes=10-"})
    assert answer.status == 206 and answer.getheader("Content-Range") == "bytes 0-%d/%d" % (SIZE - 1, SIZE)
    assert body == data[1]


def test_not_found_and_escape(server):
    assert get(server, "/missing")[0].status == 404
    assert get(server, "/sub")[0].status == 404
    assert get(server, "/../../etc/passwd")[0].status == 404


def test_keep_alive(server, data):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    for _round in range(3):
        conn.request("GET", "/f.bin")
        assert conn.getresponse().read() == data[1]
    conn.close()
    assert len({r.client for r in server.requests}) == 1


def test_status_times_then_ok(server, data):
    server.set_fault("f.bin", status=500, times=2)
    assert [get(server, "/f.bin")[0].status for _round in range(3)] == [500, 500, 200]


def test_status_with_retry_after_and_arrival_times(server):
    server.set_fault("f.bin", status=503, times=1, headers={"Retry-After": "2"})
    response, _body = get(server, "/f.bin")
    assert response.status == 503 and response.getheader("Retry-After") == "2"
    assert get(server, "/f.bin")[0].status == 200
    first, second = server.requests
    assert first.time <= second.time


def test_fault_for_one_method(server):
    server.set_fault("/f.bin", status=405, method="HEAD")
    assert get(server, "/f.bin", "HEAD")[0].status == 405
    assert get(server, "/f.bin")[0].status == 200


def test_truncate_announces_full_length(server, data):
    server.set_fault("/f.bin", truncate_at=1000, times=1)
    response, body = get(server, "/f.bin")
    assert response.getheader("Content-Length") == str(SIZE) and body == data[1][:1000]
    response, body = get(server, "/f.bin", headers={"Range": "bytes=1000-"})
    assert response.status == 206 and body == data[1][1000:]


def test_stall_then_client_timeout(server):
    server.set_fault("/f.bin", stall_at=4096, stall_seconds=30)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=0.5)
    conn.request("GET", "/f.bin")
    response = conn.getresponse()
    assert len(response.read(4096)) == 4096
    with pytest.raises(socket.timeout):
        response.read(1)
    conn.close()


def test_short_stall_continues(server, data):
    server.set_fault("/f.bin", stall_at=0, stall_seconds=0.05)
    assert get(server, "/f.bin")[1] == data[1]


def test_corrupt_flips_one_byte(server, data):
    server.set_fault("/f.bin", corrupt_at=12345)
    body = get(server, "/f.bin")[1]
    assert len(body) == SIZE and body != data[1]
    assert body[12345] == data[1][12345] ^ 0xFF and body[:12345] == data[1][:12345]
    assert get(server, "/f.bin", headers={"Range": "bytes=12340-12349"})[1][5] == data[1][12345] ^ 0xFF


def test_rate_limited_body_is_complete(server, data):
    server.set_fault("/f.bin", rate=10 * SIZE)
    assert get(server, "/f.bin")[1] == data[1]


def test_no_range_etag_override_and_validators(server, data):
    server.set_fault("/f.bin", no_range=True, etag='"changed"')
    response, body = get(server, "/f.bin", headers={"Range": "bytes=10-"})
    assert response.status == 200 and body == data[1] and response.getheader("Accept-Ranges") is None
    assert response.getheader("ETag") == '"changed"'
    server.set_fault("/f.bin", no_validators=True)
    response = get(server, "/f.bin", "HEAD")[0]
    assert response.getheader("ETag") is None and response.getheader("Last-Modified") is None


def test_redirect_require_headers_content_type(server):
    server.set_fault("/old", redirect_to="/f.bin", redirect_status=301)
    response = get(server, "/old")[0]
    assert response.status == 301 and response.getheader("Location") == "/f.bin"
    server.set_fault("/f.bin", require_headers={"X-Token": "s3cret"}, content_type="application/x-test")
    assert get(server, "/f.bin")[0].status == 401
    response = get(server, "/f.bin", headers={"X-Token": "s3cret"})[0]
    assert response.status == 200 and response.getheader("Content-Type") == "application/x-test"
    assert "s3cret" not in repr(server.requests)


def test_refuse_closes_without_answer(server):
    server.set_fault("/f.bin", refuse=True, times=1)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        get(server, "/f.bin")
    assert get(server, "/f.bin")[0].status == 200


def test_no_length_and_chunked(server, data):
    server.set_fault("/f.bin", no_length=True)
    response, body = get(server, "/f.bin")
    assert response.getheader("Content-Length") is None and body == data[1]
    server.set_fault("/f.bin", chunked=True)
    response, body = get(server, "/f.bin")
    assert response.getheader("Transfer-Encoding") == "chunked" and body == data[1]


def test_wildcard_fault(server):
    server.set_fault("*", status=503)
    assert get(server, "/f.bin")[0].status == 503
    server.clear_faults()
    assert get(server, "/f.bin")[0].status == 200


def test_https_and_client_certificates(data, tmp_path):
    ca = TestCA()
    client = ssl.create_default_context(cadata=ca.cert_pem)
    with ImageServer(data[0], ssl_context=ca.server_context()) as srv:
        assert srv.url("f.bin").startswith("https://127.0.0.1:")
        assert get(srv, "/f.bin", context=client)[1] == data[1]
    with ImageServer(data[0], ssl_context=ca.server_context(require_client_cert=True)) as srv:
        cert, key = ca.client_cert_files(tmp_path)
        client.load_cert_chain(cert, key)
        assert get(srv, "/f.bin", context=client)[1] == data[1]


def test_wrong_host_certificate(data):
    ca = TestCA()
    with ImageServer(data[0], ssl_context=ca.server_context(hostnames=("wrong.example",))) as srv:
        with pytest.raises(ssl.SSLCertVerificationError):
            get(srv, "/f.bin", context=ssl.create_default_context(cadata=ca.cert_pem))


def test_intermediate_ca_chain(data):
    root = TestCA(common_name="root")
    intermediate = TestCA(common_name="intermediate", parent=root)
    with ImageServer(data[0], ssl_context=intermediate.server_context()) as srv:
        assert get(srv, "/f.bin", context=ssl.create_default_context(cadata=root.cert_pem))[0].status == 200


def test_expired_ca_pem():
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(make_ca_certificate_pem(not_after=days_from_now(-1)).encode())
    assert cert.not_valid_after_utc < days_from_now(0)
    assert TestCA(not_before=days_from_now(2)).cert.not_valid_before_utc > days_from_now(1)


def test_forward_proxy_plain_and_connect(data):
    ca = TestCA()
    with ImageServer(data[0]) as srv, ImageServer(data[0], ssl_context=ca.server_context()) as tls_srv, \
            ForwardProxy(require_auth="Basic dTpw") as proxy:
        conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
        conn.request("GET", srv.url("f.bin"), headers={"Proxy-Authorization": "Basic dTpw"})
        assert conn.getresponse().read() == data[1]
        conn.close()
        conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=10,
                                           context=ssl.create_default_context(cadata=ca.cert_pem))
        conn.set_tunnel(tls_srv.host, tls_srv.port, headers={"Proxy-Authorization": "Basic dTpw"})
        conn.request("GET", "/f.bin")
        assert conn.getresponse().read() == data[1]
        conn.close()
        conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
        conn.request("GET", srv.url("f.bin"))
        assert conn.getresponse().status == 407
        conn.close()
        assert [r.method for r in proxy.requests] == ["GET", "CONNECT", "GET"]


def test_close_ends_stalled_transfers(data):
    srv = ImageServer(data[0])
    srv.set_fault("/f.bin", stall_at=100)
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    conn.request("GET", "/f.bin")
    response = conn.getresponse()
    srv.close()  # returns although a handler is stalled, and ends that connection
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    conn.close()


def test_cli_serves_and_stops_on_sigterm(data):
    process = subprocess.Popen(
        # By file path: servers.py is standard library only, and ansible-test does not export PYTHONPATH.
        [sys.executable, servers.__file__, "--root",
         str(data[0]), "--faults", '{"/f.bin": {"status": 503, "times": 1}}'],
        stdout=subprocess.PIPE, text=True)
    try:
        base = process.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:")
        host, port = base[len("http://"):].rstrip("/").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/f.bin")
        assert conn.getresponse().status == 503
        conn.close()
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/f.bin")
        assert conn.getresponse().read() == data[1]
        conn.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
