# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Registration rules: URL scheme and suffix per format, checksum, headers, size, and the stored record."""

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _template as tpl
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import url_secret_values
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput

SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


# ---------------------------------------------------------------------------------------------------------------
# URL scheme and suffix (CloudStack §1.2 table, with its bugs fixed)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, fmt", [
    ("http://m.example/a/debian.qcow2", "qcow2"),
    ("https://m.example/a/DEBIAN.QCOW2", "qcow2"),                   # case-insensitive path
    ("HTTPS://m.example/a/debian.qcow2", "qcow2"),                   # case-insensitive scheme
    ("https://m.example/a/debian.img", "qcow2"),                      # .img qcow2 (#3224, fixed in 4.15)
    ("https://m.example/a/debian.qcow2.gz", "qcow2"),
    ("https://m.example/a/debian.qcow2.bz2", "qcow2"),
    ("https://m.example/a/debian.qcow2.xz", "qcow2"),
    ("https://m.example/a/debian.qcow2.zip", "qcow2"),
    ("https://m.example/a/debian.img.zst", "qcow2"),
    ("https://m.example/a/debian.qcow2?X-Amz-Signature=abc&x=.iso", "qcow2"),  # query string ignored
    ("https://m.example/a/debian.qcow2#frag.raw", "qcow2"),
    ("https://m.example/a/disk.raw", "raw"),
    ("https://m.example/a/disk.img", "raw"),
    ("https://m.example/a/disk.raw.xz", "raw"),
    ("https://m.example/a/netinst.iso", "iso"),
    ("nfs://nfs.example/export/images/debian.qcow2", "qcow2"),       # nfs accepted (CloudStack refuses it)
    ("nfs://nfs.example/export/isos/netinst.iso", "iso"),
    ("https://m.example/a/debian.metalink", "qcow2"),
    ("https://m.example/a/debian.meta4", "raw"),                     # metalink for every format
    ("https://m.example/a/netinst.meta4?token=1", "iso"),
    ("https://[2001:db8::1]/a/debian.qcow2", "qcow2"),                # IPv6 literal is fine for direct download
    ("http://user:pw@m.example:8080/a/debian.qcow2", "qcow2"),
])
def test_good_urls(url, fmt):
    assert tpl.validate_url(url, fmt) == url


@pytest.mark.parametrize("url, fmt, message", [
    ("ftp://m.example/a/debian.qcow2", "qcow2", "unsupported scheme for url ftp://m.example/a/debian.qcow2: use http, https, nfs"),
    ("file:///var/lib/debian.qcow2", "qcow2", "unsupported scheme"),
    ("m.example/a/debian.qcow2", "qcow2", "unsupported scheme"),
    ("https:///a/debian.qcow2", "qcow2", "has no host"),
    ("https://m.example/a/debian.qcow2?sig=a b", "qcow2", "white space"),
    ("https://m.example/a/debian.iso", "qcow2", "invalid for the format qcow2: its path ends in .iso"),
    ("https://m.example/a/debian.raw", "qcow2", "invalid for the format qcow2: its path ends in .raw"),
    ("https://m.example/a/debian.qcow2", "raw", "invalid for the format raw: its path ends in .qcow2"),
    ("https://m.example/a/debian.qcow2.gz", "iso", "invalid for the format iso: its path ends in .qcow2.gz"),
    ("https://m.example/a/debian.vhd", "qcow2", "please specify a valid qcow2 URL"),
    ("https://m.example/a/debian", "raw", "please specify a valid raw URL"),
    ("https://m.example/a/debian.gz", "qcow2", "please specify a valid qcow2 URL"),
    ("https://m.example/download?file=debian.qcow2", "qcow2", "query string does not count"),
    ("https://m.example/a/netinst.iso.gz", "iso", "compressed ISO"),
    ("", "qcow2", "needs a url"),
])
def test_bad_urls(url, fmt, message):
    with pytest.raises(InvalidInput, match=message.replace("?", r"\?").replace(".", r"\.")):
        tpl.validate_url(url, fmt)


def test_url_errors_never_show_credentials_or_query_values():
    with pytest.raises(InvalidInput) as info:
        tpl.validate_url("ftp://user:secretpw@m.example/a/x.qcow2?token=supersecret", "qcow2")
    assert "secretpw" not in info.value.msg and "supersecret" not in info.value.msg
    with pytest.raises(InvalidInput) as info:
        tpl.validate_url("https://user:secretpw@m.example/a/x.vhd?token=supersecret", "qcow2")
    assert "secretpw" not in info.value.msg and "supersecret" not in info.value.msg


# ---------------------------------------------------------------------------------------------------------------
# format/type, hypervisor, direct_download
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, kind, expected", [
    ("qcow2", None, ("qcow2", "template")),
    ("RAW", None, ("raw", "template")),
    ("iso", None, ("iso", "iso")),
    ("iso", "iso", ("iso", "iso")),
    ("qcow2", "template", ("qcow2", "template")),
])
def test_format_and_type(fmt, kind, expected):
    assert tpl.validate_format_and_type(fmt, kind) == expected


