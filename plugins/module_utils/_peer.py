# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The fan-out peer server: a host that holds verified copies serves them to the other hosts of a deployment.

Design (docs/fanout.md): read-only, over TLS with a per-deployment self-signed certificate that receivers pin by its
SHA-256 fingerprint, every request authenticated with a per-deployment bearer token, and only the files named at
start (an allowlist: no listing, no path outside it). Each file is opened with ``O_NOFOLLOW`` and must be the same
regular file (device, inode, size, mtime) as when the server started; a file swapped since then (a symlink, another
file renamed over it, a changed image) is refused with 410, so a receiver sets this peer aside.

Two halves in one file:

* the server (``PeerServer``, ``serve``): **standard library only**, because ``start`` copies this file into the
  peer's private state directory and runs it there with the module's Python (``python -I peer_server.py
  --directdownload-peer-server STATE_DIR``): the AnsiballZ payload the module came in is deleted when the module
  exits, the server outlives it. The token reaches it in a 0600 file in the state directory, never argv or the
  environment (both are visible in ``ps``/``/proc``);
* the control (``start``, ``stop``, ``find_servers``): what the ``peer_server`` module calls. It makes the
  certificate (``cryptography``, imported when needed), writes the private state (directory 0700, files 0600), starts
  the server in its own session and waits until it listens, and stops it by PID file, after checking
  ``/proc/PID/cmdline`` is really our server for this state directory; a server left by a killed play is found the
  same way (also by scanning ``/proc`` when its PID file is gone).

Wire rules: GET and HEAD; a single ``Range`` (``bytes=a-b``, ``a-``, ``-n``) answers 206 with Content-Range, an
unsatisfiable one 416, several ranges or a stale ``If-Range`` the whole file (200); ``Accept-Ranges: bytes``;
``ETag`` is the verified digest (``"sha256:<hex>"``) when the caller gave it, else inode, size and mtime; bodies go
out with ``socket.sendfile`` (over TLS the standard library falls back to a send loop). At most ``max_uploads``
bodies at once (more: 503 with ``Retry-After``); the server exits by itself ``lifetime`` seconds after it started.
Authentication comes before anything else: without the token (401) or with a wrong one (403) nobody learns which
files exist. The access log (``server.log`` in the state directory) has the method, the escaped path, the status and
the byte count: never a header.
"""

from __future__ import annotations

import errno
import hmac
import json
import os
import re
import signal
import socket
import ssl
import stat
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Optional, Sequence, Union

DEFAULT_PORT = 8473
DEFAULT_MAX_UPLOADS = 4
DEFAULT_LIFETIME = 3600
DEFAULT_STATE_DIR = "/var/lib/directdownload/peer"
SERVER_MARKER = "--directdownload-peer-server"
RETRY_AFTER = 2  # seconds a refused receiver waits before it asks again (503)
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 15.0
IDLE_TIMEOUT = 60.0

# File names in the state directory.
CONFIG_FILE = "config.json"
TOKEN_FILE = "token"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
PID_FILE = "server.pid"
LOG_FILE = "server.log"
SCRIPT_FILE = "peer_server.py"
PRIVATE_FILES = (CONFIG_FILE, TOKEN_FILE, CERT_FILE, KEY_FILE, PID_FILE, SCRIPT_FILE)

_NAME = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]{0,254}$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PeerError(Exception):
    """A peer server cannot be started or stopped; ``msg`` is for the operator (never holds the token)."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details


# -- the server (standard library only) -------------------------------------------------------------------------

class _Entry:
    """One served file, as it was when the server started."""

    def __init__(self, name, path, dev, ino, size, mtime_ns, sha256=None):
        self.name, self.path = name, path
        self.identity = (int(dev), int(ino), int(size), int(mtime_ns))
        self.size = int(size)
        self.mtime_ns = int(mtime_ns)
        self.etag = '"sha256:%s"' % sha256 if sha256 else '"%x-%x-%x"' % (int(ino), int(size), int(mtime_ns))
        self.last_modified = _http_date(self.mtime_ns / 1e9)

    @classmethod
    def from_dict(cls, item):
        return cls(item["name"], item["path"], item["dev"], item["ino"], item["size"], item["mtime_ns"],
                   item.get("sha256"))


