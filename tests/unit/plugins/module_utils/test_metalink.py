# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Metalink parsing: v4 and v3, mirror order, hashes, pieces, and hostile documents."""

from __future__ import annotations

import hashlib

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import Checksum
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._metalink import (
    NS_V3,
    NS_V4,
    parse_metalink,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import is_metalink_url

SHA256 = hashlib.sha256(b"image").hexdigest()
SHA512 = hashlib.sha512(b"image").hexdigest()
SHA1 = hashlib.sha1(b"image").hexdigest()
MD5 = hashlib.md5(b"image").hexdigest()


def v4(body, name="img.qcow2", extra_files=""):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="%s">\n<file name="%s">\n%s\n</file>%s\n'
            '</metalink>\n' % (NS_V4, name, body, extra_files)).encode("utf-8")


def v3(verification, resources, name="img.qcow2", size=""):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<metalink version="3.0" xmlns="%s">\n<files>\n'
            '<file name="%s">%s<verification>%s</verification>\n<resources>%s</resources>\n</file>\n</files>\n'
            '</metalink>\n' % (NS_V3, name, size, verification, resources)).encode("utf-8")


def urls(metalink_file):
    return [m.url for m in metalink_file.mirrors]


# -- the RFC 5854 example of the research notes (§10.1)


def test_v4_priority_order_and_strongest_file_hash_never_the_piece_hash():
    doc = v4("""
        <size>300000</size>
        <hash type="sha-256">%s</hash>
        <hash type="md5">%s</hash>
        <pieces length="262144" type="sha-1"><hash>%s</hash><hash>%s</hash></pieces>
        <url priority="2" location="de">https://mirror-b/img.qcow2</url>
        <url priority="1">http://mirror-a/img.qcow2</url>
        <url>https://mirror-c/img.qcow2</url>
    """ % (SHA256, MD5, SHA1, SHA1))
    parsed = parse_metalink(doc)
    assert parsed.version == 4
    assert parsed.name == "img.qcow2"
    assert parsed.size == 300000
    assert urls(parsed) == ["http://mirror-a/img.qcow2", "https://mirror-b/img.qcow2", "https://mirror-c/img.qcow2"]
    assert [m.rank for m in parsed.mirrors] == [0, 1, 2]
    assert parsed.mirrors[1].location == "de" and parsed.mirrors[1].priority == 2
    assert parsed.checksum == Checksum("sha256", SHA256)
    assert set(parsed.hashes) == {Checksum("sha256", SHA256), Checksum("md5", MD5)}
    assert Checksum("sha1", SHA1) not in parsed.hashes
    assert parsed.pieces.length == 262144 and parsed.pieces.algorithm == "sha1" and parsed.pieces.hashes == [SHA1] * 2
    assert parsed.notes == []


@pytest.mark.parametrize("type_name, algorithm, digest", [
    ("sha-256", "sha256", SHA256), ("sha256", "sha256", SHA256), ("SHA-256", "sha256", SHA256),
    ("sha-1", "sha1", SHA1), ("sha1", "sha1", SHA1), ("md5", "md5", MD5), ("MD5", "md5", MD5),
    ("sha-512", "sha512", SHA512),
])
def test_hash_type_names(type_name, algorithm, digest):
    parsed = parse_metalink(v4('<hash type="%s">%s</hash><url>http://a/x</url>' % (type_name, digest.upper())))
    assert parsed.hashes == [Checksum(algorithm, digest)]


def test_strongest_of_all_six():
    hashes = {"md5": MD5, "sha-1": SHA1, "sha-224": hashlib.sha224(b"i").hexdigest(), "sha-256": SHA256,
              "sha-384": hashlib.sha384(b"i").hexdigest(), "sha-512": SHA512}
    body = "".join('<hash type="%s">%s</hash>' % item for item in hashes.items()) + "<url>http://a/x</url>"
    assert parse_metalink(v4(body)).checksum == Checksum("sha512", SHA512)
    del hashes["sha-512"]
    body = "".join('<hash type="%s">%s</hash>' % item for item in hashes.items()) + "<url>http://a/x</url>"
    assert parse_metalink(v4(body)).checksum.algorithm == "sha384"


