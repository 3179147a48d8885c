# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the modules ``download``, ``url_check`` and ``template`` let out of a URL's secrets: into the host's log,
into results (the echoed ``invocation`` included), into the installed-image record.

The modules run in this process, for real, as Ansible runs them: ``AnsibleModule`` reads its arguments from
``basic._ANSIBLE_ARGS``, downloads from a loopback server, prints its result and exits. One part is replaced, and
only one: the host's log. ``AnsibleModule.log`` sends the invocation ("Invoked with url=...") to the systemd
journal or syslog, which a test cannot read back here (no journal in CI containers, syslog goes to whatever the
host configured). So ``has_journal`` is turned off and ``AnsibleModule._log_to_syslog``, the last step before
``syslog.syslog``, records the message instead: the text is exactly what would reach the log.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _download
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import url_without_secrets
from ansible_collections.directdownload.kvm.plugins.modules import download, template, url_check
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.modules import run_module
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

SIGNATURE = "c2lnbmF0dXJlLXZhbHVlLTk4NzY1NDMyMQ"
CREDENTIAL = "AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
URL_PASSWORD = "url-pa55word-4c1d"
PROXY_PASSWORD = "pr0xy-pa55-77aa"
# 16 MiB: its size has 8 digits, as long as the signatures that used to be masked (any value of 8+ characters).
SIZE = 16 * images.MiB
SECRETS = (SIGNATURE, CREDENTIAL, CREDENTIAL.replace("%2F", "/"), URL_PASSWORD, PROXY_PASSWORD)


def signed_url(srv, name):
    """A pre-signed object-store URL with a limit whose value equals the image size."""
    return (srv.url(name).replace("http://", "http://reader:%s@" % URL_PASSWORD)
            + "?limit=%d&X-Amz-Credential=%s&X-Amz-Date=20260101T000000Z&X-Amz-Signature=%s"
            % (SIZE, CREDENTIAL, SIGNATURE))


def assert_no_secret(text):
    for secret in SECRETS:
        assert secret not in text


def test_download_logs_and_returns_no_secret_and_keeps_numbers(tmp_path, logged, capsys, monkeypatch):
    www, pool = tmp_path / "www", tmp_path / "pool"
    www.mkdir()
    pool.mkdir()
    images.sparse_raw(www / "disk.raw", SIZE, data=[(0, 4096)])
    with ImageServer(www) as srv:
        url = signed_url(srv, "disk.raw")
        result, out = run_module(download, {
            "url": url, "pool_path": str(pool), "format": "raw",
            "proxy": "http://proxyuser:%s@127.0.0.1:9/" % PROXY_PASSWORD, "use_proxy": False,
        }, capsys, monkeypatch)
    assert result.get("failed") is not True, result
    # The host's log: the invocation names no URL and no proxy, and nothing else logged holds a secret.
    invoked = [msg for msg in logged if msg.startswith("Invoked with")]
    assert len(invoked) == 1 and "url=NOT_LOGGING_PARAMETER" in invoked[0] and "proxy=NOT_LOGGING_PARAMETER" in invoked[0]
    assert_no_secret("\n".join(logged))
    # The result: no secret anywhere (the echoed module arguments included), numbers intact.
    assert_no_secret(out)
    assert result["size"] == SIZE and result["bytes_downloaded"] == SIZE
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" not in out
    assert "limit=%d" % SIZE in result["invocation"]["module_args"]["url"]
    assert result["url"].startswith("http://***@127.0.0.1:") and SIGNATURE not in result["url"]
    # The world-readable record: url_id is the URL without its secrets, the same on every run.
    record = json.loads((pool / ".disk.raw.ddinfo.json").read_text())
    assert_no_secret(json.dumps(record))
    assert record["url_id"] == _download.DownloadRequest(url, str(pool)).url_id
    assert "validate_certs" not in record


