# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_certs: certificate validation, the real keytool on real JKS and PKCS12 keystores, the trust directory.

Keystores that already hold a private key entry (made once per session with ``keytool -genkeypair``, then copied
per test) stand for the CloudStack agent's ``cloud.jks``: that entry must survive every import, rotation and
revocation. Each keytool call costs a JVM start (~0.2 s), so the keystores are shared and copied.
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ansible_collections.directdownload.kvm.plugins.module_utils import _certs
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.tests.unit.lib.require import needs_tool, require_tool
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA, days_from_now, make_ca_certificate_pem

KEYTOOL = _certs.find_keytool()
needs_keytool = needs_tool("keytool", _certs.find_keytool)

# Distinctive, so that finding it anywhere in output is unambiguous.
PASSWORD = "Pa55-w0rd-unlikely-9f3c"
HOST_KEY_ALIAS = "agent-host"


def pem(cert):
    return cert.public_bytes(Encoding.PEM).decode("ascii")


@pytest.fixture(scope="session")
def ca_pems():
    """Two valid CA certificates (the second is the "rotated" one), an expired and a not yet valid one."""
    return {
        "one": make_ca_certificate_pem(common_name="Mirror CA one"),
        "two": make_ca_certificate_pem(common_name="Mirror CA two"),
        "expired": make_ca_certificate_pem(not_before=days_from_now(-30), not_after=days_from_now(-1), common_name="Old CA"),
        "future": make_ca_certificate_pem(not_before=days_from_now(2), not_after=days_from_now(30), common_name="Future CA"),
    }


@pytest.fixture(scope="session")
def agent_keystores(tmp_path_factory):
    """A JKS and a PKCS12 keystore, each with the agent's own key pair (PrivateKeyEntry), made once."""
    require_tool("keytool", _certs.find_keytool)
    base = tmp_path_factory.mktemp("agent-keystores")
    made = {}
    for store_type, name in (("JKS", "cloud.jks"), ("PKCS12", "cloud.p12")):
        path = str(base / name)
        subprocess.run(
            [KEYTOOL, "-genkeypair", "-alias", HOST_KEY_ALIAS, "-keyalg", "EC", "-groupname", "secp256r1",
             "-dname", "CN=kvm-host-1", "-validity", "30", "-keystore", path, "-storetype", store_type,
             "-storepass:env", "KSPASS", "-keypass:env", "KSPASS"],
            env=dict(os.environ, KSPASS=PASSWORD), check=True, capture_output=True,
        )
        made[store_type] = path
    return made


def copy_of(source, tmp_path):
    path = str(tmp_path / os.path.basename(source))
    shutil.copyfile(source, path)
    return path


@pytest.fixture(params=["JKS", "PKCS12"])
def keystore(request, agent_keystores, tmp_path):
    """A fresh copy of an agent keystore of each type, for what depends on the type."""
    return copy_of(agent_keystores[request.param], tmp_path)


@pytest.fixture
def jks(agent_keystores, tmp_path):
    """A fresh copy of the JKS agent keystore (CloudStack's cloud.jks), for what does not depend on the type."""
    return copy_of(agent_keystores["JKS"], tmp_path)


def keytool_list(path, password=PASSWORD):
    return {entry.alias: entry for entry in _certs.Keytool(KEYTOOL, password).list(path)}


# --------------------------------------------------------------------------------------------------------------
# Aliases


@pytest.mark.parametrize("alias", ["a", "mirror-ca", "Mirror-CA-2", "x" * 63, "9", "cloudy", "my-cloud", "cloudc"])
def test_accepted_aliases(alias):
    assert _certs.validate_alias(alias) == alias
    assert _certs.canonical_alias(alias) == alias.lower()


@pytest.mark.parametrize("alias, words", [
    ("", "required"),
    (None, "required"),
    ("-ca", "hyphen"),
    ("ca-", "hyphen"),
    ("x" * 64, "1 to 63"),
    ("my_ca", "letters, digits and hyphens"),
    ("my.ca", "letters, digits and hyphens"),
    ("my ca", "letters, digits and hyphens"),
    ("../etc", "letters, digits and hyphens"),
    ("cloud", "reserved"),
    ("CLOUD", "reserved"),
    ("cloudca", "reserved"),
    ("cloudca-root", "reserved"),
    ("CloudCA1", "reserved"),
])
def test_refused_aliases(alias, words):
    with pytest.raises(InvalidInput) as err:
        _certs.validate_alias(alias)
    assert words in err.value.msg


# --------------------------------------------------------------------------------------------------------------
# Parsing


