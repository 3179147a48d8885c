# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""TLS trust for HTTPS sources: one ``ssl.SSLContext`` for probes, size checks and downloads alike.

Trusted: the system CA bundle, plus ``ca_path`` (a PEM file, or a directory of ``*.pem``/``*.crt``/``*.cer``
files), plus every certificate file in the trust directory that the ``certificate`` module writes. Host names are
always checked and TLS is at least 1.2 (CloudStack disables host name checks; we do not).

Two things this file does on purpose:

* A directory is read file by file and handed to OpenSSL as ``cadata``. OpenSSL's own ``capath`` only works after
  ``openssl rehash`` (hash-named links), which an operator's directory of PEMs does not have.
* ``VERIFY_X509_PARTIAL_CHAIN`` is set, so any certificate in the trust material is a trust anchor, as in a Java
  keystore: uploading a mirror's intermediate CA, or a self-signed server certificate, is enough, as it is for
  CloudStack's ``cloud.jks``.

Certificate pinning (peers of a fan-out deployment, ``docs/fanout.md``): ``build_pinned_context`` accepts any
certificate in the handshake and ``check_pin`` then accepts the connection only when the SHA-256 fingerprint of the
certificate the server sent (its DER) is the pinned one. That replaces CA validation and host name checks for that
source only: a per-deployment self-signed certificate is trusted by its fingerprint, nothing else.

Certificate metadata (subject, expiry) is not read here; that is ``_certs.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import ssl
from urllib.parse import urlsplit
from typing import Optional

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._settings import DEFAULT_TRUST_DIR
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import redact_url

# Where distributions keep the CA bundle; used when OpenSSL's compiled-in default file is missing (a Python built
# against another OpenSSL prefix, e.g. pyenv or a venv copied between hosts).
SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",                  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",                    # RHEL, Rocky, Alma, Fedora
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",   # RHEL (the extracted form)
    "/etc/ssl/ca-bundle.pem",                              # SUSE
    "/etc/ssl/cert.pem",                                   # Alpine, BSD style
)
# Files of a ca_path directory or the trust directory that hold certificates (others are ignored, e.g. the
# hash links an `openssl rehash` leaves, or README files).
CERTIFICATE_FILE_SUFFIXES = (".pem", ".crt", ".cer")

# X509_V_FLAG_PARTIAL_CHAIN: ssl.VERIFY_X509_PARTIAL_CHAIN exists from Python 3.10; the value is OpenSSL's.
_PARTIAL_CHAIN = getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0x80000)
_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN (?:TRUSTED |X509 )?CERTIFICATE-----\s.*?-----END (?:TRUSTED |X509 )?CERTIFICATE-----", re.DOTALL)

# OpenSSL verify codes (X509_V_ERR_*) that describe a certificate the trust material does not vouch for.
_UNTRUSTED_CODES = (2, 18, 19, 20, 21, 27)
_NOT_YET_VALID = 9
_EXPIRED = 10
_HOSTNAME_MISMATCH_CODES = (62, 64)  # host name, IP address
# Handshake alerts that mean "the server wants a (different) client certificate".
_CLIENT_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN",
                       "HANDSHAKE_FAILURE", "ACCESS_DENIED")
_UPLOAD_HINT = "upload its CA certificate with directdownload.kvm.certificate, or pass ca_path"


class _EncryptedKey(Exception):
    """Raised by the password callback: OpenSSL asks for a passphrase we do not have."""


def _no_passphrase():
    raise _EncryptedKey()


