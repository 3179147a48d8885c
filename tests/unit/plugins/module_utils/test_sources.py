# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_sources: the transport option group and the small-file reader (checksum lists), against a loopback server."""

from __future__ import annotations

import types

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import HTTPStatusError, InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._http import HttpSource, SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._probe import PlainSourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import (
    TRANSPORT_ARGUMENT_SPEC,
    open_source,
    plain_source_factory,
    read_small_file,
    source_options_from_params,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._transfer import MultiSource
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer


@pytest.fixture()
def server(tmp_path):
    (tmp_path / "SHA256SUMS").write_bytes(b"ab" * 32 + b"  f.qcow2\n")
    (tmp_path / "big").write_bytes(b"x" * 5000)
    with ImageServer(tmp_path) as srv:
        yield srv


def request(**options):
    return PlainSourceOptions(SourceOptions(trust_dir=None, proxy="", **options))


def test_read_small_file(server):
    assert read_small_file(server.url("SHA256SUMS"), request(), 1024) == b"ab" * 32 + b"  f.qcow2\n"


@pytest.mark.parametrize("fault", [{}, {"no_length": True}, {"chunked": True}])
def test_read_small_file_refuses_a_large_file(server, fault):
    if fault:
        server.set_fault("/big", **fault)
    with pytest.raises(InvalidInput, match="more than the 4096"):
        read_small_file(server.url("big"), request(), 4096)


def test_read_small_file_uses_the_transport_credentials(server):
    server.set_fault("/SHA256SUMS", require_headers={"X-Token": "t"})
    with pytest.raises(HTTPStatusError, match="401"):
        read_small_file(server.url("SHA256SUMS"), request(), 1024)
    assert read_small_file(server.url("SHA256SUMS"), request(headers={"X-Token": "t"}), 1024).endswith(b"f.qcow2\n")


def test_credential_options_in_the_transport_group():
    assert TRANSPORT_ARGUMENT_SPEC["url_password"]["no_log"] is True
    assert TRANSPORT_ARGUMENT_SPEC["force_basic_auth"]["default"] is False
    params = {name: spec.get("default") for name, spec in TRANSPORT_ARGUMENT_SPEC.items()}
    params.update(url_username="u", url_password="p", force_basic_auth=True, trust_dir="/nonexistent")
    options = source_options_from_params(params, {})
    assert options.basic_auth == "Basic dTpw" and options.force_basic_auth


def test_a_url_with_mirrors_is_one_multi_source_and_a_metalink_ignores_them_with_a_note(server, tmp_path):
    request = types.SimpleNamespace(source_options=SourceOptions(), nfs_transport="auto", name="x.qcow2",
                                    connections=2, mirrors=["http://b.example/x.qcow2"], metalink_locations=(),
                                    metalink_name=None)
    source = open_source("http://a.example/x.qcow2", request)
    assert isinstance(source, MultiSource) and source.connections == 2
    assert [m.url for m in source.mirrors()] == ["http://a.example/x.qcow2", "http://b.example/x.qcow2"]
    assert source.segmented, "the size is asked of the sources"
    (tmp_path / "x.meta4").write_text(
        '<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="x.qcow2"><url>http://c.example/x.qcow2</url>'
        '</file></metalink>')
    metalink = open_source(server.url("x.meta4"), request)
    assert [m.url for m in metalink.mirrors()] == ["http://c.example/x.qcow2"]
    # (the conformant parser also notes that this document gives no hash)
    assert "ignored the mirrors option: the Metalink document lists the sources of the file" in metalink.notes
    plain = open_source("http://a.example/x.qcow2", types.SimpleNamespace(**dict(vars(request), mirrors=[])))
    assert isinstance(plain, HttpSource) and not plain.segmented and plain.may_answer_metalink
    assert plain_source_factory(request)("http://a.example/x.qcow2").url == "http://a.example/x.qcow2"