def test_pem_base64_body_and_der_give_the_same_certificate(ca_pems):
    cert = _certs.load_certificate(ca_pems["one"])
    body = "".join(ca_pems["one"].strip().splitlines()[1:-1])
    wrapped = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    der = cert.public_bytes(Encoding.DER)
    fingerprint = _certs.fingerprint(cert)
    assert _certs.fingerprint(_certs.load_certificate(body)) == fingerprint             # one line, as CloudStack takes
    assert _certs.fingerprint(_certs.load_certificate(wrapped + "\n")) == fingerprint
    assert _certs.fingerprint(_certs.load_certificate(der)) == fingerprint
    assert _certs.fingerprint(_certs.load_certificate(ca_pems["one"].encode())) == fingerprint
    assert _certs.fingerprint(_certs.load_certificate("subject=CN=x\n" + ca_pems["one"])) == fingerprint


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("   \n", "empty"),
    ("not a certificate at all!", "cannot parse"),
    ("QUJDRA==", "cannot parse"),
    ("-----BEGIN CERTIFICATE-----\nQUJDRA==\n", "unbalanced"),
    ("-----BEGIN CERTIFICATE-----\nQUJDRA==\n-----END CERTIFICATE-----\n", "cannot parse"),
    ("-----BEGIN PUBLIC KEY-----\nQUJDRA==\n-----END PUBLIC KEY-----\n", "no CERTIFICATE block"),
])
def test_unparsable_certificates_are_refused(text, words):
    with pytest.raises(InvalidInput) as err:
        _certs.load_certificate(text)
    assert words in err.value.msg


def test_two_certificates_or_a_private_key_are_refused(ca_pems):
    with pytest.raises(InvalidInput, match="holds 2 certificates"):
        _certs.load_certificate(ca_pems["one"] + ca_pems["two"])
    cert_pem, key_pem = make_ca_certificate_pem(with_key=True)
    with pytest.raises(InvalidInput, match="private key"):
        _certs.load_certificate(cert_pem + key_pem)


def test_describe_gives_what_operators_compare(ca_pems):
    cert = _certs.load_certificate(ca_pems["one"])
    now = _certs.not_before(cert) + datetime.timedelta(days=10)
    info = _certs.describe(cert, now=now, warning_days=30)
    assert info["subject"].startswith("CN=Mirror CA one") and info["subject"] == info["issuer"]
    assert info["serial"] == "%X" % cert.serial_number
    assert info["not_before"].endswith("Z") and info["not_after"].endswith("Z")
    # keytool's and openssl's form: upper-case hex pairs joined by colons.
    assert len(info["fingerprint"]) == 32 * 3 - 1 and info["fingerprint"] == info["fingerprint"].upper()
    assert info["is_ca"] is True
    assert info["expired"] is False and info["not_yet_valid"] is False
    assert info["days_until_expiry"] == (_certs.not_after(cert) - now).days
    assert info["expiring_soon"] is False


def test_expiry_flags_follow_the_threshold(ca_pems):
    cert = _certs.load_certificate(ca_pems["one"])
    end = _certs.not_after(cert)
    soon = _certs.describe(cert, now=end - datetime.timedelta(days=10, hours=1), warning_days=30)
    assert soon["days_until_expiry"] == 10 and soon["expiring_soon"] is True and soon["expired"] is False
    assert _certs.describe(cert, now=end - datetime.timedelta(days=10, hours=1), warning_days=10)["expiring_soon"] is False
    gone = _certs.describe(cert, now=end + datetime.timedelta(days=2))
    assert gone["expired"] is True and gone["expiring_soon"] is False and gone["days_until_expiry"] < 0


def test_validity_window_is_checked_with_clear_dates(ca_pems):
    expired = _certs.load_certificate(ca_pems["expired"])
    with pytest.raises(InvalidInput) as err:
        _certs.check_validity(expired)
    assert "expired on %s" % _certs.format_time(_certs.not_after(expired)) in err.value.msg
    assert "valid from %s" % _certs.format_time(_certs.not_before(expired)) in err.value.msg
    future = _certs.load_certificate(ca_pems["future"])
    with pytest.raises(InvalidInput, match="not valid yet: it becomes valid on"):
        _certs.check_validity(future)
    _certs.check_validity(_certs.load_certificate(ca_pems["one"]))


def test_an_expired_certificate_is_refused_before_any_store_is_touched(ca_pems, tmp_path):
    trust = tmp_path / "trust"
    with pytest.raises(InvalidInput, match="expired"):
        _certs.ensure_certificate("old", _certs.load_certificate(ca_pems["expired"]), trust_dir=str(trust))
    assert not trust.exists()