def test_unknown_hash_types_are_ignored_with_a_note():
    parsed = parse_metalink(v4('<hash type="adler32">0a1b2c3d</hash><hash type="sha3-256">%s</hash>'
                               '<hash type="md5">%s</hash><url>http://a/x</url>' % (SHA256, MD5)))
    assert parsed.hashes == [Checksum("md5", MD5)]
    assert any("adler32" in note for note in parsed.notes) and any("sha3-256" in note for note in parsed.notes)


def test_no_hash_at_all_is_allowed_but_not_verifiable():
    parsed = parse_metalink(v4("<url>http://a/x</url>"))
    assert parsed.hashes == [] and parsed.checksum is None and not parsed.verifiable


def test_malformed_known_hash_is_an_error():
    with pytest.raises(InvalidInput, match="malformed sha-256"):
        parse_metalink(v4('<hash type="sha-256">nothex</hash><url>http://a/x</url>'))


def test_two_different_digests_of_one_algorithm_are_an_error():
    with pytest.raises(InvalidInput, match="two different"):
        parse_metalink(v4('<hash type="sha-256">%s</hash><hash type="sha256">%s</hash><url>http://a/x</url>'
                          % (SHA256, "0" * 64)))


def test_missing_priority_last_then_document_order_and_bad_priority_noted():
    parsed = parse_metalink(v4("""
        <url>http://n1/x</url>
        <url priority="10">http://p10/x</url>
        <url priority="abc">http://bad/x</url>
        <url priority="1">http://p1a/x</url>
        <url priority="1">http://p1b/x</url>
        <url>http://n2/x</url>
    """))
    assert urls(parsed) == ["http://p1a/x", "http://p1b/x", "http://p10/x", "http://n1/x", "http://bad/x",
                            "http://n2/x"]
    assert any("priority" in note and "abc" in note for note in parsed.notes)


def test_location_preference_breaks_priority_ties_only():
    doc = v4("""
        <url priority="1" location="us">http://us1/x</url>
        <url priority="1" location="DE">http://de1/x</url>
        <url priority="2" location="fr">http://fr2/x</url>
        <url priority="1" location="fr">http://fr1/x</url>
        <url priority="1">http://none1/x</url>
    """)
    assert urls(parse_metalink(doc)) == ["http://us1/x", "http://de1/x", "http://fr1/x", "http://none1/x",
                                         "http://fr2/x"]
    ordered = parse_metalink(doc, location_preference=["fr", "de"])
    assert urls(ordered) == ["http://fr1/x", "http://de1/x", "http://us1/x", "http://none1/x", "http://fr2/x"]
    assert ordered.mirrors[1].location == "de"


def test_schemes_other_than_http_https_nfs_skipped_with_notes():
    parsed = parse_metalink(v4("""
        <url>ftp://f/x</url>
        <url>file:///etc/passwd</url>
        <url>nfs://server/export/x</url>
        <url>https://s/x</url>
        <url>http://torrent/x.torrent</url>
        <url>http://nested/other.meta4</url>
        <url>http://s2/x</url>
        <url>http://s2/x</url>
        <metaurl mediatype="torrent">http://t/x.torrent</metaurl>
    """))
    assert urls(parsed) == ["nfs://server/export/x", "https://s/x", "http://s2/x"]
    assert [m.type for m in parsed.mirrors] == ["nfs", "https", "http"]
    notes = " | ".join(parsed.notes)
    for expected in ("'ftp'", "'file'", "BitTorrent", "metaurl", "other metalink", "duplicate"):
        assert expected in notes


def test_no_usable_url_is_a_clear_error():
    with pytest.raises(InvalidInput, match="no usable URL.*ftp"):
        parse_metalink(v4('<hash type="md5">%s</hash><url>ftp://a/x</url>' % MD5))
    with pytest.raises(InvalidInput, match="no usable URL"):
        parse_metalink(v4("<size>10</size>"))


