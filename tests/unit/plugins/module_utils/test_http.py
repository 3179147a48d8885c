# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_http: the HTTP(S) source against real loopback servers (tests/unit/lib/servers.py), TLS from a test CA."""

from __future__ import annotations

import base64
import os
import socket
import threading

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    HTTPStatusError, InvalidInput, SourceError)
from ansible_collections.directdownload.kvm.plugins.module_utils._http import (
    DEFAULT_USER_AGENT, HttpSource, SourceOptions, if_range_value)
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ForwardProxy, ImageServer
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA

SIZE = 1024 * 1024 + 123
SECRET = "s3cr3t-header-value"


# pool, www, server and ca: tests/unit/conftest.py


@pytest.fixture(autouse=True)
def data(www):
    """What every test's server serves: ``f.bin``, random bytes."""
    payload = os.urandom(SIZE)
    (www / "f.bin").write_bytes(payload)
    return payload


@pytest.fixture(params=["http", "https"])
def any_server(request, www, data, ca, tmp_path):
    """The same server over HTTP and over HTTPS (with options that trust the CA)."""
    context = ca.server_context() if request.param == "https" else None
    with ImageServer(www, ssl_context=context) as srv:
        srv.options = SourceOptions(ca_path=ca.ca_pem_path(tmp_path), trust_dir=None)
        yield srv


def opts(**kwargs):
    kwargs.setdefault("trust_dir", None)
    kwargs.setdefault("proxy", "")
    return SourceOptions(**kwargs)


def read_all(body, block=64 * 1024):
    out = bytearray()
    buf = bytearray(block)
    while True:
        count = body.readinto(buf)
        if not count:
            return bytes(out)
        out += buf[:count]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CannedServer:
    """Answers every connection with fixed bytes: for answers ImageServer never gives (a lying 206...)."""

    def __init__(self, answer, delay=0.0):
        self.answer = answer
        self.delay = delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.05)  # accept() wakes up to notice close()
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn:
                conn.recv(65536)
                if self.stop.wait(self.delay):
                    return
                try:
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def url(self, path="f.bin"):
        return "http://127.0.0.1:%d/%s" % (self.port, path)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# -- whole and ranged bodies ------------------------------------------------------------------------------------


def test_full_get(any_server, data):
    body = HttpSource(any_server.url("f.bin"), any_server.options).open()
    assert (body.offset, body.size, body.status, body.accept_ranges) == (0, SIZE, 200, True)
    assert body.validators["etag"] and body.validators["last_modified"]
    assert body.content_type == "application/octet-stream" and body.url == any_server.url("f.bin")
    assert read_all(body) == data
    assert body.readinto(bytearray(10)) == 0
    request = any_server.requests[-1]
    assert request.headers["user-agent"] == DEFAULT_USER_AGENT and "range" not in request.headers
    assert request.headers["accept-encoding"] == "identity"


def test_readinto_fills_the_whole_buffer(server, data):
    with HttpSource(server.url("f.bin"), opts()).open() as body:
        buf = bytearray(256 * 1024)
        assert body.readinto(buf) == len(buf) and bytes(buf) == data[:len(buf)]


def test_resume_with_if_range_match(any_server, data):
    source = HttpSource(any_server.url("f.bin"), any_server.options)
    first = source.open()
    first.close()
    body = source.open(offset=1000, validators=first.validators)
    assert (body.status, body.offset, body.size) == (206, 1000, SIZE)
    assert read_all(body) == data[1000:]
    request = any_server.requests[-1]
    assert request.headers["range"] == "bytes=1000-" and request.headers["if-range"] == first.validators["etag"]


def test_if_range_uses_last_modified_for_weak_etags():
    assert if_range_value({"etag": '"x"', "last_modified": "date"}) == '"x"'
    assert if_range_value({"etag": 'W/"x"', "last_modified": "date"}) == "date"
    assert if_range_value({"etag": None, "last_modified": None}) is None
    assert if_range_value(None) is None


def test_if_range_mismatch_restarts(server, data):
    source = HttpSource(server.url("f.bin"), opts())
    body = source.open(offset=1000, validators={"etag": '"old"', "last_modified": None})
    assert (body.status, body.offset, body.size) == (200, 0, SIZE)
    assert read_all(body) == data