def _signed_pem(basic_constraints, key_usage):
    """A self-signed certificate with the given extensions (None: left out), made with ``cryptography``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror.example")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(days_from_now(-1))
               .not_valid_after(days_from_now(30)))
    if basic_constraints is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=basic_constraints, path_length=None), critical=True)
    if key_usage is not None:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=key_usage, crl_sign=key_usage, encipher_only=False,
            decipher_only=False), critical=True)
    return pem(builder.sign(key, hashes.SHA256()))


@pytest.mark.parametrize("basic_constraints, key_usage, words", [
    (None, None, "no basicConstraints extension"),
    (False, None, "CA:FALSE"),
    (False, True, "CA:FALSE"),
    (True, False, "keyUsage does not include keyCertSign"),
])
def test_a_certificate_that_cannot_sign_is_refused_before_any_store_is_touched(
        tmp_path, basic_constraints, key_usage, words):
    cert = _certs.load_certificate(_signed_pem(basic_constraints, key_usage))
    trust = tmp_path / "trust"
    with pytest.raises(InvalidInput) as err:
        _certs.ensure_certificate("mirror", cert, trust_dir=str(trust))
    assert words in err.value.msg and "allow_non_ca=true" in err.value.msg and "CN=mirror.example" in err.value.msg
    assert not trust.exists()
    # Pinning a leaf on purpose (a private mirror's self-signed server certificate).
    done = _certs.ensure_certificate("mirror", cert, trust_dir=str(trust), allow_non_ca=True)
    assert done["trust_dir"] == "imported" and done["is_ca"] is (basic_constraints is True)
    # Revoking needs no signing certificate.
    assert _certs.ensure_certificate("mirror", cert, state="absent", trust_dir=str(trust))["trust_dir"] == "removed"


@pytest.mark.parametrize("key_usage", [None, True])
def test_a_ca_certificate_is_accepted(tmp_path, key_usage):
    cert = _certs.load_certificate(_signed_pem(True, key_usage))
    assert _certs.signing_problem(cert) is None
    assert _certs.ensure_certificate("mirror", cert, trust_dir=str(tmp_path / "t"))["trust_dir"] == "imported"
    assert _certs.signing_problem(TestCA(parent=TestCA()).cert) is None  # an intermediate CA


# --------------------------------------------------------------------------------------------------------------
# The keystore password from agent.properties


def test_java_properties_forms(tmp_path):
    path = tmp_path / "agent.properties"
    path.write_text(
        "# comment\n"
        "! another comment\n"
        "host=192.0.2.10\n"
        "  keystore.passphrase = s3cr\\=et\\u0021 \n"
        "spaced value here\n"
        "colon:  yes\n"
        "multi=one,\\\n"
        "    two\n"
        "empty=\n",
        encoding="latin-1",
    )
    props = _certs.read_java_properties(str(path))
    assert props["host"] == "192.0.2.10"
    assert props["keystore.passphrase"] == "s3cr=et! "
    assert props["spaced"] == "value here"
    assert props["colon"] == "yes"
    assert props["multi"] == "one,two"
    assert props["empty"] == ""


def test_password_from_agent_properties(tmp_path):
    path = tmp_path / "agent.properties"
    assert _certs.password_from_agent_properties(str(path)) is None
    path.write_text("host=x\n")
    assert _certs.password_from_agent_properties(str(path)) is None
    path.write_text("host=x\nkeystore.passphrase=\n")
    assert _certs.password_from_agent_properties(str(path)) is None
    path.write_text("keystore.passphrase=%s\n" % PASSWORD)
    assert _certs.password_from_agent_properties(str(path)) == PASSWORD


# --------------------------------------------------------------------------------------------------------------
# Keystore types


@needs_keytool
def test_store_type_from_magic_bytes(agent_keystores, tmp_path):
    assert _certs.detect_store_type(agent_keystores["JKS"]) == "JKS"
    assert _certs.detect_store_type(agent_keystores["PKCS12"]) == "PKCS12"
    assert _certs.detect_store_type(str(tmp_path / "missing.jks")) is None
    (tmp_path / "empty.jks").write_bytes(b"")
    with pytest.raises(_certs.KeystoreError, match="empty file"):
        _certs.detect_store_type(str(tmp_path / "empty.jks"))
    (tmp_path / "junk.jks").write_bytes(b"hello")
    with pytest.raises(_certs.KeystoreError, match="not a JKS or PKCS12 keystore"):
        _certs.detect_store_type(str(tmp_path / "junk.jks"))


def test_type_of_a_new_keystore():
    assert _certs.store_type_for_new("/etc/cloudstack/agent/cloud.jks") == "JKS"
    assert _certs.store_type_for_new("/x/trust.p12") == "PKCS12"
    assert _certs.store_type_for_new("/x/trust.jks", "PKCS12") == "PKCS12"


@needs_keytool
def test_an_explicit_type_that_contradicts_the_file_is_refused(agent_keystores, ca_pems):
    target = _certs.KeystoreTarget(agent_keystores["PKCS12"], PASSWORD, store_type="JKS")
    with pytest.raises(_certs.KeystoreError, match="is PKCS12, not JKS"):
        _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]), keystore=target)


# --------------------------------------------------------------------------------------------------------------
# keytool on real keystores


@needs_keytool
def test_import_rotate_revoke_keep_the_agent_key(keystore, ca_pems, tmp_path):
    kind = _certs.detect_store_type(keystore)
    host_key = keytool_list(keystore)[HOST_KEY_ALIAS]
    assert host_key.entry_type == "private_key"
    target = _certs.KeystoreTarget(keystore, PASSWORD)
    trust = str(tmp_path / "trust")
    one = _certs.load_certificate(ca_pems["one"])
    two = _certs.load_certificate(ca_pems["two"])

    first = _certs.ensure_certificate("Mirror-CA", one, keystore=target, trust_dir=trust)
    assert (first["changed"], first["keystore"], first["trust_dir"]) == (True, "imported", "imported")
    assert first["alias"] == "mirror-ca"
    assert first["diff"] == {"before": {"keystore": None, "trust_dir": None},
                             "after": {"keystore": _certs.fingerprint(one), "trust_dir": _certs.fingerprint(one)}}

    again = _certs.ensure_certificate("mirror-ca", one, keystore=target, trust_dir=trust)
    assert (again["changed"], again["keystore"], again["trust_dir"]) == (False, "unchanged", "unchanged")

    rotated = _certs.ensure_certificate("mirror-ca", two, keystore=target, trust_dir=trust)
    assert (rotated["changed"], rotated["keystore"], rotated["trust_dir"]) == (True, "replaced", "replaced")
    assert rotated["diff"]["before"]["keystore"] == _certs.fingerprint(one)
    # Checked independently of the module's own confirmation.
    listed = keytool_list(keystore)
    assert listed["mirror-ca"].entry_type == "trusted_certificate"
    assert listed["mirror-ca"].fingerprint == _certs.fingerprint(two)
    assert listed[HOST_KEY_ALIAS].fingerprint == host_key.fingerprint
    assert _certs.fingerprint(_certs.read_trust_file(os.path.join(trust, "mirror-ca.pem"))) == _certs.fingerprint(two)

    revoked = _certs.ensure_certificate("mirror-ca", None, state="absent", keystore=target, trust_dir=trust)
    assert (revoked["changed"], revoked["keystore"], revoked["trust_dir"]) == (True, "removed", "removed")
    assert not os.path.exists(os.path.join(trust, "mirror-ca.pem"))
    gone = _certs.ensure_certificate("mirror-ca", None, state="absent", keystore=target, trust_dir=trust)
    assert (gone["changed"], gone["keystore"], gone["trust_dir"]) == (False, "absent", "absent")

    after = keytool_list(keystore)
    assert "mirror-ca" not in after
    assert after[HOST_KEY_ALIAS].entry_type == "private_key"
    assert after[HOST_KEY_ALIAS].fingerprint == host_key.fingerprint
    assert _certs.detect_store_type(keystore) == kind  # modified in place, never converted


@needs_keytool
def test_an_unchanged_run_costs_one_keytool_call(jks, ca_pems, monkeypatch):
    one = _certs.load_certificate(ca_pems["one"])
    target = _certs.KeystoreTarget(jks, PASSWORD)
    _certs.ensure_certificate("mirror", one, keystore=target)
    calls = []
    real_run = _certs.Keytool._run

    def counting_run(self, action, *args, **kwargs):
        calls.append(action)
        return real_run(self, action, *args, **kwargs)

    monkeypatch.setattr(_certs.Keytool, "_run", counting_run)
    assert _certs.ensure_certificate("mirror", one, keystore=target)["keystore"] == "unchanged"
    assert calls == ["-list"]


@needs_keytool
def test_check_mode_changes_nothing(jks, ca_pems, tmp_path):
    before = open(jks, "rb").read()
    trust = tmp_path / "trust"
    one = _certs.load_certificate(ca_pems["one"])
    target = _certs.KeystoreTarget(jks, PASSWORD)
    planned = _certs.ensure_certificate("mirror", one, keystore=target, trust_dir=str(trust), check_mode=True)
    assert (planned["changed"], planned["keystore"], planned["trust_dir"]) == (True, "imported", "imported")
    assert open(jks, "rb").read() == before
    assert not trust.exists()


@needs_keytool
def test_wrong_password_fails_clearly_and_changes_nothing(keystore, ca_pems, tmp_path):
    before = open(keystore, "rb").read()
    trust = tmp_path / "trust"
    wrong = "Wr0ng-but-distinct-7d1e"
    target = _certs.KeystoreTarget(keystore, wrong)
    with pytest.raises(_certs.KeystoreError) as err:
        _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]), keystore=target, trust_dir=str(trust))
    assert "wrong keystore password" in err.value.msg
    assert wrong not in err.value.msg and wrong not in repr(err.value.details)
    assert err.value.details["rc"] == 1
    assert open(keystore, "rb").read() == before
    assert not trust.exists()  # the keystore goes first: nothing is written when it fails


@needs_keytool
def test_an_alias_holding_a_private_key_is_never_touched(jks, ca_pems):
    before = open(jks, "rb").read()
    target = _certs.KeystoreTarget(jks, PASSWORD)
    for state, cert in (("present", _certs.load_certificate(ca_pems["one"])), ("absent", None)):
        with pytest.raises(_certs.KeystoreError, match="holds a private key entry"):
            _certs.ensure_certificate(HOST_KEY_ALIAS, cert, state=state, keystore=target)
    assert open(jks, "rb").read() == before


@needs_keytool
@pytest.mark.parametrize("name, expected_type", [("new.jks", "JKS"), ("new.p12", "PKCS12")])
def test_create_keystore(tmp_path, ca_pems, name, expected_type):
    path = str(tmp_path / "agent" / name)
    one = _certs.load_certificate(ca_pems["one"])
    with pytest.raises(_certs.KeystoreError, match="does not exist: set create_keystore=true"):
        _certs.ensure_certificate("mirror", one, keystore=_certs.KeystoreTarget(path, PASSWORD))
    assert _certs.ensure_certificate("mirror", one, state="absent", keystore=_certs.KeystoreTarget(path, PASSWORD))["keystore"] == "absent"
    made = _certs.ensure_certificate("mirror", one, keystore=_certs.KeystoreTarget(path, PASSWORD, create=True))
    assert made["keystore"] == "imported"
    assert _certs.detect_store_type(path) == expected_type
    assert keytool_list(path)["mirror"].fingerprint == _certs.fingerprint(one)


def test_missing_keytool_says_what_to_install(tmp_path, ca_pems):
    target = _certs.KeystoreTarget(str(tmp_path / "cloud.jks"), PASSWORD, create=True, keytool=str(tmp_path / "no-keytool"))
    assert target.keytool is None
    with pytest.raises(_certs.KeystoreError, match="keytool was not found .*no-keytool is not an executable.*openjdk-17-jre-headless"):
        _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]), keystore=target)
    # Only the trust directory managed: no Java needed.
    done = _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]), trust_dir=str(tmp_path / "trust"))
    assert (done["keystore"], done["trust_dir"]) == ("skipped", "imported")


@needs_keytool
def test_no_password_is_a_clear_error(jks, ca_pems):
    with pytest.raises(_certs.KeystoreError, match="no keystore password"):
        _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]), keystore=_certs.KeystoreTarget(jks, None))


# A real keytool behind a small wrapper: it logs its command line and, when told by the environment, fails
# (or lies) on -importcert. This is how a broken keytool (CloudStack #11112) or a full disk looks to us.
#
# DD_TEST_IMPORT_KILLED: keytool starts rewriting the keystore it was given (truncates it, writes a few bytes), then
# the module and keytool die by SIGKILL: what an OOM kill or a reboot in the middle of an import looks like.
# DD_TEST_IMPORT_DROPS_KEY: the import works but the keystore loses the agent's key entry `cloud` (a keytool bug,
# a store rewritten by another tool): keytool says success.
WRAPPER = """#!/bin/sh
printf '%%s\\n' "$*" >> "%(log)s"
ks=""; prev=""
for arg in "$@"; do [ "$prev" = "-keystore" ] && ks="$arg"; prev="$arg"; done
case " $* " in
  *" -importcert "*)
    if [ -n "$DD_TEST_IMPORT_FAILS" ]; then echo "keytool error: java.io.IOException: No space left on device"; exit 1; fi
    if [ -n "$DD_TEST_IMPORT_LIES" ]; then echo "Certificate was added to keystore"; exit 0; fi
    if [ -n "$DD_TEST_IMPORT_KILLED" ]; then printf 'half' > "$ks"; kill -9 $PPID; kill -9 $$; fi
    if [ -n "$DD_TEST_IMPORT_DROPS_KEY" ]; then
      "%(keytool)s" "$@" || exit 1
      exec "%(keytool)s" -delete -alias cloud -keystore "$ks" -storepass:env %(env)s
    fi ;;