@pytest.mark.parametrize("fmt, kind, message", [
    ("vhd", None, "format must be one of qcow2, raw, iso"),
    (None, None, "format must be one of"),
    ("iso", "template", "type template does not go with format iso"),
    ("qcow2", "iso", "type iso does not go with format qcow2"),
    ("qcow2", "volume", "type must be one of template, iso"),
])
def test_bad_format_and_type(fmt, kind, message):
    with pytest.raises(InvalidInput, match=message):
        tpl.validate_format_and_type(fmt, kind)


def test_hypervisor_and_direct_download():
    assert tpl.validate_hypervisor("KVM") == "kvm"
    assert tpl.validate_hypervisor(None) == "kvm"
    with pytest.raises(InvalidInput, match="only allowed for KVM templates, got hypervisor 'VMware'"):
        tpl.validate_hypervisor("VMware")
    with pytest.raises(InvalidInput, match="only direct download templates are supported"):
        tpl.validate_hypervisor("kvm", direct_download=False)


# ---------------------------------------------------------------------------------------------------------------
# checksum (the parsing itself is _checksum's; here: what registration stores and refuses)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given, stored", [
    (None, None),
    ("", None),
    ("  ", None),
    ("{SHA-256}" + SHA256, "{SHA-256}" + SHA256),
    ("{SHA-256}" + SHA256.upper(), "{SHA-256}" + SHA256),            # upper-case hex normalised (CloudStack: never matches)
    ("sha256:" + SHA256, "{SHA-256}" + SHA256),
    ("{sha256}" + SHA256, "{SHA-256}" + SHA256),                     # CloudStack refuses this spelling
    ("d141a8eeaf6bba779d1d1dc5102a81c5", "{MD5}d141a8eeaf6bba779d1d1dc5102a81c5"),
    ("{}d141a8eeaf6bba779d1d1dc5102a81c5", "{MD5}d141a8eeaf6bba779d1d1dc5102a81c5"),
    ("  {MD5}d141a8eeaf6bba779d1d1dc5102a81c5  ", "{MD5}d141a8eeaf6bba779d1d1dc5102a81c5"),
])
def test_checksums_stored_in_cloudstack_form(given, stored):
    assert tpl.validate_checksum(given) == stored


def test_bare_hex_with_another_default_algorithm():
    assert tpl.validate_checksum(SHA256, "sha256") == "{SHA-256}" + SHA256


@pytest.mark.parametrize("given, message", [
    # bare 64 hex is MD5, as in CloudStack, and the message says what to write
    (SHA256, r"the bare checksum has 64 hex characters, not the 32 of MD5 .*write sha256:<hex>"),
    ("{MD5}" + SHA256, "an MD5 checksum has 32 hex characters, got 64; 64 hex characters fit SHA-256"),
    ("{SHA-256}" + "z" * 64, "must be hexadecimal"),
    ("{SHA3-256}" + SHA256, "unknown checksum algorithm"),
    ("sha256:https://m.example/SHA256SUMS", "a checksum file URL .* is read by directdownload.kvm.download only"),
])
def test_bad_checksums(given, message):
    with pytest.raises(InvalidInput, match=message):
        tpl.validate_checksum(given)


# ---------------------------------------------------------------------------------------------------------------
# headers
# ---------------------------------------------------------------------------------------------------------------

def test_headers_normalised():
    assert tpl.validate_headers(None) == {}
    assert tpl.validate_headers({"Authorization": "Bearer x", "X-Num": 5}) == {"Authorization": "Bearer x", "X-Num": "5"}
    assert tpl.validate_headers({"HTTP_HEADER:Authorization": "Bearer x"}) == {"Authorization": "Bearer x"}


@pytest.mark.parametrize("headers, message", [
    ({"Bad Name": "v"}, "'Bad'... is not a valid HTTP header name"),
    ({"": "v"}, "is not a valid HTTP header name"),
    ({"Range": "bytes=0-"}, "header Range cannot be set: the download engine controls it"),
    ({"host": "evil"}, "Host cannot be given"),
    ({"X-A": "one\r\nX-Injected: yes"}, "X-A contains a line break"),
    ({"X-A": None}, "header X-A has no value"),
    ({"X-A": {"nested": 1}}, "X-A must be a string"),
    ({"x-a": "1", "X-A": "2"}, "given twice"),
    (["Authorization"], "must be a dictionary"),
])
def test_bad_headers(headers, message):
    with pytest.raises(InvalidInput, match=message):
        tpl.validate_headers(headers)


def test_header_errors_never_show_values():
    with pytest.raises(InvalidInput) as info:
        tpl.validate_headers({"Authorization": "Bearer topsecret\nX: y"})
    assert "topsecret" not in info.value.msg