def test_empty_documents():
    for data in (b"", b"   \n"):
        with pytest.raises(InvalidInput, match="empty"):
            parse_metalink(data)
    with pytest.raises(InvalidInput, match="no <file>"):
        parse_metalink(('<metalink xmlns="%s"></metalink>' % NS_V4).encode())
    with pytest.raises(InvalidInput, match="no <file>"):
        parse_metalink(('<metalink xmlns="%s"><files/></metalink>' % NS_V3).encode())


def test_not_a_metalink():
    with pytest.raises(InvalidInput, match="not a metalink"):
        parse_metalink(b"<html><body>hello</body></html>")
    with pytest.raises(InvalidInput, match="not a metalink"):
        parse_metalink(b'<metalink xmlns="urn:example:other"><file name="a"/></metalink>')
    with pytest.raises(InvalidInput, match="not well-formed"):
        parse_metalink(b"\x00\x01 qcow2 bytes")
    with pytest.raises(InvalidInput, match="not well-formed"):
        parse_metalink(v4("<url>http://a/x</url>")[:-20])


def test_version_detected_by_namespace_not_by_suffix_or_attribute():
    v3_doc = v3("", '<url type="http">http://a/x</url>')
    assert parse_metalink(v3_doc).version == 3
    # The same element names in the v4 namespace are read as v4.
    assert parse_metalink(v4("<url>http://a/x</url>")).version == 4


# -- Metalink 3


def test_v3_preference_higher_first_location_type_maxconnections():
    doc = v3(
        '<hash type="sha256">%s</hash><hash type="md5">%s</hash>'
        '<pieces length="1024" type="sha1"><hash piece="1">%s</hash><hash piece="0">%s</hash></pieces>'
        % (SHA256, MD5, "1" * 40, "0" * 40),
        """
        <url type="http" location="us" preference="10">http://low/x</url>
        <url type="https" location="de" preference="100" maxconnections="2">https://high/x</url>
        <url type="http">http://none/x</url>
        <url type="bittorrent" preference="100">http://t/x.torrent</url>
        <url type="ftp" preference="90">ftp://f/x</url>
        <url type="http" location="de" preference="10">http://low-de/x</url>
        """,
        size="<size>2048</size>",
    )
    parsed = parse_metalink(doc)
    assert parsed.version == 3 and parsed.size == 2048
    assert urls(parsed) == ["https://high/x", "http://low/x", "http://low-de/x", "http://none/x"]
    by_location = parse_metalink(doc, location_preference=["de"])
    assert urls(by_location) == ["https://high/x", "http://low-de/x", "http://low/x", "http://none/x"]
    high = parsed.mirrors[0]
    assert (high.preference, high.location, high.type, high.max_connections) == (100, "de", "https", 2)
    assert parsed.checksum == Checksum("sha256", SHA256)
    # Pieces are put in piece-number order; they never become the file hash.
    assert parsed.pieces.hashes == ["0" * 40, "1" * 40]
    assert Checksum("sha1", "0" * 40) not in parsed.hashes
    assert any("BitTorrent" in note for note in parsed.notes)
    assert any("'ftp'" in note for note in parsed.notes)


def test_v3_resources_maxconnections_caps_the_file_not_each_server():
    doc = v3("", '<url type="http">http://a/x</url>').replace(b"<resources>", b'<resources maxconnections="3">')
    parsed = parse_metalink(doc)
    assert parsed.max_connections == 3 and parsed.mirrors[0].max_connections is None


# -- pieces


def test_pieces_strongest_type_and_count_check():
    body = """<size>2500</size><hash type="md5">%s</hash>
        <pieces length="1000" type="md5"><hash>%s</hash><hash>%s</hash><hash>%s</hash></pieces>
        <pieces length="1000" type="sha-256"><hash>%s</hash><hash>%s</hash><hash>%s</hash></pieces>
        <url>http://a/x</url>""" % ((MD5,) * 4 + (SHA256,) * 3)
    parsed = parse_metalink(v4(body))
    assert parsed.pieces.algorithm == "sha256" and len(parsed.pieces.hashes) == 3
    assert parsed.hashes == [Checksum("md5", MD5)]