esac
exec "%(keytool)s" "$@"
"""


@pytest.fixture
def wrapped_keytool(tmp_path):
    log = tmp_path / "keytool-argv.log"
    path = tmp_path / "keytool-wrapper"
    path.write_text(WRAPPER % {"log": log, "keytool": KEYTOOL, "env": _certs.PASSWORD_ENV})
    path.chmod(0o755)
    return str(path), log


@needs_keytool
def test_password_never_on_a_command_line(jks, ca_pems, wrapped_keytool):
    wrapper, log = wrapped_keytool
    target = _certs.KeystoreTarget(jks, PASSWORD, keytool=wrapper)
    _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]), keystore=target)
    _certs.ensure_certificate("mirror", None, state="absent", keystore=target)
    argv = log.read_text()
    assert "-importcert" in argv and "-delete" in argv and "-storepass:env" in argv
    assert PASSWORD not in argv


@needs_keytool
def test_a_failed_rotation_puts_the_keystore_back(jks, ca_pems, wrapped_keytool, monkeypatch):
    wrapper, _log = wrapped_keytool
    target = _certs.KeystoreTarget(jks, PASSWORD, keytool=wrapper)
    one = _certs.load_certificate(ca_pems["one"])
    _certs.ensure_certificate("mirror", one, keystore=target)
    before = open(jks, "rb").read()
    inode = os.stat(jks).st_ino
    monkeypatch.setenv("DD_TEST_IMPORT_FAILS", "1")
    with pytest.raises(_certs.KeystoreError) as err:
        _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["two"]), keystore=target)
    assert "keytool -importcert failed" in err.value.msg and "No space left on device" in err.value.msg
    # The delete had run: the old bytes are back, in the same file.
    assert open(jks, "rb").read() == before
    assert os.stat(jks).st_ino == inode
    assert keytool_list(jks)["mirror"].fingerprint == _certs.fingerprint(one)


@pytest.fixture(scope="session")
def cloud_keystores(tmp_path_factory):
    """A JKS and a PKCS12 keystore holding a key pair under the agent's real alias, ``cloud``."""
    require_tool("keytool", _certs.find_keytool)
    base = tmp_path_factory.mktemp("cloud-keystores")
    made = {}
    for store_type, name in (("JKS", "cloud.jks"), ("PKCS12", "cloud.p12")):
        path = str(base / name)
        subprocess.run(
            [KEYTOOL, "-genkeypair", "-alias", "cloud", "-keyalg", "EC", "-groupname", "secp256r1",
             "-dname", "CN=kvm-host-1", "-validity", "30", "-keystore", path, "-storetype", store_type,
             "-storepass:env", "KSPASS", "-keypass:env", "KSPASS"],
            env=dict(os.environ, KSPASS=PASSWORD), check=True, capture_output=True,
        )
        made[store_type] = path
    return made


