# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Loopback HTTP/HTTPS servers for tests and benchmarks: an image server with injectable faults, and a forward
proxy. Standard library only, so it also runs as a separate process (benchmarks, shell scripts, kill -9 tests)::

    python tests/unit/lib/servers.py --root DIR [--port 0]     (or -m ansible_collections....tests.unit.lib.servers)
        [--tls-cert FILE --tls-key FILE [--client-ca FILE]] [--rate BYTES_PER_S] [--faults JSON]
    # prints the base URL (e.g. http://127.0.0.1:41234/) on stdout when ready; SIGTERM/SIGINT stop it.

In tests::

    from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer
    with ImageServer(tmp_path) as srv:                      # or ssl_context=TestCA().server_context()
        srv.set_fault("/disk.qcow2", status=500, times=2)   # two 500s, then the file
        url = srv.url("disk.qcow2")
        ...
        assert srv.requests[-1].status == 200

The image server speaks HTTP/1.1 with keep-alive, HEAD, ``Content-Length``, ``Accept-Ranges: bytes``, ``ETag``
(from size and mtime), ``Last-Modified``, single ``Range`` requests (``a-``, ``a-b``, ``-n``) answered with 206 and
``Content-Range`` (416 past the end), ``If-Range`` (a mismatch gives the full 200). Bodies of unfaulted paths go out
with ``socket.sendfile`` (zero-copy on plain HTTP), so the same server is the benchmark server.

Faults (``set_fault(path, **kw)``; ``path`` ``"*"`` applies to every path that has no fault of its own).
Offsets are positions in the file, whatever range the request asked for:

==================  ==========================================================================================
``times=N``         the fault applies to the next N matching requests, then the path is served normally
``method="GET"``    the fault applies to this method only (e.g. ``status=405, method="HEAD"``)
``status=500``      answer with this status and a short text body
``truncate_at=B``   announce the full length, stop sending at file offset B and close the connection
``stall_at=B``      at file offset B pause ``stall_seconds`` (default 3600: until the server closes)
``corrupt_at=B``    flip the byte at file offset B (xor 0xff)
``rate=BPS``        pace the body to BPS bytes/s (a token bucket per connection)
``no_range=True``   ignore Range/If-Range (always 200) and send no ``Accept-Ranges``
``ignore_if_range`` answer every Range with 206, whatever If-Range says (a broken cache or proxy: the bytes of
                    the current file are appended to those of an older one)
``range_start=B``   answer a Range with 206 for the bytes from file offset B on, whatever was asked
``etag="..."``      send this ETag (quoted as given) instead of the real one: simulates a changed file
``last_modified``   send this Last-Modified instead of the real one
``no_validators``   send neither ETag nor Last-Modified
``redirect_to=U``   answer ``redirect_status`` (default 302) with ``Location: U`` (absolute or relative)
``require_headers`` dict of header name -> value; a request without them gets 401
``refuse=True``     close the connection without answering
``content_type``    the Content-Type to send (default: by file suffix, else application/octet-stream)
``no_length=True``  no Content-Length: the body ends when the connection closes
``chunked=True``    ``Transfer-Encoding: chunked``
``headers``         dict of extra response headers
==================  ==========================================================================================