def test_no_range_server_restarts(server, data):
    server.set_fault("/f.bin", no_range=True)
    body = HttpSource(server.url("f.bin"), opts()).open(offset=500)
    assert (body.offset, body.accept_ranges) == (0, False)
    assert read_all(body) == data


def test_segment(server, data):
    source = HttpSource(server.url("f.bin"), opts())
    body = source.open(offset=10, end=20)
    assert (body.offset, body.size) == (10, SIZE) and read_all(body) == data[10:20]
    assert server.requests[-1].headers["range"] == "bytes=10-19"
    body = source.open(offset=0, end=SIZE)  # a 206 for the whole file is fine too
    assert read_all(body) == data


def test_segment_refused_without_range_support(server):
    server.set_fault("/f.bin", no_range=True)
    with pytest.raises(SourceError) as info:
        HttpSource(server.url("f.bin"), opts()).open(offset=10, end=20)
    assert info.value.details["reason"] == "no_range" and (info.value.retry_here, info.value.retry_elsewhere) == (False, False)


def test_range_past_the_end_is_416(server):
    with pytest.raises(HTTPStatusError) as info:
        HttpSource(server.url("f.bin"), opts()).open(offset=SIZE + 5)
    assert info.value.status == 416 and (info.value.retry_here, info.value.retry_elsewhere) == (True, True)


def test_wrong_content_range_start():
    answer = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/100\r\nContent-Length: 10\r\n"
              b"Connection: close\r\n\r\n0123456789")
    with CannedServer(answer) as canned:
        with pytest.raises(SourceError, match="sent bytes 0-9 instead of 50-99") as info:
            HttpSource(canned.url(), opts()).open(offset=50)
    assert info.value.details["reason"] == "bad_range"


def test_short_range_for_an_open_ended_request():
    answer = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 50-59/100\r\nContent-Length: 10\r\n"
              b"Connection: close\r\n\r\n0123456789")
    with CannedServer(answer) as canned:
        with pytest.raises(SourceError, match="instead of 50-99"):
            HttpSource(canned.url(), opts()).open(offset=50)


def test_no_length_and_chunked_bodies(server, data):
    server.set_fault("/f.bin", no_length=True)
    body = HttpSource(server.url("f.bin"), opts()).open()
    assert body.size is None and read_all(body) == data
    server.set_fault("/f.bin", chunked=True)
    body = HttpSource(server.url("f.bin"), opts()).open()
    assert body.size is None and read_all(body) == data


# -- failures ---------------------------------------------------------------------------------------------------


def test_truncated_body(any_server, data):
    any_server.set_fault("/f.bin", truncate_at=300000)
    body = HttpSource(any_server.url("f.bin"), any_server.options).open()
    with pytest.raises(SourceError, match="truncated") as info:
        read_all(body)
    assert (info.value.retry_here, info.value.retry_elsewhere) == (True, True) and info.value.details["reason"] == "truncated"
    assert "300000 of %d" % SIZE in info.value.msg


def test_truncated_chunked_body(server):
    server.set_fault("/f.bin", truncate_at=300000, chunked=True)
    with pytest.raises(SourceError, match="truncated"):
        read_all(HttpSource(server.url("f.bin"), opts()).open())


def test_stall_gives_read_timeout(server):
    server.set_fault("/f.bin", stall_at=200000, stall_seconds=30)
    # The open is inside the check too: on a loaded machine the answer's headers may be what outlasts the timeout.
    with pytest.raises(SourceError, match="read_timeout") as info:
        read_all(HttpSource(server.url("f.bin"), opts(read_timeout=1.0)).open())
    assert (info.value.retry_here, info.value.retry_elsewhere) == (True, True) and info.value.details["reason"] == "read_timeout"


def test_no_answer_gives_read_timeout():
    with CannedServer(b"HTTP/1.1 200 OK\r\n\r\n", delay=30) as canned:
        with pytest.raises(SourceError, match="read_timeout"):
            HttpSource(canned.url(), opts(read_timeout=0.3)).open()


@pytest.mark.parametrize("status,temporary", [(500, True), (503, True), (429, True), (408, True), (404, False),
                                              (403, False)])