def test_pieces_with_wrong_count_or_without_size_are_ignored_with_a_note():
    wrong = parse_metalink(v4('<size>2500</size><pieces length="1000" type="sha-1"><hash>%s</hash></pieces>'
                              '<url>http://a/x</url>' % SHA1))
    assert wrong.pieces is None and any("piece hashes" in note for note in wrong.notes)
    no_size = parse_metalink(v4('<pieces length="1000" type="sha-1"><hash>%s</hash></pieces><url>http://a/x</url>'
                                % SHA1))
    assert no_size.pieces is None and any("no <size>" in note for note in no_size.notes)
    bad_length = parse_metalink(v4('<size>10</size><pieces length="0" type="sha-1"><hash>%s</hash></pieces>'
                                   '<url>http://a/x</url>' % SHA1))
    assert bad_length.pieces is None
    unknown = parse_metalink(v4('<size>10</size><pieces length="10" type="tiger"><hash>ab</hash></pieces>'
                                '<url>http://a/x</url>'))
    assert unknown.pieces is None and any("tiger" in note for note in unknown.notes)


def test_size_rules():
    with pytest.raises(InvalidInput, match="0 bytes"):
        parse_metalink(v4("<size>0</size><url>http://a/x</url>"))
    with pytest.raises(InvalidInput, match="not a byte count"):
        parse_metalink(v4("<size>-5</size><url>http://a/x</url>"))
    assert parse_metalink(v4("<url>http://a/x</url>")).size is None


# -- several files, names


def test_several_files_need_a_name():
    other = '<file name="other.iso"><url>http://b/other.iso</url></file>'
    doc = v4("<url>http://a/img.qcow2</url>", extra_files=other)
    with pytest.raises(InvalidInput, match="lists 2 files.*'img.qcow2'.*'other.iso'"):
        parse_metalink(doc)
    assert parse_metalink(doc, name="other.iso").mirrors[0].url == "http://b/other.iso"
    assert parse_metalink(doc, name="img.qcow2").name == "img.qcow2"
    with pytest.raises(InvalidInput, match="no file named 'missing'.*'other.iso'"):
        parse_metalink(doc, name="missing")


def test_single_file_with_a_non_matching_name_is_an_error():
    with pytest.raises(InvalidInput, match="no file named"):
        parse_metalink(v4("<url>http://a/x</url>"), name="else.qcow2")


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "/etc/passwd", "C:\\x", "./x", "a/..", "C:x", "", "a\x01b"])
def test_unsafe_file_names_are_refused(name):
    body = "<url>http://a/x</url>"
    doc = ('<metalink xmlns="%s"><file name="%s">%s</file></metalink>'
           % (NS_V4, name.replace("\x01", "&#1;"), body)).encode()
    with pytest.raises(InvalidInput):
        parse_metalink(doc)