``srv.requests`` is a list of :class:`RequestRecord` (method, path, headers with lower-case names, status,
bytes_sent, time: ``time.monotonic()`` at arrival). A request is recorded when it arrives and its status is set before the answer's headers go out;
``bytes_sent`` is final once ``srv.wait_idle()`` returns True.
"""

from __future__ import annotations

import argparse
import http.client
import json
import mimetypes
import os
import select
import signal
import socket
import ssl
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_CONTENT_TYPES = {
    ".meta4": "application/metalink4+xml",
    ".metalink": "application/metalink+xml",
    ".qcow2": "application/octet-stream",
    ".iso": "application/x-iso9660-image",
}
_CHUNK = 64 * 1024
_TLS_CHUNK = 256 * 1024


class Fault:
    """One path's injected misbehaviour (see the module docstring for the meaning of each field)."""

    def __init__(self, times=None, method=None, status=None, truncate_at=None, stall_at=None, stall_seconds=3600.0,
                 corrupt_at=None, rate=None, no_range=False, etag=None, last_modified=None, no_validators=False,
                 redirect_to=None, redirect_status=302, require_headers=None, refuse=False, content_type=None,
                 no_length=False, chunked=False, headers=None, ignore_if_range=False, range_start=None):
        self.times = times
        self.method = method.upper() if method else None
        self.status = status
        self.truncate_at = truncate_at
        self.stall_at = stall_at
        self.stall_seconds = stall_seconds
        self.corrupt_at = corrupt_at
        self.rate = rate
        self.no_range = no_range
        self.etag = etag
        self.last_modified = last_modified
        self.no_validators = no_validators
        self.redirect_to = redirect_to
        self.redirect_status = redirect_status
        self.require_headers = dict(require_headers or {})
        self.refuse = refuse
        self.content_type = content_type
        self.no_length = no_length
        self.chunked = chunked
        self.headers = dict(headers or {})
        self.ignore_if_range = ignore_if_range
        self.range_start = range_start

    @property
    def shapes_body(self):
        """True when the body cannot go out with a plain sendfile."""
        return any(value is not None for value in (self.truncate_at, self.stall_at, self.corrupt_at, self.rate)) \
            or self.chunked


_NO_FAULT = Fault()


class RequestRecord:
    """What the server saw and answered. ``headers`` has lower-case names."""

    def __init__(self, method, path, headers, client):
        self.method = method
        self.path = path
        self.headers = headers
        self.client = client
        self.status = None
        self.bytes_sent = 0
        self.time = time.monotonic()  # when it arrived (retry pacing tests compare these)

    def __repr__(self):
        # Header values stay out of reprs: tests print these on failure and values may be secrets.
        return "RequestRecord(%s %s -> %s, %d bytes, headers=%s)" % (
            self.method, self.path, self.status, self.bytes_sent, sorted(self.headers))


def _parse_range(value, size):
    """``(start, end_exclusive)`` for one byte range, ``"unsatisfiable"``, or None to ignore the header."""
    value = value.strip()
    if not value.startswith("bytes=") or "," in value:
        return None
    first, sep, last = value[len("bytes="):].strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":  # suffix range: the last N bytes
            count = int(last)
            if count <= 0:
                return "unsatisfiable"
            return max(0, size - count), size
        start = int(first)
        end = int(last) + 1 if last else None
    except ValueError:
        return None
    if start < 0 or (end is not None and end <= start):
        return None
    if start >= size:
        return "unsatisfiable"
    end = size if end is None else end
    return start, min(end, size)


