# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_trust: the SSL context against real loopback TLS servers made with a test CA."""

from __future__ import annotations

import http.client
import ssl

import pytest
from cryptography.hazmat.primitives import serialization

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._trust import (
    build_ssl_context, describe_tls_error, is_verification_error, load_pem_certificates)
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import (
    TestCA, days_from_now, make_self_signed_server_pem, server_context_from_pem)


# www and ca: tests/unit/conftest.py


@pytest.fixture(autouse=True)
def hello(www):
    """What every test's TLS server serves: ``f.bin``."""
    (www / "f.bin").write_bytes(b"hello")


def fetch(context, server, host="127.0.0.1"):
    """A HEAD over TLS with ``context``; returns the status or raises the ssl error."""
    conn = http.client.HTTPSConnection(host, server.port, timeout=10, context=context)
    try:
        conn.request("HEAD", "/f.bin")
        return conn.getresponse().status
    finally:
        conn.close()


def tls_error(context, server, host="127.0.0.1"):
    with pytest.raises(ssl.SSLError) as info:
        fetch(context, server, host)
    return info.value


def test_defaults_are_strict_and_include_system_cas(tmp_path):
    context = build_ssl_context(trust_dir=str(tmp_path / "missing"))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.cert_store_stats()["x509_ca"] > 0


def test_ca_path_file(ca, www, tmp_path):
    with ImageServer(www, ssl_context=ca.server_context()) as srv:
        assert fetch(build_ssl_context(ca_path=ca.ca_pem_path(tmp_path), trust_dir=None), srv) == 200
        error = tls_error(build_ssl_context(trust_dir=None), srv)
        assert isinstance(error, ssl.SSLCertVerificationError) and is_verification_error(error)


def test_ca_path_directory_without_hash_links(ca, www, tmp_path):
    other = TestCA(common_name="other CA")
    trust = tmp_path / "cas"
    trust.mkdir()
    ca.ca_pem_path(trust, "one.pem")
    (trust / "two.crt").write_text(other.cert_pem)
    (trust / "README").write_text("not a certificate, ignored")
    context = build_ssl_context(ca_path=str(trust), trust_dir=None)
    with ImageServer(www, ssl_context=ca.server_context()) as one, \
            ImageServer(www, ssl_context=other.server_context()) as two:
        assert fetch(context, one) == 200 and fetch(context, two) == 200


def test_der_certificate_file(ca, www, tmp_path):
    der = tmp_path / "ca.cer"
    der.write_bytes(ca.cert.public_bytes(serialization.Encoding.DER))
    assert len(load_pem_certificates(str(der))) == 1
    with ImageServer(www, ssl_context=ca.server_context()) as srv:
        assert fetch(build_ssl_context(ca_path=str(der), trust_dir=None), srv) == 200


def test_trust_dir_is_picked_up_and_missing_is_fine(ca, www, tmp_path):
    trust_dir = tmp_path / "trust.d"
    build_ssl_context(trust_dir=str(trust_dir))  # missing: no error
    trust_dir.mkdir()
    ca.ca_pem_path(trust_dir)
    with ImageServer(www, ssl_context=ca.server_context()) as srv:
        assert fetch(build_ssl_context(trust_dir=str(trust_dir)), srv) == 200


def test_bundle_with_several_certificates(ca, tmp_path):
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(ca.cert_pem + "\n" + TestCA().cert_pem)
    assert len(load_pem_certificates(str(bundle))) == 2


@pytest.mark.parametrize("content,words", [
    ("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n", "damaged"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "OpenSSL cannot use"),
    ("just text\n", "no PEM certificate"),
])
def test_bad_pem_names_the_file(tmp_path, content, words):
    bad = tmp_path / "bad.pem"
    bad.write_text(content)
    with pytest.raises(InvalidInput) as info:
        build_ssl_context(ca_path=str(bad), trust_dir=None)
    assert str(bad) in info.value.msg and words in info.value.msg
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    (trust_dir / "broken.pem").write_text(content)
    with pytest.raises(InvalidInput) as info:
        build_ssl_context(trust_dir=str(trust_dir))
    assert "broken.pem" in info.value.msg


