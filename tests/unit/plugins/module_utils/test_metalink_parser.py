# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Metalink conformance (RFC 5854 and Metalink 3.0): file names, relative URLs, maxconnections, malformed and
unusable hashes. Cases taken from the RFC's rules and from the kinds of documents aria2's own suite parses."""

from __future__ import annotations

import hashlib

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import Checksum
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._metalink import (
    NS_V3,
    NS_V4,
    load_metalink,
    parse_metalink,
)

SHA256 = hashlib.sha256(b"image").hexdigest()
SHA1 = hashlib.sha1(b"image").hexdigest()
MD5 = hashlib.md5(b"image").hexdigest()


def v4(body, name="img.qcow2", root_attributes="", file_attributes=""):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="%s"%s>\n<file name="%s"%s>\n%s\n</file>\n'
            '</metalink>\n' % (NS_V4, root_attributes, name, file_attributes, body)).encode("utf-8")


def v3(verification, resources, name="img.qcow2", size="", resources_attributes=""):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<metalink version="3.0" xmlns="%s">\n<files>\n'
            '<file name="%s">%s<verification>%s</verification>\n<resources%s>%s</resources>\n</file>\n</files>\n'
            '</metalink>\n' % (NS_V3, name, size, verification, resources_attributes, resources)).encode("utf-8")


def urls(metalink_file):
    return [m.url for m in metalink_file.mirrors]


HASHED = '<hash type="sha-256">%s</hash><url>http://a/x</url>' % SHA256


# -- file@name: RFC 5854 section 4.1.2.1


@pytest.mark.parametrize("name", ["img.qcow2", "dir/image.qcow2", "a/b/c.iso", ".hidden", "name with spaces.raw",
                                  "ünïcode.qcow2", "a..b.qcow2", "..x", "x..", "~user/x"])
def test_relative_and_plain_names_are_accepted(name):
    parsed = parse_metalink(v4(HASHED, name=name))
    assert parsed.name == name
    assert parse_metalink(v4(HASHED, name=name), name=name).name == name


@pytest.mark.parametrize("name, why", [
    ("/etc/passwd", "absolute"),
    ("/", "absolute"),
    ("../x", "'..' segment"),
    ("a/../../x", "'..' segment"),
    ("a/..", "'..' segment"),
    ("./x", "'.' segment"),
    ("a/./x", "'.' segment"),
    ("..", "'..' segment"),
    ("a\\b", "backslash"),
    ("..\\..\\example.ext", "backslash"),  # aria2's metalink4-dosdirtraversal.xml
    ("C:x", "drive letter"),
    ("c:/windows/x", "drive letter"),
    ("a&#127;b", "control character"),
    ("a&#x85;b", "control character"),
    ("a&#9;b", "control character"),
    ("dir/", "directory"),
    ("", "no name"),
])
def test_traversal_names_are_refused(name, why):
    with pytest.raises(InvalidInput, match=why):
        parse_metalink(v4(HASHED, name=name))


def test_name_is_matched_exactly_among_several_files():
    other = '</file><file name="dir/other.iso"><url>http://b/other.iso</url>'
    doc = v4(HASHED + other, name="dir/img.qcow2")
    assert parse_metalink(doc, name="dir/img.qcow2").mirrors[0].url == "http://a/x"
    assert parse_metalink(doc, name="dir/other.iso").mirrors[0].url == "http://b/other.iso"
    with pytest.raises(InvalidInput, match="no file named 'img.qcow2'"):
        parse_metalink(doc, name="img.qcow2")


def test_v3_traversal_name_refused_too():
    with pytest.raises(InvalidInput, match="'..' segment"):
        parse_metalink(v3('<hash type="sha256">%s</hash>' % SHA256, '<url type="http">http://a/x</url>',
                          name="../aria2-0.5.2.tar.bz2"))


# -- relative <url> references: xml:base, then the document's URL (RFC 3986 section 5.1)


def test_relative_url_resolves_against_the_document_url():
    doc = v4('<hash type="sha-256">%s</hash><url>img.qcow2</url><url>../other/img.qcow2</url>'
             '<url>//mirror-b/img.qcow2</url><url>/top/img.qcow2</url>' % SHA256)
    parsed = parse_metalink(doc, base_url="https://www.example.com/images/v1/img.qcow2.meta4?sig=secret")
    assert urls(parsed) == ["https://www.example.com/images/v1/img.qcow2", "https://www.example.com/images/other/img.qcow2",
                            "https://mirror-b/img.qcow2", "https://www.example.com/top/img.qcow2"]


def test_relative_url_resolves_against_an_nfs_document_url():
    parsed = parse_metalink(v4('<url>img.qcow2</url><url>../b/img.qcow2</url>'),
                            base_url="nfs://filer/export/a/img.qcow2.meta4")
    assert urls(parsed) == ["nfs://filer/export/a/img.qcow2", "nfs://filer/export/b/img.qcow2"]


def test_xml_base_on_the_element_and_its_ancestors_wins_over_the_document_url():
    body = ('<hash type="sha-256">%s</hash>'
            '<url>a.qcow2</url>'
            '<url xml:base="sub/">b.qcow2</url>'
            '<url xml:base="http://other.example/x/">c.qcow2</url>'
            '<url>https://absolute.example/d.qcow2</url>' % SHA256)
    doc = v4(body, root_attributes=' xml:base="https://cdn.example/root/"', file_attributes=' xml:base="files/"')
    parsed = parse_metalink(doc, base_url="http://document.example/doc.meta4")
    assert urls(parsed) == ["https://cdn.example/root/files/a.qcow2", "https://cdn.example/root/files/sub/b.qcow2",
                            "http://other.example/x/c.qcow2", "https://absolute.example/d.qcow2"]


def test_v3_xml_base_on_resources():
    doc = v3('<hash type="sha256">%s</hash>' % SHA256, '<url type="http">x.qcow2</url>',
             resources_attributes=' xml:base="http://m.example/pub/"')
    assert urls(parse_metalink(doc)) == ["http://m.example/pub/x.qcow2"]


def test_resolution_happens_before_the_scheme_filter():
    doc = v4('<url>img.qcow2</url>', root_attributes=' xml:base="ftp://ftp.example/pub/"')
    with pytest.raises(InvalidInput, match="no usable URL.*'ftp'"):
        parse_metalink(doc, base_url="https://www.example.com/img.meta4")
    # ...and a relative reference that resolves to a metalink is still not followed.
    nested = v4('<url>img.qcow2</url><url>other.meta4</url>')
    parsed = parse_metalink(nested, base_url="https://www.example.com/img.meta4")
    assert urls(parsed) == ["https://www.example.com/img.qcow2"]
    assert any("other metalink" in note for note in parsed.notes)


def test_relative_url_without_any_base_is_ignored_with_a_note():
    parsed = parse_metalink(v4('<url>img.qcow2</url><url>http://a/img.qcow2</url>'))
    assert urls(parsed) == ["http://a/img.qcow2"]
    assert any("1 relative URL" in note for note in parsed.notes)
    with pytest.raises(InvalidInput, match="relative URL"):
        parse_metalink(v4('<url>img.qcow2</url>'))


class _Body:
    def __init__(self, data, url):
        self.data, self.url, self.done = data, url, False

    def readinto(self, buf):
        if self.done:
            return 0
        self.done = True
        buf[:len(self.data)] = self.data
        return len(self.data)

    def close(self):
        pass


class _Source:
    def __init__(self, data, url):
        self.data, self.url = data, url

    def open(self, offset=0):
        assert offset == 0
        return _Body(self.data, self.url)


def test_load_metalink_passes_its_url_as_the_base():
    document = v4('<hash type="sha-256">%s</hash><url>img.qcow2</url>' % SHA256)
    url = "http://www.example.com/dir/img.qcow2.meta4"
    parsed = load_metalink(url, lambda u: _Source(document, u))
    assert urls(parsed) == ["http://www.example.com/dir/img.qcow2"]


def test_load_metalink_uses_the_url_after_redirects_as_the_base():
    # RFC 3986 section 5.1.3: the base is the URI the document was retrieved from, the last one of a redirect chain.
    document = v4('<hash type="sha-256">%s</hash><url>img.qcow2</url>' % SHA256)

    class Redirected(_Source):
        def open(self, offset=0):
            return _Body(self.data, "https://cdn.example/final/img.qcow2.meta4")

    parsed = load_metalink("http://www.example.com/latest.meta4", lambda u: Redirected(document, u))
    assert urls(parsed) == ["https://cdn.example/final/img.qcow2"]


def test_iri_urls_become_uris():
    # RFC 5854 <url> holds an IRI; RFC 3987 section 3.1 maps it to a URI: IDNA host, UTF-8 percent-encoding.
    parsed = parse_metalink(v4('<url>http://bücher.example/ü/ñ.qcow2?v=é</url><url>http://a/plain%20x</url>'))
    assert urls(parsed) == ["http://xn--bcher-kva.example/%C3%BC/%C3%B1.qcow2?v=%C3%A9", "http://a/plain%20x"]
    relative = parse_metalink(v4('<url>ü.qcow2</url>'), base_url="http://a/dir/doc.meta4")
    assert urls(relative) == ["http://a/dir/%C3%BC.qcow2"]


# -- integers are ASCII digits (str.isdigit and int() also accept "²", Arabic-Indic digits and "1_000")


@pytest.mark.parametrize("size", ["\u00b2", "\u0661\u0662", "1_000", "+5", " ", "5.0"])
def test_size_must_be_ascii_digits(size):
    with pytest.raises(InvalidInput, match="not a byte count"):
        parse_metalink(v4("<size>%s</size><url>http://a/x</url>" % size.encode().decode("unicode_escape")))


def test_integer_attributes_must_be_ascii_digits():
    parsed = parse_metalink(v4('<url priority="1_0">http://a/x</url><url priority="\u0661">http://b/x</url>'
                               .encode().decode("unicode_escape")))
    assert [m.priority for m in parsed.mirrors] == [None, None]
    assert sum("not an integer" in note for note in parsed.notes) == 2
    assert parse_metalink(v4('<url priority=" 7 ">http://a/x</url>')).mirrors[0].priority == 7


# -- maxconnections (Metalink 3.0)


def test_v3_resources_maxconnections_caps_the_file_and_url_maxconnections_one_server():
    doc = v3('<hash type="sha256">%s</hash>' % SHA256,
             '<url type="http" maxconnections="2">http://a/x</url><url type="http">http://b/x</url>',
             resources_attributes=' maxconnections="3"')
    parsed = parse_metalink(doc)
    assert parsed.max_connections == 3
    assert [m.max_connections for m in parsed.mirrors] == [2, None]
    assert parsed.as_dict()["max_connections"] == 3


def test_v3_without_maxconnections_and_bad_values():
    doc = v3('<hash type="sha256">%s</hash>' % SHA256, '<url type="http" maxconnections="xyz">http://a/x</url>',
             resources_attributes=' maxconnections="0"')
    parsed = parse_metalink(doc)
    assert parsed.max_connections is None and parsed.mirrors[0].max_connections is None
    assert any("maxconnections" in note and "out of range" in note for note in parsed.notes)
    assert any("maxconnections" in note and "not an integer" in note for note in parsed.notes)
    plain = parse_metalink(v3('<hash type="sha256">%s</hash>' % SHA256, '<url type="http">http://a/x</url>'))
    assert plain.max_connections is None and plain.mirrors[0].max_connections is None


def test_v4_has_no_maxconnections():
    parsed = parse_metalink(v4('<hash type="sha-256">%s</hash><url maxconnections="1">http://a/x</url>' % SHA256))
    assert parsed.max_connections is None and parsed.mirrors[0].max_connections is None


# -- malformed weaker hashes


def test_malformed_weaker_hash_beside_a_valid_stronger_one_is_ignored_with_a_note():
    # aria2's metalink4.xml: a 31-digit MD5 beside a valid SHA-1.
    parsed = parse_metalink(v4('<hash type="md5">cbd18db4cc2f85cedef654fccc4a4d8</hash>'
                               '<hash type="sha-1">%s</hash><url>http://a/x</url>' % SHA1))
    assert parsed.hashes == [Checksum("sha1", SHA1)]
    assert any("malformed md5" in note and "SHA-1" in note for note in parsed.notes)
    # order in the document does not matter
    parsed = parse_metalink(v4('<hash type="sha-256">%s</hash><hash type="md5">zz</hash><url>http://a/x</url>'
                               % SHA256))
    assert parsed.hashes == [Checksum("sha256", SHA256)]


@pytest.mark.parametrize("body", [
    '<hash type="sha-256">nothex</hash><hash type="md5">%s</hash>' % MD5,  # malformed stronger one: refused
    '<hash type="sha-256">%s</hash><hash type="sha-256">abc</hash>' % SHA256,  # same algorithm: refused
    '<hash type="md5">abc</hash>',  # alone: refused
])
def test_malformed_hash_without_a_valid_stronger_one_is_refused(body):
    with pytest.raises(InvalidInput, match="malformed"):
        parse_metalink(v4(body + "<url>http://a/x</url>"))


def test_malformed_weaker_piece_list_is_ignored_beside_a_stronger_one():
    body = ('<size>2000</size><pieces length="1000" type="sha-1"><hash>%s</hash><hash>bad</hash></pieces>'
            '<pieces length="1000" type="sha-256"><hash>%s</hash><hash>%s</hash></pieces><url>http://a/x</url>'
            % (SHA1, SHA256, SHA256))
    parsed = parse_metalink(v4(body))
    assert parsed.pieces.algorithm == "sha256"
    assert any("sha1 piece hashes with a malformed one" in note for note in parsed.notes)


def test_malformed_piece_list_beside_a_file_hash_is_ignored_alone_it_is_refused():
    pieces = '<size>2000</size><pieces length="1000" type="sha-1"><hash>%s</hash><hash>bad</hash></pieces>' % SHA1
    parsed = parse_metalink(v4(pieces + '<hash type="sha-256">%s</hash><url>http://a/x</url>' % SHA256))
    assert parsed.pieces is None and parsed.hashes == [Checksum("sha256", SHA256)]
    with pytest.raises(InvalidInput, match="malformed sha-1 piece hash"):
        parse_metalink(v4(pieces + "<url>http://a/x</url>"))
    # a file hash weaker than the piece list does not vouch for it
    with pytest.raises(InvalidInput, match="malformed sha-1 piece hash"):
        parse_metalink(v4(pieces + '<hash type="md5">%s</hash><url>http://a/x</url>' % MD5))


def test_v3_piece_numbers_must_be_0_to_n_minus_1():
    size = "<size>2048</size>"
    for numbers in (("0", "0"), ("0", "2"), ("1", "2")):
        doc = v3('<hash type="sha256">%s</hash><pieces length="1024" type="sha1"><hash piece="%s">%s</hash>'
                 '<hash piece="%s">%s</hash></pieces>' % (SHA256, numbers[0], SHA1, numbers[1], SHA1),
                 '<url type="http">http://a/x</url>', size=size)
        parsed = parse_metalink(doc)
        assert parsed.pieces is None, numbers
        assert any("piece numbers" in note for note in parsed.notes)
    good = v3('<pieces length="1024" type="sha1"><hash piece="1">%s</hash><hash piece="0">%s</hash></pieces>'
              % ("1" * 40, "0" * 40), '<url type="http">http://a/x</url>', size=size)
    assert parse_metalink(good).pieces.hashes == ["0" * 40, "1" * 40]


# -- unusable hashes: refused unless the user gives a checksum


@pytest.mark.parametrize("body, found", [
    ('<hash>%s</hash>' % SHA256, "without a type"),
    ('<hash type="">%s</hash>' % SHA256, "without a type"),
    ('<hash type="adler32">0a1b2c3d</hash><hash type="sha3-256">%s</hash>' % SHA256, "unknown type 'sha3-256'"),
    ('<size>10</size><pieces length="10" type="tiger"><hash>ab</hash></pieces>', "unknown type 'tiger'"),
    ('<pieces length="10" type="sha-1"><hash>%s</hash></pieces>' % SHA1, "without a <size>"),
])
def test_document_whose_hashes_are_all_unusable_is_refused_without_a_user_checksum(body, found):
    parsed = parse_metalink(v4(body + "<url>http://a/x</url>"))
    assert not parsed.verifiable
    with pytest.raises(InvalidInput, match="no usable hash for img.qcow2.*%s.*checksum option" % found) as caught:
        parsed.expected_checksums(None)
    assert caught.value.details["unusable_hashes"]
    assert caught.value.details["metalink_notes"] == parsed.notes
    user = Checksum("sha256", SHA256)
    assert parsed.expected_checksums(user) == [user]


def test_one_usable_hash_is_enough():
    parsed = parse_metalink(v4('<hash type="adler32">0a1b2c3d</hash><hash type="md5">%s</hash>'
                               '<url>http://a/x</url>' % MD5))
    assert parsed.expected_checksums(None) == [Checksum("md5", MD5)]
    pieces_only = parse_metalink(v4('<hash type="adler32">0a1b2c3d</hash><size>5</size>'
                                    '<pieces length="5" type="sha-256"><hash>%s</hash></pieces>'
                                    '<url>http://a/x</url>' % SHA256))
    assert pieces_only.verifiable and pieces_only.expected_checksums(None) == []


def test_a_document_without_any_hash_is_accepted_with_a_note():
    parsed = parse_metalink(v4("<url>http://a/x</url>"))
    assert parsed.expected_checksums(None) == []
    assert any("no hash" in note for note in parsed.notes)


# -- the notes reach the user: download shows RV(metalink_notes) as warnings


class _WarningModule:
    def __init__(self):
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)


def test_download_shows_each_metalink_note_as_a_warning():
    from ansible_collections.directdownload.kvm.plugins.modules import download  # pylint: disable=import-outside-toplevel
    parsed = parse_metalink(v4('<hash type="adler32">0a1b2c3d</hash><hash type="md5">%s</hash>'
                               '<url>ftp://f/x</url><url>http://a/x</url>' % MD5))
    module = _WarningModule()
    download.warn_metalink_notes(module, {"metalink_notes": list(parsed.notes)})
    assert len(module.warnings) == len(parsed.notes) == 2
    assert all(warning.startswith("metalink: ") for warning in module.warnings)
    assert any("adler32" in warning for warning in module.warnings)
    assert any("'ftp'" in warning for warning in module.warnings)
    quiet = _WarningModule()
    download.warn_metalink_notes(quiet, {"changed": True})
    assert quiet.warnings == []
    assert "metalink_notes:" in download.RETURN