# ---------------------------------------------------------------------------------------------------------------
# size (#8037)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, virtual_size, allow, expected", [
    (100, None, False, (100, None)),
    (None, 2048, False, (None, 2048)),
    (100, 2048, False, (100, 2048)),
    (0, None, True, (None, None)),
    (None, None, True, (None, None)),
    (0, 2048, False, (None, 2048)),
])
def test_sizes(size, virtual_size, allow, expected):
    assert tpl.validate_size(size, virtual_size, allow) == expected


@pytest.mark.parametrize("size, virtual_size, message", [
    (0, None, "size is 0 or unknown.*allow_unknown_size"),
    (None, None, "size is 0 or unknown"),
    (0, 0, "size is 0 or unknown"),
    (-1, None, "size must not be negative"),
    ("12", None, "size must be an integer"),
    (True, None, "size must be an integer"),
])
def test_bad_sizes(size, virtual_size, message):
    with pytest.raises(InvalidInput, match=message):
        tpl.validate_size(size, virtual_size, False)


# ---------------------------------------------------------------------------------------------------------------
# the stored record
# ---------------------------------------------------------------------------------------------------------------

PARAMS = {
    "name": "debian-12",
    "url": "https://m.example/debian-12.qcow2",
    "format": "qcow2",
    "checksum": "sha256:" + SHA256,
    "http_headers": {"Authorization": "Bearer x"},
    "size": 1000,
    "virtual_size": 4096,
    "checked_on": "kvm1",
}


def test_record_fields():
    record = tpl.build_template(PARAMS, None, "2025-01-01T00:00:00Z")
    assert record["state"] == "Ready" and record["download_state"] == "BYPASSED"
    assert record["status"] == "Bypassed Secondary Storage"
    assert record["direct_download"] is True and record["hypervisor"] == "kvm" and record["type"] == "template"
    assert record["display_text"] == "debian-12"
    assert record["checksum"] == "{SHA-256}" + SHA256
    assert (record["size"], record["virtual_size"], record["checked_on"], record["checked_at"]) == \
        (1000, 4096, "kvm1", "2025-01-01T00:00:00Z")


def test_probe_from_another_host_with_same_sizes_keeps_the_record():
    first = dict(tpl.build_template(PARAMS, None, "2025-01-01T00:00:00Z"), id="x", created_at="t")
    again = tpl.build_template(dict(PARAMS, checked_on="kvm3"), first, "2025-02-01T00:00:00Z")
    assert again == first
    # no size given and nothing probe-relevant changed: the stored size is kept
    no_size = tpl.build_template(dict(PARAMS, size=None, virtual_size=None, checked_on=None), first, "later")
    assert no_size == first
    # other display text: a change, probe facts kept
    renamed = tpl.build_template(dict(PARAMS, size=None, virtual_size=None, display_text="Debian"), first, "later")
    assert tpl.changed_fields(first, renamed) == ["display_text"]


def test_new_url_without_size_needs_a_probe():
    first = dict(tpl.build_template(PARAMS, None, "t"), id="x")
    with pytest.raises(InvalidInput, match="size is 0 or unknown"):
        tpl.build_template(dict(PARAMS, url="https://m.example/debian-13.qcow2", size=None, virtual_size=None), first)
    moved = tpl.build_template(dict(PARAMS, url="https://m.example/debian-13.qcow2", size=2000, virtual_size=None,
                                    checked_on="kvm2"), first, "t2")
    assert tpl.changed_fields(first, moved) == ["checked_at", "checked_on", "size", "url", "virtual_size"]


def test_url_secret_values():
    assert url_secret_values("https://user:p%40ss@m.example/x.qcow2?sig=0123456789abcdef&v=4") == \
        {"p%40ss", "p@ss", "0123456789abcdef"}
    assert url_secret_values("https://m.example/x.qcow2") == set()
    assert url_secret_values(None) == set()


def test_mirrors_are_checked_recorded_and_removable():
    from ansible_collections.directdownload.kvm.plugins.module_utils import _registry  # pylint: disable=import-outside-toplevel
    first = dict(tpl.build_template(PARAMS, None, "t"), id="x")
    assert "mirrors" not in first, "a template without mirrors keeps the record it had"
    with_mirrors = tpl.build_template(dict(PARAMS, mirrors=[
        "https://user:pw@b.example/debian-12.qcow2", {"url": "nfs://n.example/e/debian-12.qcow2", "priority": 2,
                                                      "location": "DE"}]), first, "t")
    assert with_mirrors["mirrors"] == [
        {"url": "https://user:pw@b.example/debian-12.qcow2", "priority": None, "location": None},
        {"url": "nfs://n.example/e/debian-12.qcow2", "priority": 2, "location": "de"}]
    assert tpl.changed_fields(first, with_mirrors) == ["mirrors"]
    assert "pw" not in str(_registry.public_template(with_mirrors)["mirrors"])
    assert "mirrors" not in tpl.build_template(PARAMS, with_mirrors, "t")
    with pytest.raises(InvalidInput, match="suffix|format"):
        tpl.build_template(dict(PARAMS, mirrors=["https://b.example/debian-12.iso"]), first, "t")