def test_ca_path_missing_or_empty(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        build_ssl_context(ca_path=str(tmp_path / "nope.pem"))
    with pytest.raises(InvalidInput, match="without certificate files"):
        build_ssl_context(ca_path=str(tmp_path))


def test_partial_chain_trusts_an_uploaded_intermediate(www, tmp_path):
    top = TestCA(common_name="root only")
    intermediate = TestCA(common_name="intermediate", parent=top)
    with ImageServer(www, ssl_context=intermediate.server_context()) as srv:
        assert fetch(build_ssl_context(ca_path=intermediate.ca_pem_path(tmp_path), trust_dir=None), srv) == 200
        assert fetch(build_ssl_context(ca_path=top.ca_pem_path(tmp_path), trust_dir=None), srv) == 200


def test_self_signed_server_certificate_in_trust_dir(www, tmp_path):
    cert_pem, key_pem = make_self_signed_server_pem()
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    (trust_dir / "mirror.pem").write_text(cert_pem)
    with ImageServer(www, ssl_context=server_context_from_pem(cert_pem, key_pem)) as srv:
        assert fetch(build_ssl_context(trust_dir=str(trust_dir)), srv) == 200


def test_validate_certs_false_accepts_anything(www):
    with ImageServer(www, ssl_context=TestCA().server_context(hostnames=("wrong.example",))) as srv:
        context = build_ssl_context(validate_certs=False)
        assert context.verify_mode == ssl.CERT_NONE and fetch(context, srv) == 200


def test_messages_for_verification_failures(ca, www, tmp_path):
    trusted = build_ssl_context(ca_path=ca.ca_pem_path(tmp_path), trust_dir=None)
    url = "https://user:pw@127.0.0.1/f.bin?token=secret"
    with ImageServer(www, ssl_context=TestCA().server_context()) as srv:
        text = describe_tls_error(tls_error(trusted, srv), url)
        assert "not trusted" in text and "directdownload.kvm.certificate" in text
        assert "secret" not in text and "pw" not in text
    with ImageServer(www, ssl_context=ca.server_context(hostnames=("wrong.example",))) as srv:
        error = tls_error(trusted, srv)
        assert is_verification_error(error) and "host name mismatch" in describe_tls_error(error, url)
    with ImageServer(www, ssl_context=ca.server_context(not_after=days_from_now(-1))) as srv:
        assert "expired" in describe_tls_error(tls_error(trusted, srv), url)
    with ImageServer(www, ssl_context=ca.server_context(not_before=days_from_now(2))) as srv:
        assert "not valid yet" in describe_tls_error(tls_error(trusted, srv), url)


def test_client_certificate(ca, www, tmp_path):
    cert, key = ca.client_cert_files(tmp_path)
    trust = ca.ca_pem_path(tmp_path)
    with ImageServer(www, ssl_context=ca.server_context(require_client_cert=True)) as srv:
        error = tls_error(build_ssl_context(ca_path=trust, trust_dir=None), srv)
        assert is_verification_error(error) and "client certificate" in describe_tls_error(error, srv.url("f.bin"))
        assert fetch(build_ssl_context(ca_path=trust, trust_dir=None, client_cert=cert, client_key=key), srv) == 200
        combined = tmp_path / "combined.pem"
        combined.write_text(open(cert).read() + open(key).read())
        assert fetch(build_ssl_context(ca_path=trust, trust_dir=None, client_cert=str(combined)), srv) == 200


def test_client_certificate_errors(ca, tmp_path):
    cert, key = ca.client_cert_files(tmp_path)
    _other_cert, other_key = ca.client_cert_files(tmp_path, name="other")
    with pytest.raises(InvalidInput, match="does not exist"):
        build_ssl_context(client_cert=str(tmp_path / "missing.crt"), trust_dir=None)
    with pytest.raises(InvalidInput, match="needs client_cert"):
        build_ssl_context(client_key=key, trust_dir=None)
    with pytest.raises(InvalidInput, match="must belong"):
        build_ssl_context(client_cert=cert, client_key=other_key, trust_dir=None)
    private = serialization.load_pem_private_key(open(key, "rb").read(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.BestAvailableEncryption(b"passphrase")))
    with pytest.raises(InvalidInput, match="passphrase"):
        build_ssl_context(client_cert=cert, client_key=str(encrypted), trust_dir=None)


def test_plain_http_port_gives_a_helpful_message(www):
    with ImageServer(www) as srv:
        error = tls_error(build_ssl_context(trust_dir=None), srv)
        assert "plain http" in describe_tls_error(error, srv.url("f.bin", scheme="https"))


def test_load_pem_certificates_unreadable(tmp_path):
    with pytest.raises(InvalidInput, match="cannot read"):
        load_pem_certificates(str(tmp_path / "absent.pem"))