def test_status_errors(server, status, temporary):
    server.set_fault("/f.bin", status=status, headers={"Retry-After": "7"})
    with pytest.raises(HTTPStatusError) as info:
        HttpSource(server.url("f.bin") + "?sig=topsecret", opts()).open()
    assert info.value.status == status and (info.value.retry_here, info.value.retry_elsewhere) == (temporary, temporary)
    assert "HTTP %d" % status in info.value.msg and "topsecret" not in info.value.msg
    assert info.value.details["retry_after"] == 7


def test_500_then_ok(server, data):
    server.set_fault("/f.bin", status=500, times=1)
    source = HttpSource(server.url("f.bin"), opts())
    with pytest.raises(HTTPStatusError):
        source.open()
    assert read_all(source.open()) == data


def test_connection_refused():
    with pytest.raises(SourceError, match="connection refused") as info:
        HttpSource("http://127.0.0.1:%d/x" % free_port(), opts()).open()
    assert (info.value.retry_here, info.value.retry_elsewhere) == (True, True) and info.value.details["reason"] == "refused"


def test_server_closes_without_answer(server):
    server.set_fault("/f.bin", refuse=True)
    with pytest.raises(SourceError) as info:
        HttpSource(server.url("f.bin"), opts()).open()
    assert info.value.details["reason"] == "connection"


def test_unknown_host():
    with pytest.raises(SourceError, match="cannot resolve") as info:
        HttpSource("http://nonexistent.invalid/x", opts()).probe()
    assert info.value.details["reason"] == "dns"


# -- headers and secrets ----------------------------------------------------------------------------------------


def test_headers_sent_and_never_shown(server, data):
    server.set_fault("/f.bin", require_headers={"X-Token": SECRET})
    with pytest.raises(HTTPStatusError) as info:
        HttpSource(server.url("f.bin"), opts()).open()
    assert info.value.status == 401 and "credentials" in info.value.msg
    options = opts(headers={"X-Token": SECRET, "User-Agent": "custom/1"})
    assert read_all(HttpSource(server.url("f.bin"), options).open()) == data
    assert server.requests[-1].headers["user-agent"] == "custom/1"
    assert SECRET not in repr(options) and "X-Token" in repr(options)


def test_url_credentials_become_basic_auth(server, data):
    expected = "Basic " + base64.b64encode(b"user:p@ss").decode()
    server.set_fault("/f.bin", require_headers={"Authorization": expected})
    url = "http://user:p%%40ss@127.0.0.1:%d/f.bin" % server.port
    source = HttpSource(url, opts())
    assert read_all(source.open()) == data
    assert "p%40ss" not in repr(source)


def _basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def test_url_username_password_after_a_401_challenge(server, data):
    """get_url's url_username/url_password without force_basic_auth: the first request carries no credentials,
    the 401 answer brings them, and later requests to the same server send them at once."""
    server.set_fault("/f.bin", require_headers={"Authorization": _basic("ops", SECRET)})
    source = HttpSource(server.url("f.bin"), opts(url_username="ops", url_password=SECRET))
    assert read_all(source.open()) == data
    first, second = server.requests_for("/f.bin")
    assert "authorization" not in first.headers and first.status == 401
    assert second.headers["authorization"] == _basic("ops", SECRET) and second.status == 200
    server.clear_requests()
    assert read_all(source.open(offset=10)) == data[10:]
    assert [r.status for r in server.requests_for("/f.bin")] == [206]
    assert SECRET not in repr(source) and SECRET not in repr(source.options)


def test_force_basic_auth_sends_credentials_with_the_first_request(server, data):
    server.set_fault("/f.bin", require_headers={"Authorization": _basic("ops", SECRET)})
    source = HttpSource(server.url("f.bin"), opts(url_username="ops", url_password=SECRET, force_basic_auth=True))
    assert source.probe()["status"] == 200
    assert [r.headers.get("authorization") for r in server.requests_for("/f.bin")] == [_basic("ops", SECRET)]