class _ImageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "directdownload-test-server"
    timeout = 120  # an idle keep-alive connection ends after this

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass  # quiet: tests assert on .requests instead

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)

    def _serve(self, head):
        owner = self.server.owner
        path = unquote(urlsplit(self.path).path)
        record = owner.record(RequestRecord(self.command, path, {k.lower(): v for k, v in self.headers.items()},
                                            self.client_address))
        self._record = record
        try:
            self._answer(owner, path, owner.take_fault(path, self.command), head)
        finally:
            owner.answered()

    def _send_simple(self, status, body=b"", headers=None):
        self._record.status = status
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _answer(self, owner, path, fault, head):
        if fault.refuse:
            self._record.status = 0
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault.status is not None:
            self._send_simple(fault.status, b"injected failure %d\n" % fault.status, fault.headers)
            return
        if fault.redirect_to is not None:
            self._send_simple(fault.redirect_status, b"", {"Location": fault.redirect_to})
            return
        for name, value in fault.require_headers.items():
            if self.headers.get(name) != value:
                self._send_simple(401, b"missing or wrong header\n")
                return
        target = owner.resolve(path)
        if target is None:
            self._send_simple(404, b"not found\n")
            return
        stat = os.stat(target)
        size = stat.st_size
        etag = fault.etag if fault.etag is not None else '"%x-%x"' % (size, stat.st_mtime_ns)
        last_modified = fault.last_modified or formatdate(stat.st_mtime, usegmt=True)
        start, end, status = 0, size, 200
        range_header = self.headers.get("Range")
        if range_header and not fault.no_range:
            wanted = _parse_range(range_header, size)
            if_range = self.headers.get("If-Range")
            # If-Range uses the strong comparison: a weak tag or a stale date means "send the whole file".
            validators_match = if_range is None or fault.ignore_if_range or (
                not fault.no_validators and if_range in (etag, last_modified))
            if wanted == "unsatisfiable" and validators_match:
                self._send_simple(416, b"", {"Content-Range": "bytes */%d" % size})
                return
            if wanted is not None and validators_match:
                (start, end), status = wanted, 206
                if fault.range_start is not None:
                    start = min(fault.range_start, size)

        self._record.status = status
        self.send_response(status)
        if fault.no_length:
            self.close_connection = True
            self.send_header("Connection", "close")
        elif fault.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end - 1, size))
        if not fault.no_range:
            self.send_header("Accept-Ranges", "bytes")
        if not fault.no_validators:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
        self.send_header("Content-Type", fault.content_type or _content_type(path))
        for name, value in fault.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if head:
            return
        with open(target, "rb") as handle:
            if fault.shapes_body:
                self._send_shaped(handle, start, end, fault)
            elif isinstance(self.connection, ssl.SSLSocket):
                # No kTLS: SSLSocket.sendfile would fall back to 8 KiB sends; large writes cost far less CPU.
                handle.seek(start)
                buf = bytearray(_TLS_CHUNK)
                view = memoryview(buf)
                pos = start
                while pos < end:
                    count = handle.readinto(view[:min(_TLS_CHUNK, end - pos)])
                    if not count:
                        break
                    self.connection.sendall(view[:count])
                    pos += count
                    self._record.bytes_sent += count
            elif end > start:
                self._record.bytes_sent = self.connection.sendfile(handle, start, end - start)

    def _send_shaped(self, handle, start, end, fault):
        """The write loop for faulted bodies: truncation, stalls, corruption, pacing, chunked framing."""
        owner = self.server.owner
        limit = end if fault.truncate_at is None else min(end, max(start, fault.truncate_at))
        stall_pending = fault.stall_at is not None and start <= fault.stall_at < end
        chunk = _CHUNK if not fault.rate else max(1024, min(_CHUNK, int(fault.rate) // 50))
        handle.seek(start)
        pos = start
        while True:
            if stall_pending and pos >= fault.stall_at:
                stall_pending = False
                if owner.stopping.wait(fault.stall_seconds):
                    break
            if pos >= limit:
                break
            count = min(chunk, limit - pos)
            if stall_pending and pos < fault.stall_at:
                count = min(count, fault.stall_at - pos)
            data = handle.read(count)
            if not data:
                break
            if fault.corrupt_at is not None and pos <= fault.corrupt_at < pos + len(data):
                data = bytearray(data)
                data[fault.corrupt_at - pos] ^= 0xFF
            if fault.rate:
                self._pace(len(data), fault.rate)
            if fault.chunked:
                self.wfile.write(b"%x\r\n" % len(data) + bytes(data) + b"\r\n")
            else:
                self.wfile.write(data)
            pos += len(data)
            self._record.bytes_sent += len(data)
        if pos < end:
            # Truncated (or stopped while stalled): the announced length is never reached; the client sees EOF.
            self.close_connection = True
        elif fault.chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _pace(self, count, rate):
        """Token bucket per connection: sleep until ``count`` more bytes fit in ``rate`` bytes/s."""
        state = getattr(self, "_bucket", None)
        now = time.monotonic()
        if state is None or state[2] != rate:
            state = [now, 0, rate]
            self._bucket = state
        state[1] += count
        delay = state[0] + state[1] / float(rate) - now
        if delay > 0:
            self.server.owner.stopping.wait(delay)


def _content_type(path):
    suffix = os.path.splitext(path)[1].lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, handler, owner, ssl_context):
        self.owner = owner
        self.ssl_context = ssl_context
        super().__init__(address, handler)

    def get_request(self):
        sock, address = super().get_request()
        if self.ssl_context is not None:
            # The handshake runs in the connection's own thread (finish_request), never in the accept loop.
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def finish_request(self, request, client_address):
        self.owner.track(request, True)
        try:
            if self.ssl_context is not None:
                request.settimeout(30)
                try:
                    request.do_handshake()
                except (ssl.SSLError, OSError) as exc:
                    self.owner.tls_errors.append(str(exc))
                    _linger(request)
                    return
            super().finish_request(request, client_address)
        finally:
            self.owner.track(request, False)

    def handle_error(self, request, client_address):
        # Clients that hang up mid-body are normal here (truncation and timeout tests); keep the reason only.
        self.owner.errors.append(repr(sys.exc_info()[1]))


def _linger(sock):
    """Close after a failed handshake without a reset, so the client reads the TLS alert (not ECONNRESET)."""
    try:
        raw = socket.socket(fileno=os.dup(sock.fileno()))
    except OSError:
        return
    try:
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(2)
        while raw.recv(65536):
            pass
    except OSError:
        pass
    finally:
        raw.close()


class _LoopbackServer:
    """Runs a server in a daemon thread; context manager; ``close()`` stops it and closes every connection."""

    handler = None

    def __init__(self, host="127.0.0.1", port=0, ssl_context=None):
        self.requests = []
        self.errors = []
        self.tls_errors = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._answering = 0
        self._connections = set()
        self._server = _Server((host, port), self.handler, self, ssl_context)
        self.host, self.port = self._server.server_address[:2]
        self.scheme = "https" if ssl_context is not None else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="%s:%d" % (type(self).__name__, self.port), daemon=True)
        self._thread.start()

    @property
    def base_url(self):
        return "%s://%s:%d/" % (self.scheme, self.host, self.port)

    def url(self, path="", host=None, scheme=None):
        """The URL of ``path`` on this server; ``host`` replaces the address (e.g. ``localhost``)."""
        return "%s://%s:%d/%s" % (scheme or self.scheme, host or self.host, self.port, path.lstrip("/"))

    def track(self, sock, active):
        with self._lock:
            if active:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)

    def record(self, record):
        """Append a request as soon as it arrives (its status is set before the answer's headers go out)."""
        with self._idle:
            self.requests.append(record)
            self._answering += 1
        return record

    def answered(self):
        with self._idle:
            self._answering -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout=10):
        """Wait until every request received so far is fully answered (``bytes_sent`` final); True if so."""
        with self._idle:
            return self._idle.wait_for(lambda: self._answering == 0, timeout)

    def clear_requests(self):
        with self._lock:
            del self.requests[:]

    def requests_for(self, path, method=None):
        return [r for r in list(self.requests) if r.path == path and (method is None or r.method == method)]

    def close(self):
        if self.stopping.is_set():
            return
        self.stopping.set()  # wakes stalled and paced handlers
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class ImageServer(_LoopbackServer):
    """Serves the files under ``root_dir`` (see the module docstring)."""

    handler = _ImageHandler

    def __init__(self, root_dir, ssl_context=None, host="127.0.0.1", port=0, rate=None):
        self.root_dir = os.path.realpath(str(root_dir))
        self._faults = {}
        if rate:
            self._faults["*"] = Fault(rate=rate)
        super().__init__(host, port, ssl_context)

    def set_fault(self, path, **kwargs):
        """Install a fault for ``path`` (leading slash optional; ``"*"`` = every other path)."""
        fault = Fault(**kwargs)
        with self._lock:
            self._faults[_fault_key(path)] = fault
        return fault

    def clear_faults(self, path=None):
        with self._lock:
            if path is None:
                self._faults.clear()
            else:
                self._faults.pop(_fault_key(path), None)

    def take_fault(self, path, method):
        """The fault for this request (counting down ``times``), or a no-op fault."""
        with self._lock:
            key = None
            for candidate in (path, "*"):  # a path's fault for another method leaves the "*" fault in force
                fault = self._faults.get(candidate)
                if fault is not None and (not fault.method or fault.method == method):
                    key = candidate
                    break
            if key is None:
                return _NO_FAULT
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[key]
            return fault

    def resolve(self, path):
        """The file for a URL path, or None (missing, a directory, or outside the root)."""
        target = os.path.realpath(os.path.join(self.root_dir, path.lstrip("/")))
        if not target.startswith(self.root_dir + os.sep) or not os.path.isfile(target):
            return None
        return target


