# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The HTTP and HTTPS source (the Source contract in docs/architecture.md).

Built on the standard library's ``http.client`` on purpose: its ``HTTPResponse.readinto`` is a true
``recv_into`` into the caller's buffer (urllib3 2.x reads and then copies), it needs nothing installed on the KVM
host (no third-party import, so modules need no ``missing_required_lib`` for HTTP(S)), and every policy below is
ours to apply:

* redirects only when ``follow_redirects``, at most ``max_redirects`` hops, never from https to http, relative
  ``Location`` resolved; on a redirect to another origin (scheme, host or port; the upgrade from http to https on
  the same host excepted) no user header is sent unless ``headers_on_redirect`` names it, the credential headers
  (``Authorization``, ``Cookie``, ``Proxy-Authorization`` and a few well-known token headers) and URL credentials
  never, on that hop and every later one;
* resume with ``Range: bytes=offset-`` and ``If-Range`` (strong ETag, else Last-Modified); a 200 answer means the
  server restarted from byte 0 (``body.offset == 0``); a 206 for other bytes than asked (reason ``bad_range``) or
  with another ETag/Last-Modified than the earlier bytes (reason ``changed``: If-Range was ignored) is an error,
  on which the engine downloads again from byte 0;
* no retries here: the engine retries because it must resume at the right offset;
* proxies from ``http_proxy``/``https_proxy``/``no_proxy`` (or the ``proxy`` option); https goes through a CONNECT
  tunnel, http as an absolute-form request; http:// proxy URLs only;