def load_pem_certificates(path: str) -> list[str]:
    """The certificates in ``path`` as a list of PEM strings (a DER file gives one, converted to PEM).

    Raises InvalidInput naming the file when it cannot be read or holds no certificate. Only the framing is
    checked here; OpenSSL checks the contents when they are loaded into a context.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InvalidInput("cannot read certificate file %s: %s" % (path, exc.strerror or exc), path=path) from exc
    text = data.decode("ascii", errors="replace")
    blocks = _PEM_CERTIFICATE.findall(text)
    if blocks:
        for block in blocks:
            try:
                ssl.PEM_cert_to_DER_cert(_plain_pem(block))
            except ValueError as exc:
                raise InvalidInput("%s holds a damaged PEM certificate (%s)" % (path, exc), path=path) from exc
        return [_plain_pem(block) for block in blocks]
    if data[:1] == b"\x30":  # an ASN.1 SEQUENCE: a DER-encoded certificate (common for .crt/.cer)
        return [ssl.DER_cert_to_PEM_cert(data)]
    raise InvalidInput("%s holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)" % path, path=path)


def _plain_pem(block):
    """``TRUSTED CERTIFICATE``/``X509 CERTIFICATE`` headers -> the plain ``CERTIFICATE`` form OpenSSL loads."""
    return re.sub(r"-----(BEGIN|END) (?:TRUSTED |X509 )CERTIFICATE-----", r"-----\1 CERTIFICATE-----", block)


def certificate_files(directory: str) -> list[str]:
    """Sorted paths of the certificate files (by suffix) directly in ``directory``."""
    names = sorted(os.listdir(directory))
    return [os.path.join(directory, name) for name in names
            if name.lower().endswith(CERTIFICATE_FILE_SUFFIXES) and os.path.isfile(os.path.join(directory, name))]


def _load_file(context, path):
    pems = load_pem_certificates(path)
    try:
        context.load_verify_locations(cadata="".join(pems))
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidInput("%s holds a certificate OpenSSL cannot use: %s" % (path, getattr(exc, "reason", None) or exc),
                           path=path) from exc
    return len(pems)


def _load_system_cas(context):
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    default_file = ssl.get_default_verify_paths().cafile
    if default_file and os.path.isfile(default_file):
        return
    for bundle in SYSTEM_CA_BUNDLES:
        if os.path.isfile(bundle):
            context.load_verify_locations(cafile=bundle)
            return


def _load_ca_path(context, ca_path):
    if not os.path.exists(ca_path):
        raise InvalidInput("ca_path %s does not exist" % ca_path, path=ca_path)
    if os.path.isdir(ca_path):
        files = certificate_files(ca_path)
        if not files:
            raise InvalidInput("ca_path %s is a directory without certificate files (%s)"
                               % (ca_path, ", ".join("*" + s for s in CERTIFICATE_FILE_SUFFIXES)), path=ca_path)
        for path in files:
            _load_file(context, path)
    else:
        _load_file(context, ca_path)


def _load_trust_dir(context, trust_dir):
    """Every certificate file in the trust directory; a missing directory is normal (nothing uploaded yet)."""
    if not trust_dir or not os.path.isdir(trust_dir):
        return
    for path in certificate_files(trust_dir):
        _load_file(context, path)


def _load_client_certificate(context, client_cert, client_key):
    if client_key and not client_cert:
        raise InvalidInput("client_key needs client_cert")
    for option, path in (("client_cert", client_cert), ("client_key", client_key)):
        if path and not os.path.isfile(path):
            raise InvalidInput("%s %s does not exist or is not a file" % (option, path), path=path)
    try:
        context.load_cert_chain(client_cert, client_key or None, password=_no_passphrase)
    except _EncryptedKey:
        raise InvalidInput("the client key %s is protected by a passphrase, which is not supported: use an "
                           "unencrypted PEM key readable only by root" % (client_key or client_cert)) from None
    except (ssl.SSLError, OSError) as exc:
        raise InvalidInput(
            "cannot use client_cert %s%s: %s (both must be PEM, the key must belong to the certificate; without "
            "client_key the key must be in the client_cert file)"
            % (client_cert, " with client_key %s" % client_key if client_key else "",
               getattr(exc, "reason", None) or exc), path=client_cert) from exc


def build_ssl_context(validate_certs: bool = True, ca_path: Optional[str] = None,
                      trust_dir: Optional[str] = DEFAULT_TRUST_DIR, client_cert: Optional[str] = None,
                      client_key: Optional[str] = None) -> ssl.SSLContext:
    """The client ``ssl.SSLContext`` for HTTPS sources.

    ``validate_certs=False`` turns certificate and host name checks off: INSECURE, anyone on the path can serve
    any bytes (a checksum still protects the image). Bad trust material raises InvalidInput naming the file.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if validate_certs:
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        context.verify_flags |= _PARTIAL_CHAIN
        _load_system_cas(context)
        if ca_path:
            _load_ca_path(context, ca_path)
        _load_trust_dir(context, trust_dir)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert or client_key:
        _load_client_certificate(context, client_cert, client_key)
    return context


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def normalize_fingerprint(value: object) -> str:
    """A SHA-256 certificate fingerprint as 64 lower-case hex digits.

    Accepts ``AB:CD:...`` (openssl, keytool, the peer_server result), plain hex, and a ``sha256:``/``SHA256=``
    prefix. Raises InvalidInput for anything else (the value is not secret and may be shown).
    """
    text = str(value or "").strip()
    for prefix in ("sha256:", "sha256=", "sha256 fingerprint="):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
    text = text.replace(":", "").replace(" ", "").lower()
    if not _HEX64.match(text):
        raise InvalidInput("%r is not a SHA-256 certificate fingerprint (64 hex digits, colons allowed)" % (value,))
    return text