def test_url_username_wins_over_url_credentials_and_wrong_ones_fail_clearly(server, data):
    server.set_fault("/f.bin", require_headers={"Authorization": _basic("ops", SECRET)})
    url = "http://other:pw@127.0.0.1:%d/f.bin" % server.port
    assert read_all(HttpSource(url, opts(url_username="ops", url_password=SECRET)).open()) == data
    with pytest.raises(HTTPStatusError, match="401.*check the credentials") as info:
        HttpSource(server.url("f.bin"), opts(url_username="ops", url_password="wrong")).open()
    assert "wrong" not in info.value.msg


def test_url_credentials_never_follow_a_redirect_to_another_host(www, data):
    with ImageServer(www) as first, ImageServer(www) as second:
        first.set_fault("/away", redirect_to=second.url("f.bin"))
        second.set_fault("/f.bin", require_headers={"Authorization": _basic("ops", SECRET)})
        for force in (True, False):
            options = opts(follow_redirects=True, url_username="ops", url_password=SECRET, force_basic_auth=force)
            with pytest.raises(HTTPStatusError, match="401"):
                HttpSource(first.url("away"), options).open()
        assert all("authorization" not in r.headers for r in second.requests_for("/f.bin"))
        assert first.requests_for("/away")[0].headers["authorization"] == _basic("ops", SECRET)


@pytest.mark.parametrize("headers,words", [
    ({"X-Bad": "a\r\nInjected: 1"}, "line break"),
    ({"Bad Name": "x"}, "not a valid HTTP header name"),
    ({"Authorization: Bearer Injected": ""}, "'Authorization'"),
    ({"Range": "bytes=0-"}, "controls it"),
    ({"X-None": None}, "no value"),
    ({"Host": "other.example"}, "Host cannot be given: it comes from the URL"),
    ({"host": "other.example"}, "Host cannot be given"),
])
def test_bad_headers(headers, words):
    with pytest.raises(InvalidInput, match=words) as info:
        SourceOptions(headers=headers)
    assert "Injected" not in info.value.msg


@pytest.mark.parametrize("url,words", [("ftp://h/x", "not an http"), ("http:///x", "no host"),
                                       ("http://h/a b", "spaces"), ("http://h:99999/x", "cannot parse")])
def test_bad_urls(url, words):
    with pytest.raises(InvalidInput, match=words):
        HttpSource(url, opts())


def test_bad_options():
    with pytest.raises(InvalidInput, match="read_timeout"):
        SourceOptions(read_timeout=0)
    with pytest.raises(InvalidInput, match="only http:// proxies"):
        SourceOptions(proxy="socks5://127.0.0.1:1080")


def test_from_params_uses_settings():
    options = SourceOptions.from_params({"headers": {"A": "b"}, "read_timeout": None, "follow_redirects": True},
                                        {"read_timeout": 7, "connect_timeout": 3, "trust_dir": "/x"})
    assert (options.read_timeout, options.connect_timeout, options.trust_dir) == (7, 3, "/x")
    assert options.follow_redirects and options.headers == {"A": "b"}


# -- redirects --------------------------------------------------------------------------------------------------


def test_redirect_followed_relative_location(server, data):
    server.set_fault("/old/f.bin", redirect_to="../f.bin", redirect_status=301)
    source = HttpSource(server.url("old/f.bin"), opts(follow_redirects=True))
    body = source.open()
    assert body.url == server.url("f.bin") and read_all(body) == data
    assert source.probe()["final_url"] == server.url("f.bin")


def test_redirect_refused_when_not_allowed(server):
    server.set_fault("/old", redirect_to="/f.bin")
    with pytest.raises(HTTPStatusError, match="follow_redirects is off") as info:
        HttpSource(server.url("old"), opts()).open()
    assert info.value.status == 302 and (info.value.retry_here, info.value.retry_elsewhere) == (False, False)


def test_too_many_redirects(server):
    server.set_fault("/loop", redirect_to="/loop")
    with pytest.raises(SourceError, match="too many redirects") as info:
        HttpSource(server.url("loop"), opts(follow_redirects=True)).open()
    assert (info.value.retry_here, info.value.retry_elsewhere) == (False, False) and len(server.requests_for("/loop")) == 11
    server.clear_requests()
    with pytest.raises(SourceError, match="more than 2"):
        HttpSource(server.url("loop"), opts(follow_redirects=True, max_redirects=2)).open()
    assert len(server.requests_for("/loop")) == 3