def _http_date(timestamp):
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(timestamp))


def parse_range(header: Optional[str], size: int) -> Optional[Union[tuple[int, int], str]]:
    """``(first, last)`` (inclusive) for a single satisfiable byte range; None for no usable range (serve the
    whole file: no header, several ranges, another unit); ``"unsatisfiable"`` for a range past the end."""
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        count = int(last)
        if count == 0:
            return "unsatisfiable"
        return max(0, size - count), size - 1
    first = int(first)
    if last and int(last) < first:
        return None  # invalid: ignored, the whole file
    if first >= size:
        return "unsatisfiable"
    last = int(last) if last else size - 1
    return first, min(last, size - 1)


class _Handler(BaseHTTPRequestHandler):
    server_version = "directdownload-peer"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._serve(head=False)

    def do_HEAD(self):  # noqa: N802
        self._serve(head=True)

    def _refuse(self, status, reason, extra=None):
        self.close_connection = True
        self.send_response(status, reason)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.server.count(status)

    def _serve(self, head):
        server = self.server
        token = self.headers.get("Authorization") or ""
        if not token.startswith("Bearer "):
            return self._refuse(401, "Unauthorized", {"WWW-Authenticate": 'Bearer realm="directdownload-peer"'})
        if not hmac.compare_digest(token[7:].strip().encode("utf-8", "replace"), server.token):
            return self._refuse(403, "Forbidden")
        # The request target as sent (http.server rewrites a leading "//" in self.path): exactly "/<name>".
        parts = (self.requestline or "").split()
        path = (parts[1] if len(parts) == 3 else "").split("?", 1)[0]
        name = path[1:] if path.startswith("/") else ""
        entry = server.files.get(name) if _NAME.match(name) and ".." not in name else None
        if entry is None:  # no listing, nothing but the allowlist; "%", "/" and ".." never match a name
            return self._refuse(404, "Not Found")
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return self._refuse(410, "Gone")  # removed, or a symlink swapped in (ELOOP)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or \
                    (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) != entry.identity:
                return self._refuse(410, "Gone")  # not the file verified at start
            self._send_file(handle, entry, head)
        return None

    def _send_file(self, handle, entry, head):
        server = self.server
        size = entry.size
        wanted = parse_range(self.headers.get("Range"), size)
        if_range = self.headers.get("If-Range")
        if wanted is not None and if_range and if_range.strip() not in (entry.etag, entry.last_modified):
            wanted = None  # another version was asked for: the whole current file
        if wanted == "unsatisfiable":
            return self._refuse(416, "Range Not Satisfiable", {"Content-Range": "bytes */%d" % size})
        first, last = wanted if wanted else (0, size - 1)
        count = last - first + 1 if size else 0
        slot = None
        if not head:
            slot = server.uploads.acquire(blocking=False)
            if not slot:
                return self._refuse(503, "Busy", {"Retry-After": str(RETRY_AFTER)})
        try:
            self.close_connection = True
            self.send_response(206 if wanted else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(count))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", entry.etag)
            self.send_header("Last-Modified", entry.last_modified)
            if wanted:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (first, last, size))
            self.send_header("Connection", "close")
            self.end_headers()
            server.count(206 if wanted else 200)
            if not head and count:
                sent = self.connection.sendfile(handle, first, count)
                server.add_bytes(sent)
        finally:
            if slot:
                server.uploads.release()
        return None

    def log_request(self, code="-", size="-"):
        # Method, escaped path and status: never a header (the token travels in one).
        self.server.log("%s %s %r %s" % (self.client_address[0], getattr(self, "command", "-"),
                                         (getattr(self, "path", "") or "")[:200], getattr(code, "value", code)))

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        self.server.log("%s %s" % (self.client_address[0], format % args))