@pytest.fixture(params=["JKS", "PKCS12"])
def cloud_keystore(request, cloud_keystores, tmp_path):
    directory = tmp_path / "agent"
    directory.mkdir()
    return copy_of(cloud_keystores[request.param], directory)


def _workspaces(path):
    return [name for name in os.listdir(os.path.dirname(path)) if name.startswith(".%s.directdownload-" % os.path.basename(path))]


@needs_keytool
def test_a_kill_while_keytool_writes_leaves_the_keystore_and_its_key_intact(cloud_keystore, ca_pems, wrapped_keytool,
                                                                            tmp_path):
    """The module dies (SIGKILL) while keytool has half rewritten the keystore it works on: the agent's keystore
    and its `cloud` key entry are byte-identical, and the next run cleans up and succeeds."""
    wrapper, _log = wrapped_keytool
    before = open(cloud_keystore, "rb").read()
    host_key = keytool_list(cloud_keystore)["cloud"]
    cert_file = tmp_path / "one.pem"
    cert_file.write_text(ca_pems["one"])
    script = ("import sys\n"
              "from ansible_collections.directdownload.kvm.plugins.module_utils import _certs\n"
              "target = _certs.KeystoreTarget(sys.argv[1], sys.argv[2], keytool=sys.argv[3])\n"
              "cert = _certs.load_certificate(open(sys.argv[4]).read())\n"
              "_certs.ensure_certificate('mirror', cert, keystore=target)\n")
    env = dict(os.environ, DD_TEST_IMPORT_KILLED="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script, cloud_keystore, PASSWORD, wrapper, str(cert_file)], env=env,
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert open(cloud_keystore, "rb").read() == before
    assert _workspaces(cloud_keystore)  # the killed run's copy: keytool was really stopped mid-write
    listed = keytool_list(cloud_keystore)
    assert listed["cloud"].entry_type == "private_key" and listed["cloud"].fingerprint == host_key.fingerprint
    assert "mirror" not in listed

    done = _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]),
                                     keystore=_certs.KeystoreTarget(cloud_keystore, PASSWORD))
    assert done["keystore"] == "imported"
    assert _workspaces(cloud_keystore) == []
    listed = keytool_list(cloud_keystore)
    assert listed["cloud"].fingerprint == host_key.fingerprint and "mirror" in listed