# -- hostile documents


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="a.qcow2"><url>http://a/&lol9;</url></file></metalink>
"""


def test_billion_laughs_refused():
    with pytest.raises(InvalidInput, match="DOCTYPE or ENTITY"):
        parse_metalink(BILLION_LAUGHS)


def test_xxe_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    doc = ('<?xml version="1.0"?><!DOCTYPE m [<!ENTITY xxe SYSTEM "file://%s">]>'
           '<metalink xmlns="%s"><file name="a.qcow2"><url>http://a/&xxe;</url></file></metalink>'
           % (secret, NS_V4)).encode()
    with pytest.raises(InvalidInput, match="DOCTYPE") as info:
        parse_metalink(doc)
    assert "TOPSECRET" not in str(info.value)


def test_external_dtd_and_parameter_entities_refused():
    doc = ('<!DOCTYPE metalink SYSTEM "http://127.0.0.1:9/evil.dtd"><metalink xmlns="%s"><file name="a">'
           '<url>http://a/x</url></file></metalink>' % NS_V4).encode()
    with pytest.raises(InvalidInput, match="DOCTYPE"):
        parse_metalink(doc)
    doc = b'<!doctype x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p">%p;]><x/>'
    with pytest.raises(InvalidInput, match="DOCTYPE"):
        parse_metalink(doc)


def test_declarations_hidden_in_utf16_refused():
    text = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE m [<!ENTITY a "b">]>'
            '<metalink xmlns="%s"><file name="a.qcow2"><url>http://a/&a;</url></file></metalink>' % NS_V4)
    with pytest.raises(InvalidInput, match="DOCTYPE"):
        parse_metalink(text.encode("utf-16"))


def test_utf16_document_without_declarations_is_fine():
    text = ('<?xml version="1.0" encoding="UTF-16"?><metalink xmlns="%s"><file name="a.qcow2">'
            '<url>http://a/x</url></file></metalink>' % NS_V4)
    assert parse_metalink(text.encode("utf-16")).name == "a.qcow2"


def test_size_cap():
    filler = "<!-- %s -->" % ("x" * 2000)
    doc = v4(filler + "<url>http://a/x</url>")
    with pytest.raises(InvalidInput, match="more than the 1000 allowed"):
        parse_metalink(doc, max_size=1000)
    assert parse_metalink(doc, max_size=len(doc)).name == "img.qcow2"
    with pytest.raises(InvalidInput, match="more than"):
        parse_metalink(b" " * (1024 * 1024 + 1))


def test_text_is_not_bytes():
    with pytest.raises(InvalidInput, match="bytes"):
        parse_metalink(v4("<url>http://a/x</url>").decode())


def test_credentials_in_urls_are_redacted_in_notes_and_summaries():
    parsed = parse_metalink(v4("<url>http://user:pw@a/x?token=s3cr3t</url><url>http://user:pw@a/x?token=s3cr3t</url>"))
    assert "pw" not in repr(parsed.mirrors) and "s3cr3t" not in " ".join(parsed.notes)
    assert "s3cr3t" not in str(parsed.as_dict()) and ":pw@" not in str(parsed.as_dict())
    assert parsed.mirrors[0].url == "http://user:pw@a/x?token=s3cr3t"  # the real URL stays usable


# -- expected checksums


def test_expected_checksums_user_and_metalink_both_kept():
    parsed = parse_metalink(v4('<hash type="sha-256">%s</hash><hash type="md5">%s</hash><url>http://a/x</url>'
                               % (SHA256, MD5)))
    assert parsed.expected_checksums() == [Checksum("sha256", SHA256)]
    user = Checksum("sha512", SHA512)
    assert parsed.expected_checksums(user) == [user, Checksum("sha256", SHA256)]
    assert parsed.expected_checksums(Checksum("md5", MD5)) == [Checksum("md5", MD5), Checksum("sha256", SHA256)]
    assert parsed.expected_checksums(Checksum("sha256", SHA256)) == [Checksum("sha256", SHA256)]


def test_expected_checksums_contradiction_is_refused_early():
    parsed = parse_metalink(v4('<hash type="sha-256">%s</hash><url>http://a/x</url>' % SHA256))
    with pytest.raises(InvalidInput, match="contradicts the metalink"):
        parsed.expected_checksums(Checksum("sha256", "0" * 64))


# -- detection of metalink URLs (the helper lives in _urls; checked here with the server's types)


@pytest.mark.parametrize("url, content_type, expected", [
    ("http://h/img.meta4", None, True),
    ("http://h/img.metalink?sig=1", None, True),
    ("http://h/download?id=7", "application/metalink4+xml", True),
    ("http://h/download?id=7", "application/metalink+xml; charset=utf-8", True),
    ("http://h/download?id=7", "application/octet-stream", False),
    ("http://h/img.qcow2", None, False),
])
def test_is_metalink_url(url, content_type, expected):
    assert is_metalink_url(url, content_type) is expected
