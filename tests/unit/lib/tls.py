# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A private certificate authority for tests, made at run time with ``cryptography``.

Typical use::

    from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA
    ca = TestCA()
    ca_file = ca.ca_pem_path(tmp_path)                           # what ca_path / the trust directory get
    with ImageServer(root, ssl_context=ca.server_context()) as srv:   # cert for 127.0.0.1 and localhost
        ...
    wrong = ca.server_context(hostnames=("wrong.example",))      # trusted CA, wrong host name
    cert, key = ca.client_cert_files(tmp_path)                   # client certificate signed by this CA
    expired = TestCA(not_after=days_from_now(-1))                # an expired CA (for certificate checks)
    pem = make_ca_certificate_pem(not_before=..., not_after=..., common_name="Old CA")

Keys are EC P-256 (fast to make); pass ``key_type="rsa"`` where a tool insists on RSA.
Dates are timezone-aware UTC ``datetime`` objects; :func:`days_from_now` makes them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTNAMES = ("127.0.0.1", "localhost")


def days_from_now(days):
    """A UTC datetime ``days`` days from now (negative = in the past)."""
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)


def _validity(not_before, not_after, default_days):
    """Fill in missing dates: valid from yesterday for ``default_days``, or for a year before a past end date."""
    if not_before is None:
        not_before = days_from_now(-1)
        if not_after is not None and not_after <= not_before:
            not_before = not_after - datetime.timedelta(days=365)
    if not_after is None:
        not_after = max(not_before, days_from_now(0)) + datetime.timedelta(days=default_days)
    return not_before, not_after


def _new_key(key_type="ec"):
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError("key_type must be 'ec' or 'rsa', not %r" % (key_type,))


def _name(common_name):
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "directdownload.kvm tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _san(hostnames):
    entries = []
    for name in hostnames:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _ca_certificate(key, common_name, not_before, not_after, issuer_cert=None, issuer_key=None):
    """A CA certificate: self-signed unless ``issuer_cert``/``issuer_key`` make it an intermediate."""
    subject = _name(common_name)
    not_before, not_after = _validity(not_before, not_after, 3650)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_ca_certificate_pem(not_before=None, not_after=None, common_name="directdownload test CA",
                            key_type="ec", with_key=False):
    """PEM text of a fresh self-signed CA certificate with the given validity.

    Returns the certificate PEM, or ``(cert_pem, key_pem)`` with ``with_key=True``. Expired:
    ``not_after=days_from_now(-1)``; not yet valid: ``not_before=days_from_now(1)``.
    """
    key = _new_key(key_type)
    cert = _ca_certificate(key, common_name, not_before, not_after)
    return (_cert_pem(cert), _key_pem(key)) if with_key else _cert_pem(cert)


def make_self_signed_server_pem(hostnames=DEFAULT_HOSTNAMES, not_before=None, not_after=None, key_type="ec"):
    """``(cert_pem, key_pem)`` of a self-signed server certificate (no CA): what a lazy mirror serves."""
    key = _new_key(key_type)
    name = _name(hostnames[0])
    not_before, not_after = _validity(not_before, not_after, 365)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_san(hostnames), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def _write(directory, name, text, mode=0o644):
    path = os.path.join(str(directory), name)
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return path


class TestCA:
    """A certificate authority that issues server and client certificates for loopback tests.

    ``TestCA(parent=other_ca)`` makes an intermediate CA signed by ``other_ca``: servers issued by it send the
    intermediate in their chain (``server_context``), so trusting only the root must work.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, common_name="directdownload test CA", not_before=None, not_after=None, key_type="ec",
                 parent=None):
        self.common_name = common_name
        self.key_type = key_type
        self.parent = parent
        self.key = _new_key(key_type)
        self.cert = _ca_certificate(self.key, common_name, not_before, not_after,
                                    issuer_cert=parent.cert if parent else None,
                                    issuer_key=parent.key if parent else None)
        self.cert_pem = _cert_pem(self.cert)
        self.key_pem = _key_pem(self.key)

    def chain_pem(self):
        """This CA's certificate followed by its parents' (intermediates first), as servers send it."""
        return self.cert_pem + (self.parent.chain_pem() if self.parent else "")

    def ca_pem_path(self, directory, name=None):
        """Write this CA's certificate as PEM into ``directory`` and return the path."""
        return _write(directory, name or "ca-%x.pem" % self.cert.serial_number, self.cert_pem)

    def issue_cert_pem(self, hostnames=DEFAULT_HOSTNAMES, not_before=None, not_after=None, client=False,
                       common_name=None):
        """``(cert_pem, key_pem)`` of a leaf certificate signed by this CA (server unless ``client=True``)."""
        key = _new_key(self.key_type)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        not_before, not_after = _validity(not_before, not_after, 365)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name or (hostnames[0] if hostnames else "client")))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        if hostnames:
            builder = builder.add_extension(_san(hostnames), critical=False)
        return _cert_pem(builder.sign(self.key, hashes.SHA256())), _key_pem(key)

    def server_cert_files(self, directory, hostnames=DEFAULT_HOSTNAMES, name="server", **validity):
        """Write ``<name>.crt`` (leaf + intermediates) and ``<name>.key``; return ``(cert_path, key_path)``.

        For servers run as separate processes (``servers.py --tls-cert/--tls-key``, nginx).
        """
        cert_pem, key_pem = self.issue_cert_pem(hostnames, **validity)
        chain = cert_pem + (self.chain_pem() if self.parent else "")
        return (_write(directory, name + ".crt", chain), _write(directory, name + ".key", key_pem, 0o600))

    def client_cert_files(self, directory, name="client", common_name="directdownload test client"):
        """Write a client certificate and its key; return ``(cert_path, key_path)``."""
        cert_pem, key_pem = self.issue_cert_pem((), client=True, common_name=common_name)
        return (_write(directory, name + ".crt", cert_pem), _write(directory, name + ".key", key_pem, 0o600))

    def server_context(self, hostnames=DEFAULT_HOSTNAMES, require_client_cert=False, client_ca=None,
                       **validity):
        """A server-side ``ssl.SSLContext`` with a certificate for ``hostnames`` signed by this CA.

        ``require_client_cert=True`` makes the server demand a client certificate signed by ``client_ca``
        (default: this CA). ``not_before``/``not_after`` set the server certificate's validity.
        """
        cert_pem, key_pem = self.issue_cert_pem(hostnames, **validity)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert_path = _write(tmp, "server.crt", cert_pem + (self.chain_pem() if self.parent else ""))
            key_path = _write(tmp, "server.key", key_pem, 0o600)
            context.load_cert_chain(cert_path, key_path)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=(client_ca or self).cert_pem)
        return context


def server_context_from_pem(cert_pem, key_pem):
    """A server-side context for an arbitrary certificate (e.g. :func:`make_self_signed_server_pem`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        context.load_cert_chain(_write(tmp, "server.crt", cert_pem), _write(tmp, "server.key", key_pem, 0o600))
    return context