* separate connect and read timeouts (the read timeout is an inactivity timeout, not a total time);
* ``url_username``/``url_password`` (get_url's names): HTTP Basic credentials sent after a 401 answer, or with the
  first request when ``force_basic_auth``; like the other credentials, never to another host after a redirect;
* header values are secrets: they never appear in messages, exceptions or reprs.

One connection per request, closed with the body: image bodies are large, so a connection pool would save
nothing worth its failure modes.
"""

from __future__ import annotations

import base64
import http.client
import re
import socket
import ssl
import threading
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit
from urllib.request import getproxies_environment, proxy_bypass_environment
from typing import Any, Iterable, Mapping, Optional, Union

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    HTTPStatusError, InvalidInput, SourceError, TLSVerificationError)
from ansible_collections.directdownload.kvm.plugins.module_utils._settings import BUILTIN_DEFAULTS, DEFAULT_TRUST_DIR
from ansible_collections.directdownload.kvm.plugins.module_utils._source import Source
from ansible_collections.directdownload.kvm.plugins.module_utils._trust import (
    build_pinned_context, build_ssl_context, check_pin, describe_tls_error, is_verification_error,
    normalize_fingerprint)
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import redact_url, split_url

COLLECTION_VERSION = "0.2.0"  # galaxy.yml is the truth; tests/unit/test_collection_version.py checks they agree
DEFAULT_USER_AGENT = "directdownload.kvm/" + COLLECTION_VERSION
DEFAULT_MAX_REDIRECTS = 10

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Answers worth another attempt (maybe after a pause): timeouts, rate limits, server trouble.
RETRYABLE_STATUSES = (408, 429)
# Headers that carry credentials: not sent to a host other than the one the user named.
CREDENTIAL_HEADERS = frozenset(("authorization", "cookie", "proxy-authorization", "x-auth-token", "private-token",
                                "x-api-key", "api-key", "x-amz-security-token"))
# Headers the source sets itself; a user value would break resume or framing.
ENGINE_HEADERS = frozenset(("range", "if-range", "content-length", "transfer-encoding", "connection", "te",
                            "upgrade", "expect"))
# HEAD answers after which probe() tries a one-byte GET instead (servers or signed URLs that refuse HEAD).
HEAD_FALLBACK_STATUSES = (400, 403, 405, 501)

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_TOKEN_START = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]*")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_headers(headers: Optional[Mapping[str, Any]]) -> dict[str, str]:
    """Validate user headers without ever showing a value; return a plain ``{name: str(value)}`` dict.

    Raises InvalidInput (bad name, CR/LF/NUL in a value, a header the engine sets itself, a None value)."""
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise InvalidInput("headers must be a dictionary of header names to values")
    checked = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            # Only the valid start is shown: a pasted "Authorization: Bearer ..." must not leak its token.
            start = _TOKEN_START.match(name).group(0) if isinstance(name, str) else ""
            raise InvalidInput("header name %r... is not a valid HTTP header name (letters, digits and "
                               "!#$%%&'*+.^_`|~- only; the value goes in the value)" % start)
        if name.lower() == "host":
            raise InvalidInput("the HTTP header Host cannot be given: it comes from the URL")
        if name.lower() in ENGINE_HEADERS:
            raise InvalidInput("header %s cannot be set: the download engine controls it" % name)
        if value is None:
            raise InvalidInput("header %s has no value" % name)
        value = str(value)
        if any(char in value for char in "\r\n\0"):
            raise InvalidInput("the value of header %s contains a line break or NUL character" % name)
        checked[name] = value
    return checked


def check_headers_on_redirect(names: Optional[Iterable[str]]) -> frozenset[str]:
    """The user headers that may follow a redirect to another origin, as a frozenset of lower-case names.
    Credential headers cannot be named: they never go to another host."""
    if not names:
        return frozenset()
    if isinstance(names, str) or not isinstance(names, (list, tuple, set, frozenset)):
        raise InvalidInput("headers_on_redirect must be a list of header names")
    allowed = set()
    for name in names:
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise InvalidInput("headers_on_redirect: %r is not a valid HTTP header name" % (name,))
        if name.lower() in CREDENTIAL_HEADERS:
            raise InvalidInput("headers_on_redirect cannot name %s: credentials are never sent to another host "
                               "(give that host's own URL, or a pre-signed one)" % name)
        allowed.add(name.lower())
    return frozenset(allowed)


class SourceOptions:
    """How to reach an HTTP(S) URL. ``headers`` values are secrets (kept out of ``repr``).

    ``proxy``: None = from the environment (``https_proxy``/``http_proxy``, honouring ``no_proxy``); ``""`` = no
    proxy; ``"http://[user:password@]host:port"`` = that proxy for every URL.
    ``validate_certs=False`` is INSECURE (no certificate or host name check).
    ``pin_sha256``: accept the TLS connection only when the server certificate's SHA-256 fingerprint is this one,
    instead of CA and host name validation (a fan-out peer's per-deployment certificate; see ``for_peer``).
    """

    def __init__(self, headers=None, ca_path=None, trust_dir=DEFAULT_TRUST_DIR, validate_certs=True,
                 client_cert=None, client_key=None, connect_timeout=BUILTIN_DEFAULTS["connect_timeout"],
                 read_timeout=BUILTIN_DEFAULTS["read_timeout"], follow_redirects=False,
                 max_redirects=DEFAULT_MAX_REDIRECTS, proxy=None, user_agent=DEFAULT_USER_AGENT,
                 headers_on_redirect=None,
                 url_username=None, url_password=None, force_basic_auth=False, pin_sha256=None):
        self.headers = check_headers(headers)
        self.pin_sha256 = normalize_fingerprint(pin_sha256) if pin_sha256 else None
        self.headers_on_redirect = check_headers_on_redirect(headers_on_redirect)
        # Basic auth from url_username/url_password (they win over credentials in the URL). Sent on the first
        # request with force_basic_auth, else only after a 401; never to another host after a redirect.
        self.basic_auth = None
        if url_username is not None or url_password is not None:
            self.basic_auth = "Basic " + base64.b64encode(
                ("%s:%s" % (url_username or "", url_password or "")).encode("utf-8")).decode("ascii")
        self.force_basic_auth = bool(force_basic_auth)
        self.ca_path = ca_path
        self.trust_dir = trust_dir
        self.validate_certs = bool(validate_certs)
        self.client_cert = client_cert
        self.client_key = client_key
        self.connect_timeout = _positive("connect_timeout", connect_timeout)
        self.read_timeout = _positive("read_timeout", read_timeout)
        self.follow_redirects = bool(follow_redirects)
        self.max_redirects = int(max_redirects)
        self.proxy = proxy
        if proxy:
            _Proxy(proxy)  # fail early on a bad proxy URL
        self.user_agent = user_agent or DEFAULT_USER_AGENT
        self._ssl_context = None
        self._lock = threading.Lock()

    @classmethod
    def from_params(cls, params: Mapping[str, Any], settings: Optional[Mapping[str, Any]] = None) -> SourceOptions:
        """Build from module parameters; a missing or None parameter falls back to ``settings`` (the agent
        settings from ``_settings.load_settings``), then to the built-in default."""
        settings = settings or BUILTIN_DEFAULTS

        def pick(name, default=None):
            value = params.get(name)
            if value is None:
                value = settings.get(name, default)
            return default if value is None else value

        return cls(
            headers=params.get("headers"), ca_path=params.get("ca_path"),
            trust_dir=pick("trust_dir", DEFAULT_TRUST_DIR), validate_certs=pick("validate_certs", True),
            client_cert=params.get("client_cert"), client_key=params.get("client_key"),
            connect_timeout=pick("connect_timeout", BUILTIN_DEFAULTS["connect_timeout"]),
            read_timeout=pick("read_timeout", BUILTIN_DEFAULTS["read_timeout"]),
            follow_redirects=pick("follow_redirects", False), max_redirects=pick("max_redirects", DEFAULT_MAX_REDIRECTS),
            proxy=pick("proxy"), user_agent=pick("user_agent", DEFAULT_USER_AGENT),
            headers_on_redirect=params.get("headers_on_redirect"),
            url_username=params.get("url_username"), url_password=params.get("url_password"),
            force_basic_auth=params.get("force_basic_auth") or False,
        )

    @classmethod
    def for_peer(cls, base: Optional[SourceOptions], token: Optional[str], fingerprint: Optional[str]) -> SourceOptions:
        """The options for a fan-out peer (``peer_server`` on another host of the deployment): its certificate
        pinned by ``fingerprint``, ``Authorization: Bearer <token>``, and nothing of the origin's: no user
        headers, credentials, CA material, client certificate or proxy (peers are inside the cluster), no
        redirects. Timeouts and the user agent come from ``base`` (the origin's options, or None)."""
        if not token or not fingerprint:
            raise InvalidInput("a peer source needs both peer_token and peer_fingerprint")
        base = base or cls()
        return cls(headers={"Authorization": "Bearer %s" % token}, pin_sha256=fingerprint,
                   connect_timeout=base.connect_timeout, read_timeout=base.read_timeout, follow_redirects=False,
                   proxy="", user_agent=base.user_agent, trust_dir=None)

    def ssl_context(self) -> ssl.SSLContext:
        """The client SSL context, built on first use (so trust problems only matter for https URLs)."""
        with self._lock:
            if self._ssl_context is None and self.pin_sha256:
                self._ssl_context = build_pinned_context(self.client_cert, self.client_key)
            if self._ssl_context is None:
                self._ssl_context = build_ssl_context(
                    validate_certs=self.validate_certs, ca_path=self.ca_path, trust_dir=self.trust_dir,
                    client_cert=self.client_cert, client_key=self.client_key)
            return self._ssl_context

    def __repr__(self):
        return ("SourceOptions(headers=%s, ca_path=%r, trust_dir=%r, validate_certs=%r, client_cert=%r, "
                "connect_timeout=%r, read_timeout=%r, follow_redirects=%r, max_redirects=%r, proxy=%r, pin_sha256=%r)"
                % (sorted(self.headers), self.ca_path, self.trust_dir, self.validate_certs, self.client_cert,
                   self.connect_timeout, self.read_timeout, self.follow_redirects, self.max_redirects,
                   redact_url(self.proxy) if self.proxy else self.proxy, self.pin_sha256))


def _positive(name, value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise InvalidInput("%s must be a number of seconds greater than 0" % name)
    return number


def _basic_auth(username, password):
    raw = "%s:%s" % (unquote(username or ""), unquote(password or ""))
    return "Basic " + base64.b64encode(raw.encode("utf-8")).decode("ascii")


class _Target:
    """One parsed http(s) URL: where to connect and what to ask for."""

    def __init__(self, url):
        if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
            raise InvalidInput("the URL %s contains spaces or control characters: percent-encode them" % redact_url(url))
        parts = split_url(url, "cannot parse the URL %s: %s", check_port=True)
        port = parts.port
        self.scheme = parts.scheme.lower()
        if self.scheme not in _DEFAULT_PORTS:
            raise InvalidInput("%s is not an http or https URL" % redact_url(url))
        if not parts.hostname:
            raise InvalidInput("the URL %s has no host name" % redact_url(url))
        self.url = url
        self.host = parts.hostname
        self.port = port or _DEFAULT_PORTS[self.scheme]
        self.path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        host_port = ("[%s]" % self.host if ":" in self.host else self.host) + ("" if port is None else ":%d" % port)
        # The URL without credentials and fragment: what an http proxy is asked for.
        self.absolute = urlunsplit((self.scheme, host_port, parts.path or "/", parts.query, ""))
        self.authorization = _basic_auth(parts.username, parts.password) if parts.username is not None else None

    @property
    def origin(self):
        return (self.host.lower(), self.port)


class _Proxy:
    def __init__(self, url):
        self.url = url
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme.lower() != "http":
            raise InvalidInput("proxy %s: only http:// proxies are supported (https URLs go through them in a "
                               "CONNECT tunnel)" % redact_url(url))
        try:
            self.port = parts.port or 80
        except ValueError as exc:
            raise InvalidInput("cannot parse the proxy URL %s: %s" % (redact_url(url), exc)) from exc
        if not parts.hostname:
            raise InvalidInput("the proxy URL %s has no host name" % redact_url(url))
        self.host = parts.hostname
        self.authorization = _basic_auth(parts.username, parts.password) if parts.username is not None else None


def _proxy_for(options, target):
    if options.proxy is not None:
        return _Proxy(options.proxy) if options.proxy else None
    proxies = getproxies_environment()
    url = proxies.get(target.scheme)
    if not url or proxy_bypass_environment("%s:%d" % (target.host, target.port), proxies):
        return None
    return _Proxy(url)


def _content_length(response):
    value = response.getheader("Content-Length")
    if value is None:
        return None
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        return None
    return int(values.pop())


def _content_range(response):
    """``(first, last, total_or_None)`` from a 206's Content-Range, or None when it is missing or unreadable."""
    match = _CONTENT_RANGE.match(response.getheader("Content-Range") or "")
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def _validators(response):
    return {"etag": response.getheader("ETag"), "last_modified": response.getheader("Last-Modified")}


def if_range_value(validators: Optional[Mapping[str, Optional[str]]]) -> Optional[str]:
    """What to send as If-Range: a strong ETag, else Last-Modified, else None (weak tags are not allowed)."""
    if not validators:
        return None
    etag = validators.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return validators.get("last_modified") or None


def _check_same_version(response, url, validators):
    """A 206 must come from the version the earlier bytes came from: every validator both the saved ones and
    the answer carry must be equal. A server (or proxy) that ignores If-Range answers 206 with the new version's
    ETag; its bytes appended to the old ones would install an image mixing both. Raises SourceError (reason
    ``changed``: the engine downloads again from byte 0)."""
    saved_etag, etag = (validators or {}).get("etag"), response.getheader("ETag")
    pairs = (("etag", "ETag"), ("last_modified", "Last-Modified"))
    if saved_etag and etag and not saved_etag.startswith("W/") and not etag.startswith("W/"):
        pairs = pairs[:1]  # strong ETags on both sides decide alone (Last-Modified may be rendered per answer)
    for key, header in pairs:
        saved = (validators or {}).get(key)
        now = response.getheader(header)
        if saved and now and saved != now:
            raise _fail("%s answered 206 for another version of the file (%s %s, the earlier bytes came with %s): "
                        "it ignored If-Range" % (redact_url(url), header, now, saved), url, reason="changed")


def _accepts_ranges(response):
    return response.status == 206 or "bytes" in (response.getheader("Accept-Ranges") or "").lower()


def status_error(url: str, status: int, reason: str = "", retry_after: Optional[str] = None) -> HTTPStatusError:
    """HTTPStatusError for an unusable answer: 5xx, 408 and 429 are retryable here and elsewhere, other 4xx
    nowhere (the same URL is asked the same way from every host)."""
    hint = ""
    if status in (401, 403):
        hint = " (check the credentials and headers)"
    elif status == 404:
        hint = " (check the URL)"
    error = HTTPStatusError("%s answered HTTP %d %s%s" % (redact_url(url), status, reason or "", hint), status,
                            url=redact_url(url), retry_after=retry_after)
    temporary = status >= 500 or status in RETRYABLE_STATUSES
    return error.retry_scope(temporary, temporary)


def _retry_after(response):
    """Retry-After as sent: int seconds, or the HTTP-date text (``_retry.parse_retry_after`` reads both)."""
    value = (response.getheader("Retry-After") or "").strip()
    return int(value) if value.isdigit() else (value or None)


def _fail(msg, url, final=False, **details):
    """A SourceError; ``final``: retryable nowhere (a refused redirect, a server that cannot serve ranges: every
    host and every later attempt gets the same answer)."""
    error = SourceError(msg, url=redact_url(url), **details)
    return error.retry_scope(False, False) if final else error


class HttpBody:
    """An open response body (see the Source contract). ``readinto`` fills the caller's buffer straight from
    the socket (``http.client`` -> ``BufferedReader.readinto`` -> ``recv_into`` for large buffers)."""

    def __init__(self, connection, response, url, offset, size, read_timeout):
        self._connection = connection
        self._response = response
        self.url = url
        self.offset = offset
        self.size = size
        self.status = response.status
        self.validators = _validators(response)
        self.content_type = response.getheader("Content-Type")
        self.accept_ranges = _accepts_ranges(response)
        self.length = response.length if not response.chunked else None  # bytes this answer carries, if known
        self.received = 0
        self._read_timeout = read_timeout
        self._finished = False  # the whole body was read (a later readinto returns 0, not an error)

    def readinto(self, buf: Union[bytearray, memoryview]) -> int:
        """Fill ``buf`` (all of it unless the body ends); return the count, 0 at the end of the body."""
        response = self._response
        if response is None:
            if self._finished:
                return 0
            raise self._closed()
        try:
            count = response.readinto(buf)
        except socket.timeout as exc:
            self.close()
            raise _fail("no data from %s for %g seconds (read_timeout) at byte %d"
                        % (redact_url(self.url), self._read_timeout, self.offset + self.received), self.url,
                        reason="read_timeout") from exc
        except http.client.IncompleteRead as exc:  # a chunked body that ended early
            self.close()
            raise self._truncated() from exc
        except ssl.SSLError as exc:
            self.close()
            raise _fail(describe_tls_error(exc, self.url), self.url, reason="tls") from exc
        except (OSError, http.client.HTTPException) as exc:
            closed = self._response is None
            self.close()
            if closed:
                raise self._closed() from exc
            raise _fail("connection to %s broke at byte %d: %s"
                        % (redact_url(self.url), self.offset + self.received, exc), self.url,
                        reason="connection") from exc
        except (ValueError, AttributeError) as exc:  # close() from another thread tore the stream down
            self.close()
            raise self._closed() from exc
        if self._response is None:  # close() ran in another thread during the read
            raise self._closed()
        if count == 0 and len(buf):
            if self.length is not None and self.received < self.length:
                self.close()
                raise self._truncated()
            self._finished = True
            self.close()
        self.received += count
        return count

    def _truncated(self):
        expected = "" if self.length is None else " of %d" % (self.offset + self.length)
        return _fail("truncated body from %s: the connection closed at byte %d%s"
                     % (redact_url(self.url), self.offset + self.received, expected), self.url, reason="truncated")

    def _closed(self):
        return _fail("the transfer from %s was stopped at byte %d" % (redact_url(self.url), self.offset + self.received),
                     self.url, reason="closed")

    def close(self) -> None:
        """Release the connection. Safe from another thread: a readinto blocked there raises SourceError."""
        response, connection = self._response, self._connection
        self._response = self._connection = None
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in another thread
            except OSError:
                pass
        if response is not None:
            response.close()
        if connection is not None:
            connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return "HttpBody(%s, status=%s, offset=%d, size=%s, received=%d)" % (
            redact_url(self.url), self.status, self.offset, self.size, self.received)


class HttpSource(Source):
    """An http:// or https:// URL as a Source (see docs/architecture.md)."""

    may_answer_metalink = True  # a plain URL may answer with a Metalink Content-Type

    def __init__(self, url, options=None):
        self.options = options or SourceOptions()
        _Target(url)  # a bad URL fails here, before any connection
        self.url = url
        self._challenged = False  # the origin asked for credentials once: later requests send them at once

    def __repr__(self):
        return "HttpSource(%s)" % redact_url(self.url)

    # -- the Source contract -------------------------------------------------------------------------------------

    def open(self, offset: int = 0, validators: Optional[Mapping[str, Optional[str]]] = None,
             end: Optional[int] = None) -> HttpBody:
        """GET the body from ``offset`` (to ``end``, exclusive, when given). See the Source contract.

        With a range, ``If-Range`` carries the strong ETag or else Last-Modified of ``validators``; without
        validators the range is asked for unconditionally (the checksum is then the only guard). A 200 answer to an
        open-ended range is a restart (``body.offset == 0``); to a segment (``end``) it raises SourceError
        (reason ``no_range``); a 416 raises HTTPStatusError (reason ``range_not_satisfiable``,
        retryable: the engine starts over).
        """
        offset = int(offset)
        if offset < 0 or (end is not None and end <= offset):
            raise InvalidInput("bad byte range: offset %r, end %r" % (offset, end))
        ranged = offset > 0 or end is not None
        extra = {}
        if ranged:
            extra["Range"] = "bytes=%d-%s" % (offset, "" if end is None else end - 1)
            if_range = if_range_value(validators)
            if if_range:
                extra["If-Range"] = if_range
        connection, response, url = self._fetch("GET", extra)
        try:
            body_offset, size = self._check_answer(response, url, offset, end, ranged)
            if ranged and response.status == 206:
                _check_same_version(response, url, validators)
        except BaseException:
            response.close()
            connection.close()
            raise
        return HttpBody(connection, response, url, body_offset, size, self.options.read_timeout)

    def probe(self) -> dict[str, Any]:
        """HEAD (or a one-byte GET where HEAD is refused): what ``url_check`` reports. Non-2xx raises."""
        method = "HEAD"
        try:
            connection, response, url = self._fetch(method, {})
        except SourceError as exc:
            if exc.details.get("reason") != "connection":  # only a server that hangs up on HEAD gets a GET
                raise
            method = "GET"
            connection, response, url = self._fetch(method, {"Range": "bytes=0-0"})
        try:
            if method == "HEAD" and response.status in HEAD_FALLBACK_STATUSES:
                response.close()
                connection.close()
                connection, response, url = self._fetch("GET", {"Range": "bytes=0-0"})
            if response.status == 206:
                content_range = _content_range(response)
                size = content_range[2] if content_range else None
            elif 200 <= response.status < 300:
                size = _content_length(response)
            else:
                raise status_error(url, response.status, response.reason, _retry_after(response))
            return {
                "status": response.status,
                "size": size,
                "content_type": response.getheader("Content-Type"),
                "final_url": url,
                "validators": _validators(response),
                "accept_ranges": _accepts_ranges(response),
            }
        finally:
            response.close()
            connection.close()

    def read_head(self, count: int) -> bytes:
        """The first ``count`` bytes (fewer when the resource is shorter), with a ranged GET."""
        connection, response, url = self._fetch("GET", {"Range": "bytes=0-%d" % (max(1, count) - 1)})
        if response.status not in (200, 206):
            response.close()
            connection.close()
            raise status_error(url, response.status, response.reason, _retry_after(response))
        body = HttpBody(connection, response, url, 0, None, self.options.read_timeout)
        with body:
            buf = bytearray(count)
            view = memoryview(buf)
            filled = 0
            while filled < count:
                got = body.readinto(view[filled:])
                if not got:
                    break
                filled += got
            return bytes(buf[:filled])

    # -- internals -----------------------------------------------------------------------------------------------

    def _check_answer(self, response, url, offset, end, ranged):
        """``(body_offset, total_size)`` for a usable answer; raises for anything else."""
        status = response.status
        if status == 416:
            # The resource is shorter than the .part: it changed. Retryable: the engine starts over from byte 0.
            error = status_error(url, 416, "Range Not Satisfiable: the resource ends before byte %d; start over"
                                 % offset)
            error.retry_scope(True, True)
            error.details["reason"] = "range_not_satisfiable"
            raise error
        if status not in (200, 206):
            raise status_error(url, status, response.reason, _retry_after(response))
        if status == 200:
            length = _content_length(response)
            if end is not None and not (offset == 0 and length == end):
                raise _fail("%s ignored the request for bytes %d-%d (answered 200 with the whole resource): it "
                            "cannot serve segments" % (redact_url(url), offset, end - 1), url, final=True,
                            reason="no_range")
            return 0, length
        if not ranged:
            raise _fail("%s answered 206 Partial Content to a request for the whole resource" % redact_url(url), url,
                        reason="bad_range")
        content_range = _content_range(response)
        if content_range is None:
            raise _fail("%s answered 206 without a readable Content-Range" % redact_url(url), url, reason="bad_range")
        first, last, total = content_range
        wanted_last = end - 1 if end is not None else (total - 1 if total is not None else last)
        if first != offset or last != wanted_last:
            raise _fail("%s sent bytes %d-%d instead of %d-%d" % (redact_url(url), first, last, offset, wanted_last),
                        url, reason="bad_range")
        return offset, total

    def _fetch(self, method, extra_headers):
        """Send ``method`` and follow redirects by our rules. Returns ``(connection, response, final_url)``."""
        options = self.options
        url = self.url
        target = _Target(url)
        origin = target.origin
        keep_credentials = True
        for hop in range(options.max_redirects + 1):
            headers = {"User-Agent": options.user_agent, "Accept-Encoding": "identity"}
            if target.authorization and keep_credentials:
                headers["Authorization"] = target.authorization
            send_basic = options.basic_auth and keep_credentials
            if send_basic and (options.force_basic_auth or self._challenged):
                headers["Authorization"] = options.basic_auth
            for name, value in options.headers.items():
                # Another origin gets only the headers the user let through (never a credential header).
                if keep_credentials or name.lower() in options.headers_on_redirect:
                    headers[name] = value
            headers.update(extra_headers)
            connection, response = self._send(method, target, headers)
            if response.status == 401 and send_basic and not (options.force_basic_auth or self._challenged):
                # The server asks for credentials: send url_username/url_password once more, with them.
                response.close()
                connection.close()
                self._challenged = True
                headers["Authorization"] = options.basic_auth
                connection, response = self._send(method, target, headers)
            if response.status not in REDIRECT_STATUSES:
                return connection, response, url
            location = response.getheader("Location")
            status = response.status
            response.close()
            connection.close()
            if not options.follow_redirects:
                # A 3xx is retryable nowhere, as status_error scopes every status but 5xx, 408 and 429.
                raise status_error(url, status, "(a redirect to %s; follow_redirects is off)"
                                   % redact_url(urljoin(url, location or "")))
            if not location:
                raise _fail("%s answered %d without a Location" % (redact_url(url), status), url, final=True,
                            reason="redirect")
            next_url = urljoin(url, location.strip())
            try:
                next_target = _Target(next_url)
            except InvalidInput as exc:
                raise _fail("%s redirects to an unusable URL: %s" % (redact_url(url), exc.msg), url,
                            final=True, reason="redirect") from None
            if target.scheme == "https" and next_target.scheme == "http":
                raise _fail("refusing the redirect from %s to %s: https must not downgrade to http"
                            % (redact_url(url), redact_url(next_url)), url, final=True, reason="redirect")
            if hop == options.max_redirects:
                break
            if next_target.origin != origin and not (
                    next_target.host.lower() == origin[0] and target.scheme == "http" and next_target.scheme == "https"):
                keep_credentials = False  # another origin: no user header but the allowed ones, now or on later hops
            url, target = next_url, next_target
        raise _fail("too many redirects (more than %d) starting at %s" % (options.max_redirects, redact_url(self.url)),
                    self.url, final=True, reason="redirect")

    def _send(self, method, target, headers):
        """One request on a new connection: connect within connect_timeout, then read with read_timeout."""
        options = self.options
        if options.pin_sha256 and target.scheme != "https":
            raise InvalidInput("%s: a pinned (peer) source must be an https URL" % redact_url(target.url))
        proxy = _proxy_for(options, target)
        path = target.path
        where = "%s:%d" % (target.host, target.port)
        if target.scheme == "https":
            context = options.ssl_context()
            if proxy:
                connection = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=options.connect_timeout,
                                                         context=context)
                tunnel_headers = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
                connection.set_tunnel(target.host, target.port, headers=tunnel_headers)
            else:
                connection = http.client.HTTPSConnection(target.host, target.port,
                                                         timeout=options.connect_timeout, context=context)
        else:
            if proxy:
                connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=options.connect_timeout)
                path = target.absolute
                if proxy.authorization:
                    headers["Proxy-Authorization"] = proxy.authorization
            else:
                connection = http.client.HTTPConnection(target.host, target.port, timeout=options.connect_timeout)
        if proxy:
            where += " through the proxy %s:%d" % (proxy.host, proxy.port)
        stage = "connect to"
        try:
            connection.connect()
            if options.pin_sha256 and target.scheme == "https":
                check_pin(connection.sock, options.pin_sha256)  # before a byte of the request (the token) is sent
            connection.sock.settimeout(options.read_timeout)
            stage = "send the request to"
            connection.request(method, path, headers=headers)
            stage = "read the answer of"
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:  # ssl.SSLError and socket.timeout are OSErrors
            connection.close()
            raise self._connection_error(exc, target, where, stage) from exc
        except BaseException:
            connection.close()
            raise
        return connection, response

    def _connection_error(self, exc, target, where, stage):
        url = target.url
        if isinstance(exc, ssl.SSLError):
            if is_verification_error(exc):  # not here, but another host may trust the CA
                return TLSVerificationError(describe_tls_error(exc, url), url=redact_url(url), reason="tls")
            return _fail(describe_tls_error(exc, url), url, reason="tls")
        if isinstance(exc, socket.timeout):
            timeout = "connect_timeout" if stage == "connect to" else "read_timeout"
            seconds = self.options.connect_timeout if stage == "connect to" else self.options.read_timeout
            return _fail("cannot %s %s (%s): timed out after %g seconds (%s)"
                         % (stage, where, redact_url(url), seconds, timeout), url, reason=timeout)
        if isinstance(exc, socket.gaierror):
            return _fail("cannot resolve the host name in %s: %s" % (redact_url(url), exc.strerror or exc), url,
                         reason="dns")
        if isinstance(exc, ConnectionRefusedError):
            return _fail("connection refused by %s (%s)" % (where, redact_url(url)), url, reason="refused")
        return _fail("cannot %s %s (%s): %s" % (stage, where, redact_url(url), exc or type(exc).__name__), url,
                     reason="connection")