@needs_keytool
def test_a_change_that_loses_the_agent_key_never_replaces_the_keystore(cloud_keystore, ca_pems, wrapped_keytool,
                                                                       monkeypatch):
    wrapper, _log = wrapped_keytool
    before = open(cloud_keystore, "rb").read()
    monkeypatch.setenv("DD_TEST_IMPORT_DROPS_KEY", "1")
    target = _certs.KeystoreTarget(cloud_keystore, PASSWORD, keytool=wrapper)
    with pytest.raises(_certs.KeystoreError, match="lost or altered the private key entry 'cloud'.*left untouched"):
        _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]), keystore=target)
    assert open(cloud_keystore, "rb").read() == before
    assert keytool_list(cloud_keystore)["cloud"].entry_type == "private_key"
    assert _workspaces(cloud_keystore) == []


@needs_keytool
def test_a_changed_keystore_replaces_the_file_whole_and_keeps_its_mode(cloud_keystore, ca_pems, tmp_path):
    os.chmod(cloud_keystore, 0o640)
    inode = os.stat(cloud_keystore).st_ino
    target = _certs.KeystoreTarget(cloud_keystore, PASSWORD)
    assert _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]), keystore=target)["changed"]
    info = os.stat(cloud_keystore)
    assert info.st_ino != inode  # a new file renamed over the old one, never rewritten in place
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert sorted(os.listdir(os.path.dirname(cloud_keystore))) == [os.path.basename(cloud_keystore)]
    # A symbolic link at the keystore path is written through: the link stays, its target changes.
    link = str(tmp_path / "link.jks")
    os.symlink(cloud_keystore, link)
    _certs.ensure_certificate("mirror", None, state="absent", keystore=_certs.KeystoreTarget(link, PASSWORD))
    assert os.path.islink(link) and "mirror" not in keytool_list(cloud_keystore)