def test_https_to_http_refused(www, data, ca, tmp_path):
    with ImageServer(www) as plain, ImageServer(www, ssl_context=ca.server_context()) as secure:
        secure.set_fault("/f.bin", redirect_to=plain.url("f.bin"))
        options = opts(follow_redirects=True, ca_path=ca.ca_pem_path(tmp_path))
        with pytest.raises(SourceError, match="must not downgrade") as info:
            HttpSource(secure.url("f.bin"), options).open()
        assert (info.value.retry_here, info.value.retry_elsewhere) == (False, False) and plain.requests == []
        plain.set_fault("/up", redirect_to=secure.url("f.bin"))  # the other way is fine
        secure.clear_faults()
        assert read_all(HttpSource(plain.url("up"), options).open()) == data


def test_credentials_not_forwarded_to_another_host(www, data):
    with ImageServer(www) as first, ImageServer(www) as second:
        first.set_fault("/same", redirect_to="/f.bin")
        first.set_fault("/away", redirect_to=second.url("f.bin"))
        headers = {"Authorization": "Bearer " + SECRET, "Cookie": "c=" + SECRET, "X-Mirror": "kept"}
        options = opts(follow_redirects=True, headers=headers)
        assert read_all(HttpSource(first.url("same"), options).open()) == data
        same = first.requests_for("/f.bin")[-1].headers
        assert same["authorization"] == "Bearer " + SECRET and same["cookie"] == "c=" + SECRET
        assert read_all(HttpSource(first.url("away"), options).open()) == data
        away = second.requests_for("/f.bin")[-1].headers
        assert "authorization" not in away and "cookie" not in away and "x-mirror" not in away
        url = "http://u:p@127.0.0.1:%d/away" % first.port
        read_all(HttpSource(url, options).open())
        assert "authorization" not in second.requests_for("/f.bin")[-1].headers


@pytest.mark.parametrize("name", ["X-Vault-Token", "X-Goog-Signature", "Api-Token", "X-JFrog-Art-Api", "X-Custom"])
def test_no_user_header_reaches_another_origin(www, data, name):
    """Any header may be a credential (the docs call every value a secret): after a redirect to another origin
    (here: another port of the same address) none is sent, unless headers_on_redirect names it."""
    with ImageServer(www) as first, ImageServer(www) as second:
        first.set_fault("/away", redirect_to=second.url("f.bin"))
        headers = {name: SECRET, "X-Mirror-Key": "public", "Authorization": "Bearer " + SECRET}
        assert read_all(HttpSource(first.url("away"), opts(follow_redirects=True, headers=headers)).open()) == data
        assert first.requests_for("/away")[-1].headers[name.lower()] == SECRET
        got = second.requests_for("/f.bin")[-1].headers
        assert name.lower() not in got and "x-mirror-key" not in got and "authorization" not in got
        assert SECRET not in repr(got) and SECRET not in " ".join(got.values())

        allowed = opts(follow_redirects=True, headers=headers, headers_on_redirect=["x-mirror-key"])
        assert read_all(HttpSource(first.url("away"), allowed).open()) == data
        got = second.requests_for("/f.bin")[-1].headers
        assert got["x-mirror-key"] == "public" and name.lower() not in got and "authorization" not in got


def test_headers_on_redirect_cannot_name_credentials():
    with pytest.raises(InvalidInput, match="cannot name Authorization"):
        SourceOptions(headers_on_redirect=["Authorization"])
    with pytest.raises(InvalidInput, match="not a valid HTTP header name"):
        SourceOptions(headers_on_redirect=["Bad Name"])
    assert SourceOptions.from_params({"headers_on_redirect": ["X-A"]}).headers_on_redirect == {"x-a"}


# -- TLS --------------------------------------------------------------------------------------------------------


def test_wrong_host_certificate_refused_even_with_ca_trusted(www, data, ca, tmp_path):
    with ImageServer(www, ssl_context=ca.server_context(hostnames=("wrong.example",))) as srv:
        with pytest.raises(SourceError, match="host name mismatch") as info:
            HttpSource(srv.url("f.bin"), opts(ca_path=ca.ca_pem_path(tmp_path))).open()
        assert not info.value.retry_here and info.value.retry_elsewhere and info.value.details["reason"] == "tls"


