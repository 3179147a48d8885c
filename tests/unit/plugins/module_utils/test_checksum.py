# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import hashlib

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import (
    Checksum,
    canonical_algorithm,
    file_digest,
    new_hash,
    parse_checksum,
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
    (SHA256, "a MD5 checksum has 32 hex characters, got 64"),
    ("{MD5}" + SHA256, "has 32 hex characters, got 64"),
    ("{SHA-256}" + MD5, "a SHA-256 checksum has 64 hex characters, got 32"),
    ("{SHA3-256}" + SHA256, "unknown checksum algorithm"),
    ("{SHA-256}" + "z" * 64, "must be hexadecimal"),
    ("sha256:https://example.com/SHA256SUMS", "not supported"),
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