def _fault_key(path):
    return path if path == "*" else "/" + path.lstrip("/")


_HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
                         "transfer-encoding", "upgrade"))


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass

    def _check_auth(self, record):
        wanted = self.server.owner.require_auth
        if wanted is not None and self.headers.get("Proxy-Authorization") != wanted:
            record.status = 407
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="test proxy"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        return True

    def _new_record(self):
        return self.server.owner.record(RequestRecord(self.command, self.path,
                                                      {k.lower(): v for k, v in self.headers.items()},
                                                      self.client_address))

    def do_GET(self):
        self._forward()

    def do_HEAD(self):
        self._forward()

    def _forward(self):
        record = self._new_record()
        try:
            if not self._check_auth(record):
                return
            target = urlsplit(self.path)
            if target.scheme != "http" or not target.hostname:
                record.status = 400
                self.send_error(400, "absolute http:// URL expected")
                return
            upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, (target.path or "/") + ("?" + target.query if target.query else ""),
                                 headers=headers)
                response = upstream.getresponse()
                record.status = response.status
                self.send_response(response.status)
                length = response.getheader("Content-Length")
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                if length is None and self.command != "HEAD":
                    self.close_connection = True
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return
                while True:
                    data = response.read(_CHUNK)
                    if not data:
                        break
                    self.wfile.write(data)
                    record.bytes_sent += len(data)
                if length is not None and record.bytes_sent < int(length):
                    self.close_connection = True  # pass a truncated upstream body on as a truncated body
            finally:
                upstream.close()
        finally:
            self.server.owner.answered()

    def do_CONNECT(self):
        record = self._new_record()
        try:
            if not self._check_auth(record):
                return
            host, _sep, port = self.path.rpartition(":")
            try:
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
            except (OSError, ValueError):
                record.status = 502
                self.send_error(502)
                return
            record.status = 200
            self.send_response(200, "Connection established")
            self.end_headers()
            self.close_connection = True
            _pipe(self.connection, upstream, self.server.owner.stopping)
        finally:
            self.server.owner.answered()