class PeerServer(ThreadingHTTPServer):
    """The TLS file server. ``files``: name -> _Entry; ``token``: bytes. Handshakes run in the worker threads."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: str, port: int, files: dict[str, _Entry], token: Union[bytes, str], cert_file: str,
                 key_file: str, max_uploads: int = DEFAULT_MAX_UPLOADS, log_file: Optional[str] = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.files = dict(files)
        self.token = token if isinstance(token, bytes) else token.encode("utf-8")
        if not self.token:
            raise PeerError("the peer token is empty")
        self.uploads = threading.BoundedSemaphore(max(1, int(max_uploads)))
        self.max_connections = max(1, int(max_uploads)) * 2 + 8
        self.connections = threading.BoundedSemaphore(self.max_connections)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert_file, key_file)
        self.statuses = {}
        self.bytes_sent = 0
        self._stats_lock = threading.Lock()
        self._log_file = log_file
        super().__init__((address, int(port)), _Handler)

    # -- bookkeeping
    def count(self, status: int) -> None:
        with self._stats_lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def add_bytes(self, count: Optional[int]) -> None:
        with self._stats_lock:
            self.bytes_sent += count or 0

    def log(self, line: str) -> None:
        if self._log_file is None:
            return
        text = "%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            line.encode("ascii", "backslashreplace").decode("ascii"))
        try:
            with open(self._log_file, "a", encoding="ascii") as handle:
                handle.write(text)
        except OSError:
            pass

    # -- connections: a cap on open connections, TLS in the worker thread
    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        if not self.connections.acquire(blocking=False):
            self.shutdown_request(request)  # far beyond the upload cap: not even a handshake
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def finish_request(self, request: socket.socket, client_address: tuple) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            tls.settimeout(IDLE_TIMEOUT)
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: socket.socket, client_address: tuple) -> None:
        exc = sys.exc_info()[1]
        self.log("%s error %s" % (client_address[0], type(exc).__name__))


def entries_from_config(config: dict[str, Any]) -> dict[str, _Entry]:
    return {item["name"]: _Entry.from_dict(item) for item in config["files"]}


def serve(state_dir: str) -> int:
    """Run the server of ``state_dir`` until SIGTERM/SIGINT or its lifetime ends (the daemon's main)."""
    def path(name):
        return os.path.join(state_dir, name)

    with open(path(CONFIG_FILE), encoding="utf-8") as handle:
        config = json.load(handle)
    with open(path(TOKEN_FILE), "rb") as handle:
        token = handle.read().strip()
    server = PeerServer(config["address"], config["port"], entries_from_config(config), token, path(CERT_FILE),
                        path(KEY_FILE), config.get("max_uploads", DEFAULT_MAX_UPLOADS), log_file=path(LOG_FILE))
    del token

    def stop(*_args):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    remaining = max(0.0, float(config["expires_at"]) - time.time())
    timer = threading.Timer(remaining, stop)
    timer.daemon = True
    timer.start()
    _write_private(path(PID_FILE), "%d\n" % os.getpid())
    server.log("listening on %s:%d with %d file(s) for %ds"
               % (config["address"], server.server_address[1], len(server.files), remaining))
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        server.log("stopped (%s, %d bytes sent)" % (", ".join("%s x%d" % item for item in sorted(server.statuses.items()))
                                                    or "no requests", server.bytes_sent))
        if read_pid(state_dir) == os.getpid():
            _unlink(path(PID_FILE))
    return 0


def _write_private(path, text, binary=False):
    """Write ``path`` atomically, mode 0600 from the first byte."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text if binary else text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path):
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# -- control (what the peer_server module calls) -----------------------------------------------------------------

def read_pid(state_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(state_dir, PID_FILE), encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return None


def is_our_server(pid: int, state_dir: str) -> bool:
    """True when process ``pid`` is the peer server of ``state_dir`` (by its /proc/PID/cmdline)."""
    argv = _cmdline(pid)
    if not argv or SERVER_MARKER not in argv:
        return False
    index = argv.index(SERVER_MARKER)
    return index + 1 < len(argv) and os.path.realpath(argv[index + 1]) == os.path.realpath(state_dir)


def find_servers(state_dir: str) -> list[int]:
    """PIDs of every running peer server of ``state_dir``: its PID file's, and any other (a lost PID file)."""
    found = []
    pid = read_pid(state_dir)
    if pid and is_our_server(pid, state_dir):
        found.append(pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in found or int(entry) == os.getpid():
            continue
        if is_our_server(int(entry), state_dir):
            found.append(int(entry))
    return found


def _listening(address, port, timeout=0.5):
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def describe_files(files: Optional[Iterable[Union[str, dict[str, Any]]]]) -> list[dict[str, Any]]:
    """The allowlist from the module's ``files`` (paths, or dicts with path, name, sha256) as config entries.

    Each must be a regular file, not a symlink; names are URL-safe and unique. Raises PeerError."""
    entries, names = [], set()
    for item in files or []:
        if isinstance(item, dict):
            path, name, digest = item.get("path"), item.get("name"), item.get("sha256")
        else:
            path, name, digest = item, None, None
        if not path or not os.path.isabs(str(path)):
            raise PeerError("files: %r is not an absolute path" % (path,))
        path = os.path.normpath(str(path))
        name = name or os.path.basename(path)
        if not _NAME.match(name) or ".." in name:
            raise PeerError("files: %r is not a name a peer can serve (letters, digits, . _ + - only)" % (name,))
        if name in names:
            raise PeerError("files: two files are named %s; give one of them another name" % name)
        names.add(name)
        if digest:
            digest = str(digest).lower()
            if digest.startswith("sha256:"):
                digest = digest[7:]
            if not _SHA256.match(digest):
                raise PeerError("files: the sha256 of %s is not 64 hex digits" % name)
        try:
            info = os.lstat(path)
        except OSError as exc:
            raise PeerError("files: cannot serve %s: %s" % (path, exc.strerror or exc), path=path) from exc
        if not stat.S_ISREG(info.st_mode):
            raise PeerError("files: %s is not a regular file (symlinks are never served)" % path, path=path)
        entries.append({"name": name, "path": path, "dev": info.st_dev, "ino": info.st_ino, "size": info.st_size,
                        "mtime_ns": info.st_mtime_ns, "sha256": digest or None})
    if not entries:
        raise PeerError("files: a peer server needs at least one file to serve")
    return entries


def make_certificate(address: str, days: int = 2) -> tuple[bytes, bytes, str]:
    """A per-deployment self-signed certificate: ``(cert_pem, key_pem, fingerprint)``; EC P-256 key."""
    import datetime  # pylint: disable=import-outside-toplevel
    import ipaddress  # pylint: disable=import-outside-toplevel
    try:
        from cryptography import x509  # pylint: disable=import-outside-toplevel
        from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=import-outside-toplevel
        from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=import-outside-toplevel
        from cryptography.x509.oid import NameOID  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise PeerError("the peer server needs the Python library cryptography on the host", missing_lib=True) from exc
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "directdownload peer %s" % address)])
    try:
        alt = x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        alt = x509.DNSName(address)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert_pem, key_pem, fingerprint(der)


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as ``AB:CD:...``."""
    import hashlib  # pylint: disable=import-outside-toplevel
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def certificate_fingerprint(state_dir: str) -> Optional[str]:
    """The fingerprint of the certificate in ``state_dir`` (None when there is none)."""
    try:
        with open(os.path.join(state_dir, CERT_FILE), encoding="ascii") as handle:
            return fingerprint(ssl.PEM_cert_to_DER_cert(handle.read()))
    except (OSError, ValueError):
        return None


def _prepare_state_dir(state_dir):
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    info = os.lstat(state_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise PeerError("state_dir %s is not a directory" % state_dir)
    if info.st_uid != os.geteuid():
        raise PeerError("state_dir %s belongs to another user" % state_dir)
    os.chmod(state_dir, 0o700)


def url_of(address: str, port: int, name: str) -> str:
    host = "[%s]" % address if ":" in address else address
    return "https://%s:%d/%s" % (host, port, name)


def _own_source():
    """The text of this file, also when it was imported from the AnsiballZ zip."""
    loader = globals().get("__loader__")
    if loader is not None and hasattr(loader, "get_source"):
        try:
            text = loader.get_source(__name__)
            if text:  # ansible's collection loader returns bytes, zipimport (AnsiballZ) a str
                return text.decode("utf-8") if isinstance(text, bytes) else text
        except (ImportError, OSError):
            pass
    with open(__file__, encoding="utf-8") as handle:
        return handle.read()


def _same_deployment(state_dir, wanted, token):
    """The running server serves exactly ``wanted`` with ``token``: nothing to do."""
    try:
        with open(os.path.join(state_dir, CONFIG_FILE), encoding="utf-8") as handle:
            current = json.load(handle)
        with open(os.path.join(state_dir, TOKEN_FILE), "rb") as handle:
            current_token = handle.read().strip()
    except (OSError, ValueError):
        return None
    keys = ("address", "port", "files", "max_uploads", "lifetime")
    if any(current.get(key) != wanted.get(key) for key in keys):
        return None
    if not hmac.compare_digest(current_token, token.encode("utf-8")):
        return None
    if float(current.get("expires_at", 0)) <= time.time():
        return None
    return current


def status(state_dir: str, address: Optional[str] = None, port: Optional[int] = None) -> dict[str, Any]:
    """``{"running", "pid", "fingerprint", "expires_at"}`` for the server of ``state_dir``."""
    pids = find_servers(state_dir) if os.path.isdir(state_dir) else []
    result = {"running": bool(pids), "pid": pids[0] if pids else None}
    if pids:
        result["fingerprint"] = certificate_fingerprint(state_dir)
    return result


def start(state_dir: str, address: str, port: int, files: Optional[Iterable[Union[str, dict[str, Any]]]], token: str,
          max_uploads: int = DEFAULT_MAX_UPLOADS, lifetime: int = DEFAULT_LIFETIME, check_mode: bool = False,
          python: Optional[str] = None) -> dict[str, Any]:
    """Serve ``files`` from ``state_dir``'s server; a running server of the same deployment is kept (not changed),
    any other server of this state directory (another deployment, a killed play's) is stopped first.

    Returns the module result: changed, pid, fingerprint, address, port, urls, expires_at, stopped (PIDs)."""
    if not token or len(token) < 16:
        raise PeerError("the peer token must be at least 16 characters (use a random per-deployment value)")
    if any(char in token for char in "\r\n\0 \t"):
        raise PeerError("the peer token cannot contain white space or control characters")
    port = int(port)
    if not 0 < port < 65536:
        raise PeerError("port must be between 1 and 65535")
    if lifetime <= 0:
        raise PeerError("lifetime must be a positive number of seconds")
    wanted = {"address": address, "port": port, "files": describe_files(files), "max_uploads": int(max_uploads),
              "lifetime": int(lifetime)}
    urls = {item["name"]: url_of(address, port, item["name"]) for item in wanted["files"]}
    result = {"address": address, "port": port, "urls": urls, "state_dir": state_dir, "stopped": []}
    running = find_servers(state_dir) if os.path.isdir(state_dir) else []
    current = _same_deployment(state_dir, wanted, token) if running else None
    if current is not None and len(running) == 1:
        result.update(changed=False, pid=running[0], fingerprint=certificate_fingerprint(state_dir),
                      expires_at=current["expires_at"], msg="the peer server is already serving these files")
        return result
    if check_mode:
        result.update(changed=True, pid=None, fingerprint=None, expires_at=None, stopped=running,
                      msg="would start the peer server")
        return result
    _prepare_state_dir(state_dir)
    result["stopped"] = _stop_pids(running)
    if _listening(address, port):
        raise PeerError("%s:%d is already in use by another process" % (address, port), address=address, port=port)
    cert_pem, key_pem, cert_fingerprint = make_certificate(address)

    def path(name):
        return os.path.join(state_dir, name)

    _write_private(path(KEY_FILE), key_pem, binary=True)
    _write_private(path(CERT_FILE), cert_pem, binary=True)
    _write_private(path(TOKEN_FILE), token + "\n")
    wanted["expires_at"] = time.time() + lifetime
    _write_private(path(CONFIG_FILE), json.dumps(wanted, indent=1, sort_keys=True) + "\n")
    _write_private(path(SCRIPT_FILE), _own_source())
    _unlink(path(PID_FILE))
    pid = _spawn(state_dir, python or sys.executable)
    deadline = time.time() + STARTUP_TIMEOUT
    while True:
        if read_pid(state_dir) == pid.pid and _listening(address, port):
            break
        if pid.poll() is not None or time.time() > deadline:
            if pid.poll() is None:
                pid.kill()
                pid.wait()
            raise PeerError("the peer server did not start on %s:%d: %s" % (address, port, _log_tail(state_dir)),
                            address=address, port=port)
        time.sleep(0.05)
    result.update(changed=True, pid=pid.pid, fingerprint=cert_fingerprint, expires_at=wanted["expires_at"],
                  msg="started the peer server (%d file(s), %ds)" % (len(urls), lifetime))
    return result


def _spawn(state_dir, python):
    import subprocess  # pylint: disable=import-outside-toplevel
    log = open(os.path.join(state_dir, LOG_FILE), "ab")  # pylint: disable=consider-using-with
    try:
        # Nothing secret on the command line or in the environment: the token is in a 0600 file.
        return subprocess.Popen(  # pylint: disable=consider-using-with
            [python, "-I", os.path.join(state_dir, SCRIPT_FILE), SERVER_MARKER, state_dir],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True, start_new_session=True,
            cwd=state_dir, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})
    finally:
        log.close()


def _log_tail(state_dir, lines=5):
    try:
        with open(os.path.join(state_dir, LOG_FILE), encoding="ascii", errors="replace") as handle:
            return " | ".join(handle.read().splitlines()[-lines:]) or "no output"
    except OSError:
        return "no log"


def _stop_pids(pids):
    """SIGTERM each, then SIGKILL what is left after STOP_TIMEOUT. Returns the PIDs that were running."""
    stopped = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.time() + STOP_TIMEOUT
    for pid in stopped:
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while _alive(pid):
            time.sleep(0.02)
    return stopped


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child in tests) is dead for this purpose.
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop(state_dir: str, check_mode: bool = False) -> dict[str, Any]:
    """Stop every server of ``state_dir`` (verified by /proc/PID/cmdline) and remove the deployment's private
    state (token, key, certificate, config); the log stays. Returns changed, stopped (PIDs), removed (names)."""
    if not os.path.isdir(state_dir):
        return {"changed": False, "stopped": [], "removed": [], "state_dir": state_dir,
                "msg": "no peer server state here"}
    running = find_servers(state_dir)
    present = [name for name in PRIVATE_FILES if os.path.lexists(os.path.join(state_dir, name))]
    if check_mode:
        return {"changed": bool(running or present), "stopped": running, "removed": present, "state_dir": state_dir,
                "msg": "would stop the peer server" if running else "would remove the peer state"}
    stopped = _stop_pids(running)
    removed = [name for name in PRIVATE_FILES if _unlink(os.path.join(state_dir, name))]
    return {"changed": bool(stopped or removed), "stopped": stopped, "removed": removed, "state_dir": state_dir,
            "msg": "stopped the peer server" if stopped else ("removed the peer state" if removed
                                                              else "no peer server was running")}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != SERVER_MARKER:
        sys.stderr.write("usage: peer_server.py %s STATE_DIR\n" % SERVER_MARKER)
        return 2
    try:
        return serve(argv[1])
    except (OSError, ValueError, KeyError, ssl.SSLError, PeerError) as exc:
        message = getattr(exc, "msg", None) or "%s: %s" % (type(exc).__name__, exc)
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            message = "the address is already in use"
        sys.stderr.write("peer server failed: %s\n" % message)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
