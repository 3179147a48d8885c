# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import hashlib

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import (
    MAX_CHECKSUM_FILE_SIZE,
    Checksum,
    canonical_algorithm,
    checksum_from_file,
    file_digest,
    new_hash,
    as_given,
    parse_checksum,
    split_checksum_url,
    strongest,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput

MD5 = "d141a8eeaf6bba779d1d1dc5102a81c5"
SHA256 = "c6ab15af7842d23d3c06c138b53a7d09c5e351a79c4eb3c8ca8d65e5ce8900ab"


@pytest.mark.parametrize("text, algorithm, digest", [
    (MD5, "md5", MD5),
    ("{MD5}" + MD5, "md5", MD5),
    ("{}" + MD5, "md5", MD5),
    ("{SHA-256}" + SHA256, "sha256", SHA256),
    ("  {SHA-256}" + SHA256 + "  ", "sha256", SHA256),
    ("{SHA-256}" + SHA256.upper(), "sha256", SHA256),
    ("{sha256}" + SHA256, "sha256", SHA256),
    ("sha256:" + SHA256, "sha256", SHA256),
    ("SHA-1:" + "a" * 40, "sha1", "a" * 40),
    ("{SHA-224}" + "b" * 56, "sha224", "b" * 56),
    ("{SHA-384}" + "c" * 96, "sha384", "c" * 96),
    ("{SHA-512}" + "d" * 128, "sha512", "d" * 128),
])
def test_accepted_forms(text, algorithm, digest):
    parsed = parse_checksum(text)
    assert (parsed.algorithm, parsed.hexdigest) == (algorithm, digest)


@pytest.mark.parametrize("text", [None, "", "   "])
def test_empty_means_no_verification(text):
    assert parse_checksum(text) is None


def test_bare_hex_uses_the_given_default_algorithm():
    assert parse_checksum(SHA256, default_algorithm="sha256").algorithm == "sha256"


@pytest.mark.parametrize("text, fragment", [
    (SHA256, "the bare checksum has 64 hex characters, not the 32 of MD5"),
    ("{MD5}" + SHA256, "an MD5 checksum has 32 hex characters, got 64; 64 hex characters fit SHA-256"),
    ("{SHA-256}" + MD5, "a SHA-256 checksum has 64 hex characters, got 32; 32 hex characters fit MD5: write md5:<hex>"),
    ("{SHA-256}" + "a" * 63, "got 63; no algorithm has 63 (MD5 32, SHA-1 40"),
    ("{SHA3-256}" + SHA256, "unknown checksum algorithm"),
    ("{SHA-256}" + "z" * 64, "the SHA-256 checksum must be hexadecimal"),
    ("sha256:https://example.com/SHA256SUMS", "read by directdownload.kvm.download only"),
    ("not a digest at all", "cannot read the checksum 'not a digest at all': give {SHA-256}<hex>"),
])
def test_refused_forms_say_why(text, fragment):
    with pytest.raises(InvalidInput) as err:
        parse_checksum(text)
    assert fragment in str(err.value)


def test_output_forms():
    checksum = parse_checksum("sha256:" + SHA256.upper())
    assert checksum.cloudstack == "{SHA-256}" + SHA256
    assert checksum.ansible == "sha256:" + SHA256
    assert checksum.matches(SHA256.upper())
    assert checksum == Checksum("SHA-256", SHA256)


def test_strongest_prefers_sha512():
    found = [Checksum("md5", MD5), Checksum("sha512", "d" * 128), Checksum("sha256", SHA256)]
    assert strongest(found).algorithm == "sha512"
    assert strongest([]) is None


def test_hashers_and_file_digest(tmp_path):
    data = b"direct download" * 1000
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_digest(str(path), "SHA-256", block_size=4096) == hashlib.sha256(data).hexdigest()
    hasher = new_hash("md5")
    hasher.update(data)
    assert hasher.hexdigest() == hashlib.md5(data).hexdigest()
    assert canonical_algorithm("Sha_512") == "sha512"


@pytest.mark.parametrize("text", [SHA256, SHA256 + "  debian-12.qcow2", SHA256 + " *debian-12.qcow2"])
def test_a_sha256_with_the_md5_default_names_sha256_and_the_form_to_write(text):
    """CloudStack's bare hex is MD5, and stays so; a SHA-256 there gets a message that says what to write
    (never "the MD5 checksum must be hexadecimal")."""
    with pytest.raises(InvalidInput) as err:
        parse_checksum(text)
    message = str(err.value)
    assert "64 hex characters fit SHA-256: write sha256:<hex> or {SHA-256}<hex>" in message
    assert "must be hexadecimal" not in message


@pytest.mark.parametrize("text, algorithm", [
    (SHA256 + "  debian-12.qcow2", "sha256"),       # sha256sum, text mode
    (SHA256 + " *debian-12.qcow2", "sha256"),       # sha256sum, binary mode
    (MD5 + "  ./netinst.iso", "md5"),               # md5sum: checksum_algorithm md5 decides
    ("SHA256 (debian-12.qcow2) = " + SHA256, "sha256"),  # BSD sha256 / shasum --tag
    ("sha256=" + SHA256, "sha256"),
])
def test_pasted_checksum_lines_are_understood(text, algorithm):
    parsed = parse_checksum(text, default_algorithm=algorithm if ":" not in text else "md5")
    assert parsed.algorithm == algorithm
    assert parsed.hexdigest in (SHA256, MD5)


def test_split_checksum_url():
    assert split_checksum_url("sha256:https://example.com/SHA256SUMS") == ("sha256", "https://example.com/SHA256SUMS")
    assert split_checksum_url("SHA-512:http://x/y.sha512") == ("sha512", "http://x/y.sha512")
    assert split_checksum_url("sha256:" + SHA256) is None
    assert split_checksum_url("{SHA-256}" + SHA256) is None
    assert split_checksum_url("") is None
    with pytest.raises(InvalidInput, match="unknown checksum algorithm"):
        split_checksum_url("sha3:https://example.com/SUMS")


OTHER = "0" * 64
GNU_SUMS = "%s  other.qcow2\n%s *debian-12.qcow2\n%s  ./netinst.iso\n" % (OTHER, SHA256.upper(), "1" * 64)
BSD_SUMS = ("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n# Fedora-Cloud CHECKSUM\n"
            "SHA256 (other.qcow2) = %s\nSHA256 (debian-12.qcow2) = %s\n-----BEGIN PGP SIGNATURE-----\nabc=\n"
            % (OTHER, SHA256))


@pytest.mark.parametrize("text", [GNU_SUMS, BSD_SUMS, SHA256 + "\n", SHA256 + "  debian-12.qcow2\n",
                                  "%s  images/amd64/debian-12.qcow2\n%s  other\n" % (SHA256, OTHER)])
def test_checksum_file_line_for_the_file(text):
    """GNU and BSD lines, a PGP-signed list, a file with one bare digest, a path whose base name matches."""
    checksum = checksum_from_file(text, "debian-12.qcow2", "sha256")
    assert checksum == Checksum("sha256", SHA256)


def test_checksum_file_other_names_and_dotslash():
    assert checksum_from_file(GNU_SUMS, "netinst.iso", "sha256").hexdigest == "1" * 64
    assert checksum_from_file(GNU_SUMS, "other.qcow2", "SHA-256").hexdigest == OTHER


@pytest.mark.parametrize("text, algorithm, fragment", [
    (GNU_SUMS, "sha256", "no SHA-256 checksum for missing.qcow2 in SUMS (it lists other.qcow2, debian-12.qcow2"),
    (BSD_SUMS.replace("debian-12", "x"), "sha512", "(it lists SHA-256 digests: write sha256:<URL>)"),
    (MD5 + "  missing.qcow2\n", "sha256", "SUMS gives missing.qcow2 a digest of 32 hex characters"),
    ("%s  a/missing.qcow2\n%s  b/missing.qcow2\n" % (SHA256, OTHER), "sha256", "several directories"),
    (MD5 + "\n", "sha256", "gives missing.qcow2 a digest of 32 hex characters, not a SHA-256 one; 32 hex characters fit MD5"),
    ("", "sha256", "no SHA-256 checksum for missing.qcow2 in SUMS"),
])
def test_checksum_file_without_a_line_for_the_file(text, algorithm, fragment):
    with pytest.raises(InvalidInput) as err:
        checksum_from_file(text, "missing.qcow2", algorithm, source="SUMS")
    assert fragment in str(err.value)


def test_checksum_file_size_bound_is_small():
    assert MAX_CHECKSUM_FILE_SIZE == 1024 * 1024


@pytest.mark.parametrize("text, shown", [
    ("{SHA-256}" + SHA256.upper(), "{SHA-256}" + SHA256),
    ("sha256:" + SHA256, "sha256:" + SHA256),
    ("sha256:https://example.com/SHA256SUMS", "sha256:" + SHA256),
    ("SHA256 (f) = " + SHA256, "sha256:" + SHA256),
    (SHA256, SHA256),
    (SHA256 + "  f", SHA256),
])
def test_results_echo_the_form_given(text, shown):
    assert as_given(text, Checksum("sha256", SHA256)) == shown