def _pipe(client, upstream, stopping):
    """Copy bytes both ways until either side closes (the CONNECT tunnel)."""
    sockets = [client, upstream]
    try:
        while not stopping.is_set():
            readable, _w, _x = select.select(sockets, [], [], 0.2)
            for sock in readable:
                data = sock.recv(_CHUNK)
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)
    except OSError:
        return
    finally:
        upstream.close()


class ForwardProxy(_LoopbackServer):
    """A minimal HTTP forward proxy on loopback: absolute-form GET/HEAD and CONNECT tunnels.

    ``require_auth`` is the exact ``Proxy-Authorization`` value to demand (else 407). ``requests`` records what
    it was asked (``path`` is the absolute URL or ``host:port`` for CONNECT).
    """

    handler = _ProxyHandler

    def __init__(self, host="127.0.0.1", port=0, require_auth=None):
        self.require_auth = require_auth
        super().__init__(host, port, None)

    @property
    def proxy_url(self):
        return "http://%s:%d" % (self.host, self.port)


def _server_context_from_files(cert, key, client_ca=None):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
    return context


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve a directory over loopback HTTP(S) with Range support.")
    parser.add_argument("--root", required=True, help="directory to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port (default)")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument("--client-ca", help="require client certificates signed by this CA (PEM)")
    parser.add_argument("--rate", type=int, help="pace every body to this many bytes/s per connection")
    parser.add_argument("--faults", help='JSON object {"/path": {"status": 500, "times": 1}, ...}')
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    context = _server_context_from_files(args.tls_cert, args.tls_key, args.client_ca) if args.tls_cert else None

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with ImageServer(args.root, ssl_context=context, host=args.host, port=args.port, rate=args.rate) as server:
        for path, spec in json.loads(args.faults or "{}").items():
            server.set_fault(path, **spec)
        sys.stdout.write(server.base_url + "\n")
        sys.stdout.flush()
        while not done.wait(1):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