@needs_keytool
def test_keytool_claiming_success_without_importing_is_caught(jks, ca_pems, wrapped_keytool, monkeypatch):
    wrapper, _log = wrapped_keytool
    monkeypatch.setenv("DD_TEST_IMPORT_LIES", "1")
    target = _certs.KeystoreTarget(jks, PASSWORD, keytool=wrapper)
    with pytest.raises(_certs.KeystoreError, match="keytool reported success but .* does not hold the certificate"):
        _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]), keystore=target)


@needs_keytool
def test_a_failed_creation_leaves_no_keystore(tmp_path, ca_pems, wrapped_keytool, monkeypatch):
    wrapper, _log = wrapped_keytool
    monkeypatch.setenv("DD_TEST_IMPORT_LIES", "1")
    path = tmp_path / "new.jks"
    target = _certs.KeystoreTarget(str(path), PASSWORD, create=True, keytool=wrapper)
    with pytest.raises(_certs.KeystoreError):
        _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]), keystore=target)
    assert not path.exists()


# --------------------------------------------------------------------------------------------------------------
# Trust directory


def test_trust_files_are_written_atomically_with_their_modes(tmp_path, ca_pems):
    trust = tmp_path / "trust.d"
    one = _certs.load_certificate(ca_pems["one"])
    old_umask = os.umask(0o077)
    try:
        path = _certs.write_trust_file(str(trust), "Mirror", one)
    finally:
        os.umask(old_umask)
    assert path == str(trust / "mirror.pem")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(trust).st_mode) == 0o755
    assert open(path).read() == pem(one)
    assert sorted(os.listdir(trust)) == ["mirror.pem"]  # no temporary left behind
    assert _certs.remove_trust_file(str(trust), "mirror") is True
    assert _certs.remove_trust_file(str(trust), "mirror") is False


def test_a_writer_killed_mid_write_leaves_the_old_trust_file_and_nothing_trusted(tmp_path, ca_pems):
    """A SIGKILL between the temporary file and the rename: the old PEM stays whole, and the half-written temporary
    (random name, ``.tmp`` suffix) is neither listed nor trusted by downloads."""
    from ansible_collections.directdownload.kvm.plugins.module_utils import _trust
    trust = tmp_path / "trust"
    one = _certs.load_certificate(ca_pems["one"])
    _certs.write_trust_file(str(trust), "mirror", one)
    (trust / ".mirror.pem.k1ll3d.tmp").write_text(ca_pems["two"][:200])  # what the killed writer left
    assert [stem for stem, _path, _cert in _certs.list_trust_dir(str(trust))] == ["mirror"]
    assert _certs.fingerprint(_certs.read_trust_file(str(trust / "mirror.pem"))) == _certs.fingerprint(one)
    _trust.build_ssl_context(trust_dir=str(trust))  # the damaged temporary is not loaded (it would raise)


def test_a_symlink_in_the_trust_directory_is_not_followed(tmp_path, ca_pems):
    trust = tmp_path / "trust"
    trust.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    (trust / "mirror.pem").symlink_to(target)
    with pytest.raises(Exception, match="symbolic link"):
        _certs.write_trust_file(str(trust), "mirror", _certs.load_certificate(ca_pems["one"]))
    assert target.read_text() == "keep me"


def test_an_unreadable_trust_file_is_replaced(tmp_path, ca_pems):
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "mirror.pem").write_text("garbage")
    done = _certs.ensure_certificate("mirror", _certs.load_certificate(ca_pems["one"]), trust_dir=str(trust))
    assert done["trust_dir"] == "replaced"
    assert done["diff"]["before"]["trust_dir"].startswith("unreadable:")