def test_untrusted_ca_refused_with_help(www, data):
    with ImageServer(www, ssl_context=TestCA().server_context()) as srv:
        with pytest.raises(SourceError) as info:
            HttpSource(srv.url("f.bin"), opts()).probe()
        assert "not trusted" in info.value.msg and "directdownload.kvm.certificate" in info.value.msg
        assert not info.value.retry_here and info.value.retry_elsewhere, "another host may trust the CA"
        body = HttpSource(srv.url("f.bin"), opts(validate_certs=False)).open()
        assert read_all(body) == data


def test_ca_path_directory_and_trust_dir(www, data, ca, tmp_path):
    cas = tmp_path / "cas"
    cas.mkdir()
    ca.ca_pem_path(cas)
    with ImageServer(www, ssl_context=ca.server_context(hostnames=("localhost",))) as srv:
        url = srv.url("f.bin", host="localhost")
        assert read_all(HttpSource(url, opts(ca_path=str(cas))).open()) == data
        assert read_all(HttpSource(url, opts(trust_dir=str(cas))).open()) == data


def test_client_certificate_required(www, data, ca, tmp_path):
    cert, key = ca.client_cert_files(tmp_path)
    trust = ca.ca_pem_path(tmp_path)
    with ImageServer(www, ssl_context=ca.server_context(require_client_cert=True)) as srv:
        with pytest.raises(SourceError, match="client certificate"):
            HttpSource(srv.url("f.bin"), opts(ca_path=trust)).open()
        source = HttpSource(srv.url("f.bin"), opts(ca_path=trust, client_cert=cert, client_key=key))
        assert read_all(source.open()) == data


def test_https_port_speaking_plain_http(server):
    with pytest.raises(SourceError, match="plain http"):
        HttpSource(server.url("f.bin", scheme="https"), opts()).open()


def test_bad_trust_material_is_invalid_input_only_for_https(server, data, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("nothing here")
    options = opts(ca_path=str(bad))
    assert read_all(HttpSource(server.url("f.bin"), options).open()) == data
    with pytest.raises(InvalidInput, match="bad.pem"):
        HttpSource(server.url("f.bin", scheme="https"), options).open()


# -- proxies ----------------------------------------------------------------------------------------------------


def _proxy_env(monkeypatch, proxy_url, no_proxy=""):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy_url)
    monkeypatch.setenv("https_proxy", proxy_url)
    monkeypatch.setenv("no_proxy", no_proxy)


def test_proxy_from_environment(monkeypatch, server, data):
    with ForwardProxy(require_auth="Basic " + base64.b64encode(b"pu:pp").decode()) as proxy:
        _proxy_env(monkeypatch, "http://pu:pp@127.0.0.1:%d" % proxy.port)
        source = HttpSource(server.url("f.bin"), SourceOptions(trust_dir=None))
        assert read_all(source.open(offset=7)) == data[7:]
        assert proxy.requests[-1].path == server.url("f.bin")
        assert source.probe()["size"] == SIZE


def test_proxy_bypassed_by_no_proxy(monkeypatch, server, data):
    with ForwardProxy() as proxy:
        _proxy_env(monkeypatch, proxy.proxy_url, no_proxy="127.0.0.1")
        assert read_all(HttpSource(server.url("f.bin"), SourceOptions(trust_dir=None)).open()) == data
        assert proxy.requests == []


def test_https_through_proxy_tunnel(monkeypatch, www, data, ca, tmp_path):
    with ForwardProxy() as proxy, ImageServer(www, ssl_context=ca.server_context()) as srv:
        _proxy_env(monkeypatch, proxy.proxy_url)
        options = SourceOptions(ca_path=ca.ca_pem_path(tmp_path), trust_dir=None)
        assert read_all(HttpSource(srv.url("f.bin"), options).open()) == data
        assert proxy.requests[-1].method == "CONNECT"


def test_proxy_refusing_auth(monkeypatch, server):
    with ForwardProxy(require_auth="Basic eDp5") as proxy:
        with pytest.raises(HTTPStatusError) as info:
            HttpSource(server.url("f.bin"), opts(proxy=proxy.proxy_url)).open()
        assert info.value.status == 407


