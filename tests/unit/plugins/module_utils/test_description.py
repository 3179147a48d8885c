# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The generic description of one file: converted from a parsed Metalink, or made of a URL and its mirrors."""

from __future__ import annotations

import hashlib

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import Checksum
from ansible_collections.directdownload.kvm.plugins.module_utils._description import (
    FileDescription,
    from_metalink,
    from_urls,
    parse_mirrors,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._metalink import NS_V3, NS_V4, parse_metalink

SHA256 = hashlib.sha256(b"image").hexdigest()


def v4(body):
    return ('<metalink xmlns="%s"><file name="img.qcow2">%s</file></metalink>' % (NS_V4, body)).encode()


def test_from_metalink_keeps_size_hashes_pieces_and_the_mirror_order():
    parsed = parse_metalink(v4('<size>10</size><hash type="sha-256">%s</hash>'
                               '<pieces length="10" type="sha-1"><hash>%s</hash></pieces>'
                               '<url priority="2">http://b/x</url><url priority="1" location="de">http://a/x</url>'
                               % (SHA256, hashlib.sha1(b"x").hexdigest())))
    described = from_metalink(parsed, document_url="http://host/img.meta4")
    assert described.name == "img.qcow2" and described.size == 10 and described.version == 4
    assert described.checksum == Checksum("sha256", SHA256) and described.pieces.length == 10
    assert [(s.url, s.rank, s.priority, s.location) for s in described.sources] == [
        ("http://a/x", 0, 1, "de"), ("http://b/x", 1, 2, None)]
    assert described.document_url == "http://host/img.meta4" and described.max_connections is None
    assert described.notes == parsed.notes and described.mirrors is described.sources
    assert not described.probe_size


def test_from_metalink_reads_the_file_connection_cap_and_the_server_caps():
    doc = ('<metalink version="3.0" xmlns="%s"><files><file name="img.qcow2"><resources maxconnections="2">'
           '<url type="http" maxconnections="1">http://a/x</url><url type="http">http://b/x</url>'
           '</resources></file></files></metalink>' % NS_V3).encode()
    parsed = parse_metalink(doc)
    described = from_metalink(parsed)
    assert described.max_connections == 2
    assert [s.max_connections for s in described.sources] == [1, None]


def test_expected_checksums_refuse_a_contradicting_user_checksum():
    described = FileDescription("img", hashes=[Checksum("sha256", SHA256)])
    assert described.expected_checksums() == [Checksum("sha256", SHA256)]
    md5 = Checksum("md5", hashlib.md5(b"image").hexdigest())
    assert described.expected_checksums(md5) == [md5, Checksum("sha256", SHA256)]
    with pytest.raises(InvalidInput, match="contradicts"):
        described.expected_checksums(Checksum("sha256", hashlib.sha256(b"other").hexdigest()))
    assert not FileDescription("img").verifiable and described.verifiable


def test_from_urls_puts_the_url_first_then_mirrors_by_priority_and_location():
    described = from_urls("http://origin/x", "x.qcow2", [
        "http://plain/x", {"url": "http://fr/x", "location": "FR"}, {"url": "http://p1/x", "priority": 1},
        {"url": "http://de/x", "location": "de"}, "http://origin/x",
    ], location_preference=["de", "fr"])
    assert [s.url for s in described.sources] == ["http://origin/x", "http://p1/x", "http://de/x", "http://fr/x",
                                                  "http://plain/x"]
    assert [s.rank for s in described.sources] == [0, 1, 2, 3, 4]
    assert described.size is None and described.hashes == [] and described.probe_size
    assert described.notes == ["ignored a duplicate mirror http://origin/x"]


@pytest.mark.parametrize("mirrors, message", [
    ([42], "must be a URL or a dict"),
    ([{"priority": 1}], "has no url"),
    ([{"url": "http://a/x", "weight": 3}], "unknown keys: weight"),
    ([{"url": "http://a/x", "priority": "high"}], "whole number"),
    ([{"url": "http://a/x", "priority": 0}], "from 1 to 999999"),
    (["ftp://user:secret@a/x"], "unsupported scheme 'ftp'"),
])
def test_bad_mirrors_are_refused_without_showing_secrets(mirrors, message):
    with pytest.raises(InvalidInput, match=message) as info:
        parse_mirrors(mirrors)
    assert "secret" not in info.value.msg


def test_as_dict_redacts_urls():
    described = from_urls("http://user:pw@origin/x?token=s3cr3t", "x", ["http://a/x"])
    summary = described.as_dict()
    assert "pw" not in str(summary) and "s3cr3t" not in str(summary)
    assert [m["url"] for m in summary["mirrors"]][1] == "http://a/x"


def test_a_converted_metalink_keeps_the_parser_as_the_judge_of_expected_checksums():
    parsed = parse_metalink(v4('<hash type="sha-256">%s</hash><url>http://a/x</url>' % SHA256))
    calls = []
    real = parsed.expected_checksums

    def expected_checksums(user_checksum=None):
        calls.append(user_checksum)
        return real(user_checksum)
    parsed.expected_checksums = expected_checksums
    described = from_metalink(parsed)
    md5 = Checksum("md5", hashlib.md5(b"image").hexdigest())
    assert described.expected_checksums(md5) == [md5, Checksum("sha256", SHA256)] and calls == [md5]
