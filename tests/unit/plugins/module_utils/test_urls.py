# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import (
    file_name_from_url,
    is_metalink_answer,
    is_metalink_url,
    is_secret_query_key,
    protect_url_options,
    redact_url,
    safe_file_name,
    split_url,
    strip_compression_suffix,
    url_secret_values,
    url_without_secrets,
)


def test_redaction_hides_credentials_and_query_values():
    url = "https://user:s3cret@example.com/a/disk.qcow2?X-Signature=abc&plain"
    shown = redact_url(url)
    assert "s3cret" not in shown and "user" not in shown and "abc" not in shown
    assert shown == "https://***@example.com/a/disk.qcow2?X-Signature=***&plain"


@pytest.mark.parametrize("url, content_type, expected", [
    ("http://h/x.meta4", None, True),
    ("http://h/x.METALINK?a=b", None, True),
    ("http://h/x.qcow2", "application/metalink4+xml; charset=utf-8", True),
    ("http://h/x.qcow2", "application/octet-stream", False),
    ("http://h/x.qcow2?f=.meta4", None, False),
])
def test_metalink_detection(url, content_type, expected):
    assert is_metalink_url(url, content_type) is expected


def test_an_answer_is_a_metalink_by_its_final_url_or_content_type():
    """/latest -> image.meta4 served as application/octet-stream (nginx's default) is a metalink."""
    assert is_metalink_answer("http://h/image.meta4", "application/octet-stream")
    assert is_metalink_answer("http://h/latest", "application/metalink4+xml")
    assert not is_metalink_answer("http://h/latest", "application/octet-stream")


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "C:\\x", ".hidden", "", "a..b", "x\x00"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(InvalidInput):
        safe_file_name(name)


def test_names_from_urls():
    assert file_name_from_url("http://h/images/debian-12.qcow2.gz?sig=1") == "debian-12.qcow2.gz"
    assert strip_compression_suffix("debian-12.qcow2.gz") == "debian-12.qcow2"
    assert strip_compression_suffix("plain.raw") == "plain.raw"
    with pytest.raises(InvalidInput):
        file_name_from_url("http://h/")


def test_nfs_version_stays_readable():
    assert redact_url("nfs://h/export/x.qcow2?version=4") == "nfs://h/export/x.qcow2?version=4"


@pytest.mark.parametrize("name", ["sig", "SIG", "signature", "Signature", "X-Amz-Signature", "x-amz-credential",
                                  "X-Amz-Security-Token", "X-Goog-Signature", "X-Goog-Credential", "token",
                                  "access_token", "key", "api_key", "apikey", "auth", "oauth", "password", "secret",
                                  "client_secret", "temp_url_sig", "X%2DAmz%2DSignature"])
def test_secret_query_keys(name):
    assert is_secret_query_key(name)


@pytest.mark.parametrize("name", ["limit", "version", "Expires", "X-Amz-Date", "Key-Pair-Id", "Policy", "size",
                                  "X-Amz-Expires", "format", "name"])
def test_plain_query_keys(name):
    assert not is_secret_query_key(name)


def test_only_secret_values_are_masked_never_numbers():
    url = ("https://u:p%40ss@h.example/x.qcow2?limit=3221225472&X-Amz-Expires=3600&sig=abcdef123456"
           "&token=4294967296&X-Amz-Credential=AKIA%2Fscope&key=short&version=verylongversionstring")
    assert url_secret_values(url) == {"p%40ss", "p@ss", "abcdef123456", "AKIA%2Fscope", "AKIA/scope"}
    assert url_secret_values("nfs://h/export/x.qcow2?version=4") == set()
    assert url_secret_values(None) == set()


def test_url_without_secrets_keeps_everything_else():
    url = "https://u:pw@h.example/a/x.qcow2?limit=3&X-Amz-Signature=abcdef&plain&Expires=99#frag"
    assert url_without_secrets(url) == "https://u@h.example/a/x.qcow2?limit=3&X-Amz-Signature=&plain&Expires=99#frag"
    assert url_without_secrets("http://h/x.raw") == "http://h/x.raw"
    assert url_without_secrets("nfs://h/e/x.raw?version=4") == "nfs://h/e/x.raw?version=4"


class _FakeModule:
    """Only the two attributes protect_url_options uses (AnsibleModule itself is exercised in test_module_secrets)."""

    def __init__(self, params, no_log_values):
        self.params = params
        self.no_log_values = set(no_log_values)


def test_protect_url_options_keeps_only_the_secret_parts():
    url = "http://h/x.raw?sig=abcdef123456"
    module = _FakeModule({"url": url, "proxy": "http://u:proxypass@p:3128", "other": None},
                         {url, "http://u:proxypass@p:3128", "header-secret"})
    protect_url_options(module, ("url", "proxy", "other"))
    assert module.no_log_values == {"abcdef123456", "proxypass", "header-secret"}


def test_split_url_refuses_a_malformed_url_with_the_url_redacted():
    assert split_url("nfs://server:2049/export/x.qcow2", check_port=True).port == 2049
    # A malformed port is refused only when the caller reads it (a template URL keeps its old leniency).
    assert split_url("http://host:port/x.qcow2").hostname == "host"
    with pytest.raises(InvalidInput) as caught:
        split_url("http://user:s3cret@host:port/x.qcow2", "invalid URL %s: %s", check_port=True)
    assert caught.value.args[0].startswith("invalid URL http://***@host:port/x.qcow2: ")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(InvalidInput, match="cannot be parsed"):
        split_url("http://[::1/x.qcow2")