def test_explicit_empty_proxy_ignores_environment(monkeypatch, server, data):
    _proxy_env(monkeypatch, "http://127.0.0.1:%d" % free_port())
    assert read_all(HttpSource(server.url("f.bin"), opts(proxy="")).open()) == data


# -- probe and read_head ----------------------------------------------------------------------------------------


def test_probe_head(any_server):
    info = HttpSource(any_server.url("f.bin"), any_server.options).probe()
    assert (info["status"], info["size"], info["accept_ranges"]) == (200, SIZE, True)
    assert info["final_url"] == any_server.url("f.bin") and info["validators"]["etag"]
    assert [r.method for r in any_server.requests] == ["HEAD"]


def test_probe_falls_back_to_ranged_get(server):
    server.set_fault("/f.bin", status=405, method="HEAD")
    info = HttpSource(server.url("f.bin"), opts()).probe()
    assert (info["status"], info["size"], info["accept_ranges"]) == (206, SIZE, True)
    assert [(r.method, r.headers.get("range")) for r in server.requests] == [("HEAD", None), ("GET", "bytes=0-0")]


def test_probe_falls_back_when_head_gets_no_answer(server):
    server.set_fault("/f.bin", refuse=True, method="HEAD")
    info = HttpSource(server.url("f.bin"), opts()).probe()
    assert (info["status"], info["size"]) == (206, SIZE)


def test_probe_fallback_without_range_support(server):
    server.set_fault("/f.bin", status=403, method="HEAD")
    server.set_fault("*", no_range=True)
    info = HttpSource(server.url("f.bin"), opts()).probe()
    assert (info["status"], info["size"], info["accept_ranges"]) == (200, SIZE, False)


def test_probe_errors(server):
    with pytest.raises(HTTPStatusError) as info:
        HttpSource(server.url("missing"), opts()).probe()
    assert info.value.status == 404 and (info.value.retry_here, info.value.retry_elsewhere) == (False, False)


def test_read_head(any_server, data, www):
    assert HttpSource(any_server.url("f.bin"), any_server.options).read_head(512) == data[:512]
    (www / "tiny").write_bytes(b"abc")
    assert HttpSource(any_server.url("tiny"), any_server.options).read_head(512) == b"abc"
    any_server.set_fault("*", no_range=True)
    assert HttpSource(any_server.url("f.bin"), any_server.options).read_head(100) == data[:100]


def test_close_from_another_thread_stops_a_blocked_read(server):
    server.set_fault("/f.bin", stall_at=100000, stall_seconds=30)
    body = HttpSource(server.url("f.bin"), opts(read_timeout=30)).open()
    timer = threading.Timer(0.2, body.close)
    timer.start()
    try:
        with pytest.raises(SourceError) as info:
            read_all(body)
    finally:
        timer.join()
    assert info.value.details["reason"] in ("closed", "connection")


def test_a_206_of_another_version_is_refused_with_reason_changed(server, data):
    """A server that ignores If-Range: its 206 carries the new ETag, the engine must not append those bytes."""
    with HttpSource(server.url("f.bin"), opts()).open() as body:
        validators = body.validators
    server.set_fault("/f.bin", ignore_if_range=True, etag='"new-version"')
    with pytest.raises(SourceError) as failure:
        HttpSource(server.url("f.bin"), opts()).open(offset=10, validators=validators)
    assert failure.value.details["reason"] == "changed" and "ignored If-Range" in failure.value.msg
    # Same strong ETag, another Last-Modified (rendered per answer by some servers): the ETag decides.
    server.set_fault("/f.bin", ignore_if_range=True, etag=validators["etag"],
                     last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
    assert read_all(HttpSource(server.url("f.bin"), opts()).open(offset=10, validators=validators)) == data[10:]
    # Only Last-Modified to compare: a different one is another version.
    only_date = {"etag": None, "last_modified": validators["last_modified"]}
    with pytest.raises(SourceError, match="ignored If-Range"):
        HttpSource(server.url("f.bin"), opts()).open(offset=10, validators=only_date)