def fingerprint_of(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as ``AB:CD:...`` (the form openssl and keytool print)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def build_pinned_context(client_cert: Optional[str] = None, client_key: Optional[str] = None) -> ssl.SSLContext:
    """The client context for a pinned source: TLS >= 1.2, no CA or host name check here; ``check_pin`` after the
    handshake is what decides (call it before sending anything)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if client_cert or client_key:
        _load_client_certificate(context, client_cert, client_key)
    return context


class PinMismatch(ssl.SSLError):
    """The server's certificate is not the pinned one (raised before any request byte is sent)."""


def check_pin(sock: ssl.SSLSocket, pin_sha256: str) -> None:
    """Raise PinMismatch unless the certificate ``sock`` (a connected SSLSocket) got is the one pinned.

    ``pin_sha256`` is a normalized fingerprint (``normalize_fingerprint``). Constant-time compare.
    """
    der = sock.getpeercert(binary_form=True) if hasattr(sock, "getpeercert") else None
    if not der:
        raise PinMismatch("the server sent no certificate (a pinned peer must present its certificate)")
    got = hashlib.sha256(der).hexdigest()
    if not hmac.compare_digest(got, pin_sha256):
        raise PinMismatch("the server's certificate (SHA-256 %s) is not the pinned one (%s)"
                          % (fingerprint_of(der), _colon(pin_sha256)))


def _colon(hex_digest):
    text = hex_digest.upper()
    return ":".join(text[i:i + 2] for i in range(0, len(text), 2))


def is_verification_error(exc: BaseException) -> bool:
    """True when ``exc`` is a TLS failure that another attempt cannot fix (trust, host name, client cert)."""
    if isinstance(exc, (ssl.SSLCertVerificationError, PinMismatch)):
        return True
    if isinstance(exc, ssl.SSLError):
        reason = (getattr(exc, "reason", None) or str(exc)).upper()
        return any(alert in reason for alert in _CLIENT_CERT_ALERTS) or "WRONG_VERSION_NUMBER" in reason \
            or "UNSUPPORTED_PROTOCOL" in reason
    return False


def describe_tls_error(exc: BaseException, url: str) -> str:
    """Operator text for a TLS failure while talking to ``url`` (redacted here)."""
    where = redact_url(url)
    host = urlsplit(url).hostname or where
    if isinstance(exc, PinMismatch):
        return "TLS certificate of %s refused: %s" % (where, exc.args[0] if exc.args else exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
        if code in _HOSTNAME_MISMATCH_CODES or "mismatch" in detail.lower():
            return ("TLS host name mismatch for %s: the server's certificate is not valid for %s (%s); use the host "
                    "name the certificate was issued for" % (where, host, detail))
        if code == _EXPIRED:
            return "the TLS certificate of %s has expired (%s): renew it on the server" % (where, detail)
        if code == _NOT_YET_VALID:
            return ("the TLS certificate of %s is not valid yet (%s): check the clocks of this host and the server"
                    % (where, detail))
        if code in _UNTRUSTED_CODES:
            return "TLS certificate of %s not trusted (%s): %s" % (where, detail, _UPLOAD_HINT)
        return "TLS certificate of %s refused: %s" % (where, detail)
    reason = getattr(exc, "reason", None) or str(exc)
    upper = reason.upper()
    if any(alert in upper for alert in _CLIENT_CERT_ALERTS):
        return ("TLS handshake with %s refused by the server (%s): it requires a client certificate "
                "(client_cert/client_key) or does not accept the one sent" % (where, reason))
    if isinstance(exc, ssl.SSLEOFError) or "UNEXPECTED_EOF" in upper:
        return ("the server %s closed the TLS connection unexpectedly (%s); if it requires a client certificate, set "
                "client_cert/client_key" % (where, reason))
    if "WRONG_VERSION_NUMBER" in upper or "UNSUPPORTED_PROTOCOL" in upper:
        return ("TLS handshake with %s failed (%s): the server does not speak TLS 1.2 or newer on this port (is it "
                "plain http?)" % (where, reason))
    return "TLS error with %s: %s" % (where, reason)