def test_validate_certs_false_warns_and_the_record_says_so(tmp_path, logged, capsys, monkeypatch):
    www, pool = tmp_path / "www", tmp_path / "pool"
    www.mkdir()
    pool.mkdir()
    images.sparse_raw(www / "disk.raw", images.MiB, data=[(0, 4096)])
    with ImageServer(www) as srv:
        result, _out = run_module(download, {"url": srv.url("disk.raw"), "pool_path": str(pool), "format": "raw",
                                             "validate_certs": False}, capsys, monkeypatch)
    assert result["changed"] is True, result
    assert "validate_certs is false" in json.dumps(result.get("warnings")), result
    assert json.loads((pool / ".disk.raw.ddinfo.json").read_text())["validate_certs"] is False
    # A plain URL (no secret in it) is shown as it is: masking the whole no_log url would hide it.
    assert result["url"] == srv.url("disk.raw")


def test_url_check_logs_and_returns_no_secret(tmp_path, logged, capsys, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    images.sparse_raw(www / "disk.raw", SIZE, data=[(0, 4096)])
    with ImageServer(www) as srv:
        result, out = run_module(url_check, {"url": signed_url(srv, "disk.raw"), "format": "raw",
                                             "proxy": "http://u:%s@127.0.0.1:9/" % PROXY_PASSWORD,
                                             "use_proxy": False}, capsys, monkeypatch)
    assert result["reachable"] is True, result
    assert result["size"] == SIZE
    assert "url=NOT_LOGGING_PARAMETER" in "\n".join(logged)
    assert_no_secret("\n".join(logged))
    assert_no_secret(out)


def test_template_logs_and_returns_no_secret(tmp_path, logged, capsys, monkeypatch):
    url = ("https://reader:%s@mirror.example/debian-12.qcow2?limit=%d&X-Amz-Credential=%s&X-Amz-Signature=%s"
           % (URL_PASSWORD, SIZE, CREDENTIAL, SIGNATURE))
    registry = tmp_path / "registry.json"
    result, out = run_module(template, {"registry": str(registry), "name": "debian-12", "url": url,
                                        "format": "qcow2", "size": SIZE}, capsys, monkeypatch)
    assert result["changed"] is True, result
    assert result["template"]["size"] == SIZE
    assert "url=NOT_LOGGING_PARAMETER" in "\n".join(logged)
    assert_no_secret("\n".join(logged))
    assert_no_secret(out)
    # The registry itself (mode 0600) keeps the URL: deployments need it.
    assert json.loads(registry.read_text())["templates"]["debian-12"]["url"] == url


@pytest.mark.parametrize("option, value, words", [
    ("retries", 1000, "retries must be a whole number from 0 to 100, got 1000"),
    ("retry_delay", -1, "retry_delay must be from 0 to 3600 seconds, got -1.0"),
    ("connections", 1500, "connections must be a whole number from 1 to 16, got 1500"),
])
def test_download_refuses_unbounded_options_before_any_connection(tmp_path, logged, capsys, monkeypatch, option,
                                                                  value, words):
    """Also here, though not about secrets: the bounds reach the user as one clear message of the module."""
    result, _out = run_module(download, {"url": "http://127.0.0.1:9/disk.raw", "pool_path": str(tmp_path),
                                         option: value}, capsys, monkeypatch)
    assert result["failed"] is True and result["msg"] == words and result["retry_elsewhere"] is False
    assert os.listdir(str(tmp_path)) == []


def test_url_id_ignores_secrets_only():
    base = "https://h.example/a/disk.qcow2?X-Amz-Date=20260101T000000Z&X-Amz-Signature="
    first = _download.DownloadRequest(base + "aaaaaaaa", "/p").url_id
    assert first == _download.DownloadRequest(base + "bbbbbbbb", "/p").url_id  # a fresh signature, same image
    assert first != _download.DownloadRequest(base.replace("disk", "other") + "aaaaaaaa", "/p").url_id
    assert url_without_secrets("https://u:pw@h/x?a=1") == "https://u@h/x?a=1"
    plain = "https://h.example/a/disk.qcow2"
    assert url_without_secrets(plain) == plain  # unchanged for URLs without secrets: their old records still match


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