# --------------------------------------------------------------------------------------------------------------
# Inventory (certificate_info)


@needs_keytool
def test_inventory_of_both_stores(jks, ca_pems, tmp_path):
    trust = tmp_path / "trust"
    target = _certs.KeystoreTarget(jks, PASSWORD)
    one = _certs.load_certificate(ca_pems["one"])
    _certs.ensure_certificate("both", one, keystore=target, trust_dir=str(trust))
    # An expired certificate imported by hand (our modules refuse expired ones), and a stray trust file.
    expired_file = tmp_path / "expired.pem"
    expired_file.write_text(ca_pems["expired"])
    subprocess.run([KEYTOOL, "-importcert", "-noprompt", "-alias", "old", "-file", str(expired_file), "-keystore", jks,
                    "-storepass:env", "KSPASS"], env=dict(os.environ, KSPASS=PASSWORD), check=True, capture_output=True)
    _certs.write_trust_file(str(trust), "only-here", _certs.load_certificate(ca_pems["two"]))
    (trust / "broken.pem").write_text("garbage")
    (trust / "README").write_text("not a certificate file name")

    found = _certs.inventory(target, str(trust), warning_days=10000)
    assert found["keystore"]["exists"] is True
    assert found["keystore"]["type"] == _certs.detect_store_type(jks)
    entries = {e["alias"]: e for e in found["keystore"]["entries"]}
    assert entries[HOST_KEY_ALIAS]["entry_type"] == "private_key"
    assert entries[HOST_KEY_ALIAS]["subject"] == "CN=kvm-host-1"
    assert set(entries[HOST_KEY_ALIAS]) >= {"fingerprint", "not_after", "chain_length"}
    assert not any("key" in k and k not in ("entry_type",) for k in entries[HOST_KEY_ALIAS])  # nothing secret
    assert entries["old"]["expired"] is True
    files = {f["alias"]: f for f in found["trust_dir"]["certificates"]}
    assert set(files) == {"both", "only-here", "broken"}
    assert "error" in files["broken"]

    view = {line["alias"]: line for line in found["certificates"]}
    assert view["both"]["in_sync"] is True and view["both"]["in_keystore"] and view["both"]["in_trust_dir"]
    assert view["both"]["expiring_soon"] is True  # threshold 10000 days
    assert view["only-here"]["in_sync"] is False and not view["only-here"]["in_keystore"]
    assert view["old"]["in_sync"] is False and view["old"]["expired"] is True
    assert view[HOST_KEY_ALIAS]["in_sync"] is None and view[HOST_KEY_ALIAS]["keystore_entry_type"] == "private_key"

    only = _certs.inventory(target, str(trust), aliases=["BOTH"])
    assert [line["alias"] for line in only["certificates"]] == ["both"]
    assert only["certificates"][0]["expiring_soon"] is False  # default threshold 30 days, a year left


def test_inventory_of_missing_stores_needs_no_keytool(tmp_path):
    target = _certs.KeystoreTarget(str(tmp_path / "none.jks"), None, keytool=str(tmp_path / "no-keytool"))
    found = _certs.inventory(target, str(tmp_path / "no-trust"))
    assert found["keystore"] == {"path": str(tmp_path / "none.jks"), "exists": False, "type": None, "entries": []}
    assert found["trust_dir"]["exists"] is False and found["certificates"] == []


def test_keytool_list_parsing_of_a_chain():
    """A private key entry whose chain has two certificates: the leaf is described, the chain length kept."""
    ca = TestCA(common_name="Host CA", key_type="ec")
    text = ("Alias name: chained\nEntry type: PrivateKeyEntry\nCertificate chain length: 2\nCertificate[1]:\n"
            + ca.issue_cert_pem(("kvm1.example",))[0] + "Certificate[2]:\n" + ca.cert_pem
            + "\n\n*******************************************\n\n\nAlias name: t\nEntry type: trustedCertEntry\n\n"
            + ca.cert_pem)
    chained, trusted = _certs.parse_keytool_list(text)
    assert (chained.alias, chained.entry_type, chained.chain_length) == ("chained", "private_key", 2)
    assert chained.certificate.subject.rfc4514_string().startswith("CN=kvm1.example")
    assert (trusted.alias, trusted.entry_type, trusted.fingerprint) == ("t", "trusted_certificate", _certs.fingerprint(ca.cert))


def test_base64_body_of_der_round_trip(ca_pems):
    cert = x509.load_pem_x509_certificate(ca_pems["two"].encode())
    body = base64.b64encode(cert.public_bytes(Encoding.DER)).decode()
    assert _certs.to_pem(_certs.load_certificate(body)).decode() == pem(cert)
