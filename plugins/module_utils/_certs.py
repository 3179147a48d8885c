# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""CA certificates for private HTTPS mirrors: validation, the Java keystore (keytool) and the PEM trust directory.

CloudStack keeps uploaded CA certificates in the agent keystore ``cloud.jks``; we keep them there too (the agent's
own Java code reads it) and also as ``<trust_dir>/<alias>.pem``, which ``download`` and ``url_check`` trust.

CloudStack rules kept: the alias is a DNS label (1-63 characters of ``[A-Za-z0-9-]``, no leading or trailing
hyphen), not ``cloud`` and not ``cloudca...`` (those hold the host's own key and CloudStack's CA chain); PEM or a
bare base64 body is accepted; an expired or not yet valid certificate is refused. CloudStack bugs fixed: keytool's
exit code and output are checked (it reported success when keytool failed, #2995, #11112), the same alias with new
content replaces the old certificate (rotation), ``absent`` removes it, every import is confirmed by listing the
keystore again, and the password is never on a command line (``-storepass:env``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import fcntl
import glob
import os
import re
import shutil
import stat
import subprocess
import tempfile
from typing import Any

from ansible_collections.directdownload.kvm.plugins.module_utils import _fs
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import DirectDownloadError, InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._settings import DEFAULT_AGENT_PROPERTIES, DEFAULT_KEYSTORE
from ansible_collections.directdownload.kvm.plugins.module_utils._trust import certificate_files

CRYPTOGRAPHY_IMP_ERR = None
try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    HAS_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - depends on the host
    import traceback
    CRYPTOGRAPHY_IMP_ERR = traceback.format_exc()
    HAS_CRYPTOGRAPHY = False

STORE_TYPES = ("JKS", "PKCS12")
JKS_MAGIC = b"\xfe\xed\xfe\xed"
JCEKS_MAGIC = b"\xce\xce\xce\xce"

# Environment variable that carries the keystore password to keytool (``-storepass:env``): never on a command line.
PASSWORD_ENV = "DIRECTDOWNLOAD_KEYSTORE_PASSWORD"
REDACTED = "********"
KEYTOOL_TIMEOUT = 120
# A JVM tuned for a short run: keytool lives ~0.2 s, so skip the optimising compiler and the parallel GC. English
# labels ("Alias name:", "Entry type:") whatever the host locale, because we parse them.
KEYTOOL_JVM_OPTIONS = (
    "-J-XX:TieredStopAtLevel=1",
    "-J-XX:+UseSerialGC",
    "-J-Duser.language=en",
    "-J-Duser.country=US",
)
JAVA_HINT = "install a Java runtime (for example openjdk-17-jre-headless on Debian/Ubuntu, java-17-openjdk-headless on RHEL)"

ENTRY_TYPES = {
    "trustedcertentry": "trusted_certificate",
    "privatekeyentry": "private_key",
    "secretkeyentry": "secret_key",
}

_ALIAS = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_BASE64_BODY = re.compile(r"^[A-Za-z0-9+/=\s]+$")

# What keytool prints around its real message and that only adds noise to an error.
_KEYTOOL_NOISE = (
    re.compile(r"^Warning:\s*$"),
    re.compile(r"^The JKS keystore uses a proprietary format.*$"),
    re.compile(r"^Picked up (_JAVA_OPTIONS|JAVA_TOOL_OPTIONS):.*$"),
)


class KeystoreError(DirectDownloadError):
    """keytool failed, or the keystore is not what it should be. Another host would not fix this one."""

    retry_here = False
    retry_elsewhere = False


# --------------------------------------------------------------------------------------------------------------
# Certificates


def require_cryptography() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise DirectDownloadError("the Python library 'cryptography' is required on this host", exception=CRYPTOGRAPHY_IMP_ERR)


def validate_alias(alias: str) -> str:
    """Return ``alias`` if CloudStack would accept it, else raise InvalidInput saying which rule it breaks.

    ``cloudca`` is refused in any case (CloudStack only refuses the lower-case prefix) because Java keystore
    aliases are case-insensitive: ``CloudCA-x`` is the same entry as ``cloudca-x``.
    """
    if alias is None or not str(alias).strip():
        raise InvalidInput("a certificate alias is required")
    alias = str(alias)
    if not _ALIAS.match(alias):
        raise InvalidInput(
            "invalid certificate alias %r: use 1 to 63 letters, digits and hyphens, not starting or ending with a hyphen"
            % alias[:80]
        )
    lowered = alias.lower()
    if lowered == "cloud" or lowered.startswith("cloudca"):
        raise InvalidInput(
            "the certificate alias %r is reserved: 'cloud' and 'cloudca*' hold the host's own key and CloudStack's CA "
            "chain; choose another alias" % alias
        )
    return alias


def canonical_alias(alias: str) -> str:
    """The alias as the stores keep it: validated, in lower case (Java keystore aliases are case-insensitive, JKS
    stores them in lower case), so ``MyCA`` and ``myca`` are one certificate everywhere."""
    return validate_alias(alias).lower()


def load_certificate(data: str | bytes) -> Any:
    """Parse one X.509 certificate from PEM, bare base64 (a PEM body without its markers, as CloudStack accepts) or DER.

    Raises InvalidInput when nothing parses, when the text holds several certificates (one alias, one certificate),
    or when it holds a private key (a CA certificate is public; a key has no business travelling with it).
    """
    require_cryptography()
    if data is None:
        raise InvalidInput("no certificate given")
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if not raw.strip():
        raise InvalidInput("the certificate is empty")
    try:
        if raw.lstrip()[:1] == b"\x30" and b"-----BEGIN" not in raw:
            return x509.load_der_x509_certificate(raw)
        text = raw.decode("ascii")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("cannot parse the certificate: %s" % _short(exc)) from exc
    blocks = _PEM_BLOCK.findall(text)
    if blocks:
        kinds = [kind for kind, _body in blocks]
        if any("PRIVATE KEY" in kind for kind in kinds):
            raise InvalidInput("the certificate text contains a private key: give the CA certificate only")
        bodies = [body for kind, body in blocks if kind in ("CERTIFICATE", "X509 CERTIFICATE", "TRUSTED CERTIFICATE")]
        if not bodies:
            raise InvalidInput("no CERTIFICATE block found (found: %s)" % ", ".join(sorted(set(kinds))))
        if len(bodies) > 1:
            raise InvalidInput("the certificate text holds %d certificates: give one certificate per alias" % len(bodies))
        body = bodies[0]
    elif "-----BEGIN" in text or "-----END" in text:
        raise InvalidInput("cannot parse the certificate: unbalanced PEM markers")
    else:
        body = text
    if not _BASE64_BODY.match(body):
        raise InvalidInput("cannot parse the certificate: expected PEM, or a base64 body of a DER certificate")
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
        return x509.load_der_x509_certificate(der)
    except (ValueError, binascii.Error) as exc:
        raise InvalidInput("cannot parse the certificate: %s" % _short(exc)) from exc


def to_pem(cert: Any) -> bytes:
    return cert.public_bytes(Encoding.PEM)


def fingerprint(cert: Any) -> str:
    """SHA-256 of the DER certificate as ``AB:CD:...``: the form keytool and ``openssl x509 -fingerprint`` print."""
    return ":".join("%02X" % byte for byte in bytearray(cert.fingerprint(hashes.SHA256())))


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def format_time(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def not_before(cert: Any) -> datetime.datetime:
    # cryptography >= 42 has the *_utc properties; older ones return naive datetimes that are UTC.
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def not_after(cert: Any) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _is_ca(cert):
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def describe(cert: Any, now: datetime.datetime | None = None, warning_days: int = 30) -> dict:
    """What operators want to see about a certificate (no secret in here: it is all public).

    ``days_until_expiry`` counts whole days left (negative once expired); ``expiring_soon`` is true when fewer
    than ``warning_days`` days are left and it has not expired yet.
    """
    now = now or utc_now()
    start, end = not_before(cert), not_after(cert)
    days_left = int((end - now).total_seconds() // 86400)
    expired = now > end
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": "%X" % cert.serial_number,
        "not_before": format_time(start),
        "not_after": format_time(end),
        "fingerprint": fingerprint(cert),
        "days_until_expiry": days_left,
        "expired": expired,
        "not_yet_valid": now < start,
        "expiring_soon": (not expired) and days_left < warning_days,
        "is_ca": _is_ca(cert),
    }


def check_validity(cert: Any, now: datetime.datetime | None = None) -> None:
    """Raise InvalidInput when ``cert`` is not valid at ``now`` (expired or not yet valid), with the dates."""
    now = now or utc_now()
    start, end = not_before(cert), not_after(cert)
    window = "valid from %s to %s" % (format_time(start), format_time(end))
    subject = cert.subject.rfc4514_string()
    if now > end:
        raise InvalidInput("the certificate %r expired on %s (%s; now %s)" % (subject, format_time(end), window, format_time(now)))
    if now < start:
        raise InvalidInput(
            "the certificate %r is not valid yet: it becomes valid on %s (%s; now %s)" % (subject, format_time(start), window, format_time(now))
        )


def signing_problem(cert: Any) -> str | None:
    """Why ``cert`` cannot sign other certificates (None when it can): basicConstraints absent or CA:FALSE, or a
    keyUsage extension without keyCertSign (RFC 5280 4.2.1.3 and 4.2.1.9)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "it has no basicConstraints extension, so it is not a CA certificate"
    if not constraints.ca:
        return "its basicConstraints say CA:FALSE"
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None  # no keyUsage: every use is allowed
    if not usage.key_cert_sign:
        return "its keyUsage does not include keyCertSign"
    return None


def check_can_sign(cert: Any, allow_non_ca: bool = False) -> None:
    """Refuse a certificate that cannot sign (InvalidInput), unless ``allow_non_ca`` (pinning a server certificate)."""
    problem = signing_problem(cert)
    if problem and not allow_non_ca:
        raise InvalidInput(
            "the certificate %r cannot sign other certificates: %s. Upload the CA certificate that issued the mirror's "
            "certificate, or set allow_non_ca=true to trust this very certificate (for example a mirror's self-signed "
            "server certificate you want to pin)" % (cert.subject.rfc4514_string(), problem))


def _short(exc):
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0][:300]


# --------------------------------------------------------------------------------------------------------------
# Keystore password


def read_java_properties(path: str) -> dict:
    """Parse a Java ``.properties`` file into a dict: ``key=value``, ``key: value`` or ``key value``, ``#``/``!``
    comments, backslash line continuations and the usual escapes. Raises OSError when the file cannot be read."""
    with open(path, "r", encoding="latin-1") as handle:
        lines = handle.read().splitlines()
    properties = {}
    pending = ""
    for raw in lines:
        line = raw.lstrip(" \t\f")
        if not pending and (not line or line[0] in "#!"):
            continue
        # An odd number of trailing backslashes continues the logical line on the next one.
        if (len(line) - len(line.rstrip("\\"))) % 2 == 1:
            pending += line[:-1]
            continue
        key, value = _split_property(pending + line)
        properties[key] = value
        pending = ""
    if pending:
        key, value = _split_property(pending)
        properties[key] = value
    return properties


def _split_property(line):
    index = 0
    while index < len(line) and line[index] not in "=: \t\f":
        index += 2 if line[index] == "\\" else 1
    rest = line[index:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return _unescape_property(line[:index]), _unescape_property(rest)


def _unescape_property(text):
    out = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "\\" or index + 1 >= len(text):
            out.append(char)
            index += 1
            continue
        nxt = text[index + 1]
        if nxt == "u" and re.match(r"^[0-9a-fA-F]{4}$", text[index + 2:index + 6]):
            out.append(chr(int(text[index + 2:index + 6], 16)))
            index += 6
            continue
        out.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(nxt, nxt))
        index += 2
    return "".join(out)


def password_from_agent_properties(path: str) -> str | None:
    """``keystore.passphrase`` from the CloudStack agent properties file; None when the file or the key is missing."""
    try:
        properties = read_java_properties(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeystoreError("cannot read %s for the keystore password: %s" % (path, exc.strerror or exc), path=path) from exc
    value = properties.get("keystore.passphrase")
    return value if value else None


# --------------------------------------------------------------------------------------------------------------
# keytool


def find_keytool(explicit: str | None = None) -> str | None:
    """The keytool executable: ``explicit``, else PATH, else ``$JAVA_HOME/bin``, else ``/usr/lib/jvm/*/bin``.

    Returns None when there is none (callers turn that into an error naming the package to install).
    """
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("keytool")
    if found:
        return found
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(os.path.join(os.environ["JAVA_HOME"], "bin", "keytool"))
    candidates += sorted(glob.glob("/usr/lib/jvm/*/bin/keytool"), reverse=True)
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def detect_store_type(path: str) -> str | None:
    """``JKS``, ``JCEKS`` or ``PKCS12`` from the first bytes of an existing keystore; None when it does not exist.

    Raises KeystoreError for an empty file or one that is no keystore at all.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeystoreError("cannot read the keystore %s: %s" % (path, exc.strerror or exc), path=path) from exc
    if head == JKS_MAGIC:
        return "JKS"
    if head == JCEKS_MAGIC:
        return "JCEKS"
    if head[:1] == b"\x30":  # a DER SEQUENCE: PKCS#12 PFX
        return "PKCS12"
    if not head:
        raise KeystoreError("the keystore %s is an empty file: remove it, or let create_keystore make a new one" % path, path=path)
    raise KeystoreError("%s is not a JKS or PKCS12 keystore (unknown magic bytes %s)" % (path, binascii.hexlify(head).decode()), path=path)


def store_type_for_new(path: str, requested: str = "auto") -> str:
    """The type of a keystore we create: the requested one, else by file name (``*.jks``: JKS, as CloudStack's
    ``cloud.jks``; anything else: PKCS12, Java's default since 9)."""
    if requested and requested != "auto":
        return requested
    return "JKS" if path.lower().endswith((".jks", ".keystore")) else "PKCS12"


@dataclasses.dataclass(eq=False, repr=False)
class KeystoreEntry:
    """One entry of a keystore listing. ``certificate`` is the entry's (first) certificate, None for a secret key."""

    alias: str
    entry_type: str
    certificate: object = None
    chain_length: int = 0

    @property
    def fingerprint(self) -> str | None:
        return fingerprint(self.certificate) if self.certificate is not None else None

    def __repr__(self):
        return "KeystoreEntry(%r, %s, %s)" % (self.alias, self.entry_type, self.fingerprint)


def parse_keytool_list(output: str) -> list:
    """Entries of ``keytool -list -rfc`` output (English labels), in keystore order.

    A private key entry shows only its certificate chain: keytool never prints the key itself.
    """
    require_cryptography()
    entries = []
    for block in re.split(r"^Alias name: ", output, flags=re.MULTILINE)[1:]:
        alias, _sep, rest = block.partition("\n")
        kind = re.search(r"^Entry type: (\S+)", rest, flags=re.MULTILINE)
        entry_type = ENTRY_TYPES.get(kind.group(1).lower(), kind.group(1)) if kind else "unknown"
        pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", rest, flags=re.DOTALL)
        certificate = None
        if pems:
            try:
                certificate = x509.load_pem_x509_certificate(pems[0].encode("ascii"))
            except ValueError:
                certificate = None
        entries.append(KeystoreEntry(alias.strip(), entry_type, certificate, len(pems)))
    return entries


class Keytool:
    """Runs keytool with an argument vector; the password travels in the child's environment only.

    Every call checks the exit code and the output; a failure raises KeystoreError with keytool's own message,
    the password redacted from it.
    """

    def __init__(self, executable: str | None, password: str | None, requested: str | None = None) -> None:
        if not executable:
            where = "%s is not an executable" % requested if requested else "not on PATH, in $JAVA_HOME/bin or /usr/lib/jvm"
            raise KeystoreError("keytool was not found (%s): %s" % (where, JAVA_HINT))
        if not password:
            raise KeystoreError(
                "no keystore password: set keystore_password, or keystore.passphrase in the CloudStack agent.properties"
            )
        self.executable = executable
        self.password = password
        self.calls = 0

    def _run(self, action, keystore, *args, **kwargs):
        argv = [self.executable, action] + list(KEYTOOL_JVM_OPTIONS) + list(args)
        argv += ["-keystore", keystore, "-storepass:env", PASSWORD_ENV]
        env = dict(os.environ)
        env.update({PASSWORD_ENV: self.password, "LC_ALL": "C", "LANG": "C"})
        # Options in these variables would be echoed by the JVM ("Picked up ...") and could change behaviour.
        env.pop("JAVA_TOOL_OPTIONS", None)
        env.pop("_JAVA_OPTIONS", None)
        self.calls += 1
        try:
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  timeout=KEYTOOL_TIMEOUT, check=False)
        except OSError as exc:
            raise KeystoreError("cannot run keytool (%s): %s; %s" % (self.executable, exc.strerror or exc, JAVA_HINT)) from exc
        except subprocess.TimeoutExpired as exc:
            raise KeystoreError("keytool %s on %s did not finish within %d s" % (action, keystore, KEYTOOL_TIMEOUT)) from exc
        out = self.redact(proc.stdout.decode("utf-8", "replace"))
        err = self.redact(proc.stderr.decode("utf-8", "replace"))
        expect = kwargs.get("expect")
        if proc.returncode != 0 or (expect and expect not in out + err):
            raise KeystoreError(
                "keytool %s failed on %s: %s" % (action, keystore, self.explain(out + "\n" + err)),
                rc=proc.returncode, keystore_path=keystore, command=self.redact(" ".join(argv)),
            )
        return out

    def redact(self, text: str) -> str:
        return text.replace(self.password, REDACTED) if self.password else text

    @staticmethod
    def explain(output: str) -> str:
        """keytool's message without the JKS migration advice; the wrong-password case said plainly."""
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        lines = [line for line in lines if not any(noise.match(line) for noise in _KEYTOOL_NOISE)]
        message = " ".join(lines)[:1000] or "no output"
        if "password was incorrect" in message:
            return "wrong keystore password (keytool: %s)" % message
        return message

    def list(self, keystore: str, alias: str | None = None) -> list[KeystoreEntry]:
        args = ["-rfc"] + (["-alias", alias] if alias else [])
        return parse_keytool_list(self._run("-list", keystore, *args))

    def import_certificate(self, keystore: str, alias: str, pem_path: str, store_type: str | None = None) -> None:
        args = ["-noprompt", "-alias", alias, "-file", pem_path]
        if store_type:
            args += ["-storetype", store_type]
        self._run("-importcert", keystore, *args, expect="Certificate was added to keystore")

    def delete(self, keystore: str, alias: str) -> None:
        self._run("-delete", keystore, "-alias", alias)


# --------------------------------------------------------------------------------------------------------------
# Trust directory


def trust_file_path(trust_dir: str, alias: str) -> str:
    """``<trust_dir>/<alias>.pem``, alias in lower case (keystore aliases are case-insensitive too)."""
    return os.path.join(trust_dir, canonical_alias(alias) + ".pem")


def read_trust_file(path: str) -> Any:
    """The certificate in a trust-directory file; None when the file does not exist.

    A file that does not parse is returned as the exception text (str) so callers can report or replace it.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DirectDownloadError("cannot read %s: %s" % (path, exc.strerror or exc), path=path) from exc
    try:
        return load_certificate(data)
    except InvalidInput as exc:
        return exc.msg


def write_trust_file(trust_dir: str, alias: str, cert: Any) -> str:
    """Write the PEM atomically (temporary file, fsync, rename, fsync of the directory); file 0644, new dir 0755."""
    if not os.path.isdir(trust_dir):
        os.makedirs(trust_dir, mode=0o755, exist_ok=True)
        os.chmod(trust_dir, 0o755)
    final = trust_file_path(trust_dir, alias)
    if os.path.islink(final) or os.path.isdir(final):
        raise DirectDownloadError("refusing to replace %s: it is a symbolic link or a directory" % final, path=final)
    _fs.write_atomic(final, to_pem(cert), durable=True, mode=0o644)
    return final


def remove_trust_file(trust_dir: str, alias: str) -> bool:
    if not _fs.unlink_if_present(trust_file_path(trust_dir, alias)):
        return False
    _fs.fsync_directory(trust_dir)
    return True


def list_trust_dir(trust_dir: str) -> list[tuple[str, str, Any]] | None:
    """``[(alias, path, certificate or error text)]`` for every certificate file, sorted by name; None when the
    directory does not exist. The files are the ones ``download`` trusts (``_trust.certificate_files``)."""
    if not os.path.isdir(trust_dir):
        return None
    found = []
    for path in certificate_files(trust_dir):
        found.append((os.path.splitext(os.path.basename(path))[0], path, read_trust_file(path)))
    return found


# --------------------------------------------------------------------------------------------------------------
# The engine calls: one certificate in both stores; an inventory of both stores


class KeystoreTarget:
    """Which keystore to manage and how: path, password, type (auto/JKS/PKCS12), whether to create it, keytool path."""

    def __init__(self, path: str, password: str | None, store_type: str = "auto", create: bool = False,
                 keytool: str | None = None) -> None:
        self.path = path
        self.password = password
        self.store_type = store_type or "auto"
        self.create = create
        # None when keytool is missing: only an operation that needs it fails, with the hint to install Java.
        self.keytool = find_keytool(keytool)
        self.keytool_requested = keytool

    def existing_type(self) -> str | None:
        """The type of the keystore on disk (None when absent); refuses one that contradicts ``store_type``."""
        found = detect_store_type(self.path)
        if found == "JCEKS":
            raise KeystoreError("the keystore %s is a JCEKS keystore: only JKS and PKCS12 are supported" % self.path, path=self.path)
        if found and self.store_type != "auto" and found != self.store_type:
            raise KeystoreError(
                "the keystore %s is %s, not %s: set keystore_type to auto or %s (it is never converted)"
                % (self.path, found, self.store_type, found), path=self.path,
            )
        return found


def keystore_argument_spec() -> dict:
    """The keystore option group of ``certificate`` and ``certificate_info``; documented once in the doc fragment
    ``directdownload.kvm._keystore`` (keep both in step). Defaults from ``_settings``."""
    return dict(
        keystore=dict(type="path", default=DEFAULT_KEYSTORE),
        keystore_password=dict(type="str", no_log=True),
        agent_properties=dict(type="path", default=DEFAULT_AGENT_PROPERTIES),
        keytool=dict(type="path"),
    )


def keystore_target(params: dict, no_log_values: set, store_type: str = "auto", create: bool = False) -> KeystoreTarget:
    """The keystore the options of :func:`keystore_argument_spec` name, with its password: the option, else
    ``keystore.passphrase`` of ``agent_properties``. The password is added to ``no_log_values`` (the module's),
    so that Ansible masks it wherever it would appear."""
    password = params["keystore_password"]
    if password is None:
        password = password_from_agent_properties(params["agent_properties"])
    if password:
        no_log_values.add(password)
    return KeystoreTarget(params["keystore"], password, store_type, create, params["keytool"])


def certificate_source_argument_spec() -> dict:
    """The options that give one certificate (``alias``, ``content``, ``src``, ``state``) to ``certificate`` and
    ``certificate_registry``; read with :func:`read_certificate_option`. ``content`` and ``src`` exclude each other."""
    return dict(
        alias=dict(type="str", required=True),
        content=dict(type="str"),
        src=dict(type="path"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
    )


def read_certificate_option(params: dict) -> str | bytes | None:
    """The bytes of the certificate given by the ``content`` (PEM text or base64 body) or ``src`` (a file on the
    host that runs the module) option; None when neither is given."""
    if params.get("content") is not None:
        return params["content"]
    if params.get("src") is None:
        return None
    try:
        with open(params["src"], "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise DirectDownloadError("cannot read the certificate file %s: %s" % (params["src"], exc.strerror or exc),
                                  path=params["src"]) from exc


class _DirectoryLock:
    """An exclusive flock on the keystore's directory, so that two runs on one host do not lose each other's edit.

    keytool itself takes no lock; the lock covers our list -> change -> verify sequence.
    """

    def __init__(self, directory):
        self.directory = directory
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.directory, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def _find_entry(entries, alias):
    wanted = alias.lower()
    for entry in entries:
        if entry.alias.lower() == wanted:
            return entry
    return None


def _state_of(cert_or_error):
    """The diff view of one store: the fingerprint, or None when the alias is not there."""
    if cert_or_error is None:
        return None
    if isinstance(cert_or_error, str):
        return "unreadable: %s" % cert_or_error
    return fingerprint(cert_or_error)


def _keystore_change(target, alias, cert, state, check_mode):
    """Plan and (unless check mode) apply the change in the keystore. Returns (result word, before, after)."""
    store_type = target.existing_type()
    if store_type is None:
        if state == "absent":
            return "absent", None, None
        if not target.create:
            raise KeystoreError(
                "the keystore %s does not exist: set create_keystore=true to create it, or point keystore at the "
                "agent's keystore" % target.path, path=target.path,
            )
    keytool = Keytool(target.keytool, target.password, target.keytool_requested)
    entries = keytool.list(target.path) if store_type else []
    current = _find_entry(entries, alias)
    if current is not None and current.entry_type != "trusted_certificate":
        raise KeystoreError(
            "the alias %r in %s holds a %s entry, not a trusted certificate: refusing to touch it (choose another alias)"
            % (alias, target.path, current.entry_type.replace("_", " ")), path=target.path,
        )
    before = current.fingerprint if current else None
    if state == "absent":
        word, after = ("removed", None) if current else ("absent", None)
    else:
        after = fingerprint(cert)
        word = "imported" if current is None else ("unchanged" if before == after else "replaced")
    if check_mode or word in ("absent", "unchanged"):
        return word, before, after
    _apply_keystore(keytool, target, alias, cert, word, store_type, entries)
    return word, before, after


def _apply_keystore(keytool, target, alias, cert, word, store_type, entries):
    """Change a copy of the keystore, verify the copy, then rename it over the original.

    keytool rewrites a keystore in place (truncate, then write): a crash or a kill in between would leave an empty
    file and the agent's own key pair (alias ``cloud``) gone. So keytool only ever works on a copy, in a private
    directory (mode 0700, random name, created exclusively) next to the keystore, on the same file system. The copy
    counts only when a new listing shows every entry of ``entries`` (the listing the change was planned from), each
    with its type and fingerprint, and the alias as intended; it is fsynced, renamed over the original, and the
    directory is fsynced. Until that rename the original is never written, so any failure or kill leaves it
    byte-identical; after it, the new keystore is complete on disk. A symbolic link at the keystore path is
    written through (its target is replaced), never replaced by a file.
    """
    path = os.path.realpath(target.path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755, exist_ok=True)
    new_type = store_type or store_type_for_new(path, target.store_type)
    with _DirectoryLock(directory):
        _remove_stale_workspaces(path)
        try:
            workspace = tempfile.mkdtemp(dir=directory, prefix=_workspace_prefix(path))
        except OSError as exc:
            raise KeystoreError(
                "cannot make the working copy of %s in %s (%s): keytool changes a copy that then replaces the "
                "keystore, so its directory must be writable" % (path, directory, exc.strerror or exc), path=path) from exc
        work = os.path.join(workspace, os.path.basename(path))
        try:
            if store_type:
                _copy_keystore(path, work)
            if word in ("replaced", "removed"):
                keytool.delete(work, alias)
            if word in ("imported", "replaced"):
                fd, pem_path = tempfile.mkstemp(prefix="directdownload-cert-", suffix=".pem")
                try:
                    with os.fdopen(fd, "wb") as handle:
                        handle.write(to_pem(cert))
                    keytool.import_certificate(work, alias, pem_path, None if store_type else new_type)
                finally:
                    _fs.unlink_if_present(pem_path)
            _verify_copy(keytool, work, path, new_type, entries, alias, None if word == "removed" else cert)
            _fs.fsync_path(work)
            os.rename(work, path)
            _fs.fsync_directory(directory)
        finally:
            shutil.rmtree(workspace, ignore_errors=True)


def _workspace_prefix(path):
    return ".%s.directdownload-" % os.path.basename(path)


def _remove_stale_workspaces(path):
    """Under the directory lock no other run of ours works there: a workspace left behind was a killed run's."""
    directory = os.path.dirname(path)
    prefix = _workspace_prefix(path)
    for name in os.listdir(directory):
        leftover = os.path.join(directory, name)
        if name.startswith(prefix) and os.path.isdir(leftover) and not os.path.islink(leftover):
            shutil.rmtree(leftover, ignore_errors=True)


def _copy_keystore(source, copy):
    """Copy the keystore bytes, mode, owner and extended attributes (SELinux label, ACLs) into a new file, fsynced.

    The copy is created with O_EXCL|O_NOFOLLOW inside our private workspace, so nothing else can be there.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    src = os.open(source, flags)
    try:
        info = os.fstat(src)
        dst = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                      | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            while True:
                chunk = os.read(src, 1 << 20)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
            mine = os.fstat(dst)
            if (mine.st_uid, mine.st_gid) != (info.st_uid, info.st_gid):
                try:
                    os.fchown(dst, info.st_uid, info.st_gid)
                except OSError as exc:
                    raise KeystoreError(
                        "cannot give the new keystore the owner of %s (uid %d, gid %d): %s; run as root"
                        % (source, info.st_uid, info.st_gid, exc.strerror or exc), path=source) from exc
            os.fchmod(dst, stat.S_IMODE(info.st_mode))
            _copy_xattrs(src, dst)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_xattrs(src, dst):
    """Best effort: a file system without extended attributes, or a label we may not set, keeps the defaults."""
    if not hasattr(os, "listxattr"):
        return
    try:
        names = os.listxattr(src)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name))
        except OSError:
            pass


def _verify_copy(keytool, work, path, store_type, entries, alias, cert):
    """List the changed copy: every earlier entry kept (same type and fingerprint), ``alias`` as intended.

    keytool's exit code alone is not trusted (CloudStack reported success when the import had failed, #2995,
    #11112), and a copy that lost an entry (the agent's own key pair) must never replace the original.
    """
    found = detect_store_type(work)
    if found != store_type:
        raise KeystoreError("keytool left a %s keystore instead of %s: %s was left untouched"
                            % (found, store_type, path), path=path)
    listed = {entry.alias.lower(): entry for entry in keytool.list(work)}
    for entry in entries:
        key = entry.alias.lower()
        if key == alias.lower():
            continue
        now = listed.get(key)
        if now is None or now.entry_type != entry.entry_type or now.fingerprint != entry.fingerprint:
            raise KeystoreError(
                "the changed keystore lost or altered the %s entry %r (found %s): %s was left untouched"
                % (entry.entry_type.replace("_", " "), entry.alias, now.fingerprint if now else "nothing", path),
                path=path)
    now = listed.get(alias.lower())
    if cert is None:
        if now is not None:
            raise KeystoreError("keytool reported success but %s still holds %r: %s was left untouched"
                                % (path, alias, path), path=path)
    elif now is None or now.entry_type != "trusted_certificate" or now.fingerprint != fingerprint(cert):
        raise KeystoreError(
            "keytool reported success but %s does not hold the certificate under %r (found %s): %s was left "
            "untouched" % (path, alias, now.fingerprint if now else "nothing", path), path=path)


def _trust_change(trust_dir, alias, cert, state, check_mode):
    path = trust_file_path(trust_dir, alias)
    current = read_trust_file(path)
    before = _state_of(current)
    if state == "absent":
        word, after = ("removed", None) if current is not None else ("absent", None)
    else:
        after = fingerprint(cert)
        word = "imported" if current is None else ("unchanged" if before == after else "replaced")
    if not check_mode:
        if word in ("imported", "replaced"):
            write_trust_file(trust_dir, alias, cert)
        elif word == "removed":
            remove_trust_file(trust_dir, alias)
    return word, before, after


def ensure_certificate(alias: str, cert: Any, state: str = "present", keystore: KeystoreTarget | None = None,
                       trust_dir: str | None = None, check_mode: bool = False, now: datetime.datetime | None = None,
                       allow_non_ca: bool = False) -> dict:
    """Make both stores hold ``cert`` under ``alias`` (``present``) or not hold the alias (``absent``).

    A certificate that cannot sign (see :func:`signing_problem`) is refused unless ``allow_non_ca``.

    ``keystore`` is a KeystoreTarget or None (not managed); ``trust_dir`` a directory path or None. The keystore is
    handled first: when keytool fails nothing is written to the trust directory. Returns a dict with ``changed``,
    ``keystore`` and ``trust_dir`` (``imported|replaced|unchanged|removed|absent|skipped``), ``diff`` and the
    certificate description (present only).
    """
    alias = canonical_alias(alias)
    result = {"alias": alias, "state": state}
    if state == "present":
        if cert is None:
            raise InvalidInput("state=present needs the certificate (content or src)")
        check_validity(cert, now)
        check_can_sign(cert, allow_non_ca)
        result.update(describe(cert, now))
    before, after = {}, {}
    result["keystore"] = "skipped"
    if keystore is not None:
        result["keystore"], before["keystore"], after["keystore"] = _keystore_change(keystore, alias, cert, state, check_mode)
    result["trust_dir"] = "skipped"
    if trust_dir is not None:
        result["trust_dir"], before["trust_dir"], after["trust_dir"] = _trust_change(trust_dir, alias, cert, state, check_mode)
    result["changed"] = any(result[store] in ("imported", "replaced", "removed") for store in ("keystore", "trust_dir"))
    result["diff"] = {"before": before, "after": after}
    return result


def inventory(keystore: KeystoreTarget | None = None, trust_dir: str | None = None,
              now: datetime.datetime | None = None, warning_days: int = 30, aliases: list | None = None) -> dict:
    """What the host holds: keystore entries and trust-directory files, each described, plus a view by alias.

    ``keystore`` is a KeystoreTarget or None (not listed). ``aliases`` limits the answer to those aliases.
    """
    now = now or utc_now()
    wanted = {a.lower() for a in aliases} if aliases else None
    result = {}
    by_alias = {}
    if keystore is not None:
        store_type = keystore.existing_type()
        entries = Keytool(keystore.keytool, keystore.password, keystore.keytool_requested).list(keystore.path) if store_type else []
        listed = []
        for entry in entries:
            if wanted is not None and entry.alias.lower() not in wanted:
                continue
            item = {"alias": entry.alias, "entry_type": entry.entry_type, "chain_length": entry.chain_length}
            if entry.certificate is not None:
                item.update(describe(entry.certificate, now, warning_days))
            listed.append(item)
            by_alias.setdefault(entry.alias.lower(), {})["keystore"] = item
        result["keystore"] = {"path": keystore.path, "exists": store_type is not None, "type": store_type, "entries": listed}
    if trust_dir is not None:
        files = list_trust_dir(trust_dir)
        listed = []
        for stem, path, cert in files or []:
            if wanted is not None and stem.lower() not in wanted:
                continue
            item = {"alias": stem, "path": path}
            if isinstance(cert, str):
                item["error"] = cert
            else:
                item.update(describe(cert, now, warning_days))
            listed.append(item)
            by_alias.setdefault(stem.lower(), {})["trust_dir"] = item
        result["trust_dir"] = {"path": trust_dir, "exists": files is not None, "certificates": listed}
    result["certificates"] = [_merge_view(alias, stores, keystore is not None, trust_dir is not None) for alias, stores in sorted(by_alias.items())]
    return result


def _merge_view(alias, stores, keystore_listed, trust_listed):
    """One line per alias: where it is, whether both stores agree, and its description."""
    in_keystore = stores.get("keystore")
    in_trust = stores.get("trust_dir")
    first = in_keystore or in_trust
    view = {key: first.get(key) for key in ("subject", "issuer", "serial", "not_before", "not_after", "fingerprint",
                                            "days_until_expiry", "expired", "expiring_soon")}
    view.update({
        "alias": alias,
        "in_keystore": in_keystore is not None,
        "keystore_entry_type": in_keystore["entry_type"] if in_keystore else None,
        "in_trust_dir": in_trust is not None,
    })
    # in_sync: both stores hold the same certificate. Only meaningful for trusted certificates that both stores were
    # asked about; a private key entry (the agent's own) belongs to the keystore alone.
    if not (keystore_listed and trust_listed) or (in_keystore is not None and in_keystore["entry_type"] != "trusted_certificate"):
        view["in_sync"] = None
    else:
        view["in_sync"] = in_keystore is not None and in_trust is not None and in_keystore.get("fingerprint") == in_trust.get("fingerprint")
    return view
