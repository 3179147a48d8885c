# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Metalink conformance through real ``ansible-playbook`` runs of ``download``: a relative ``file@name`` and
relative ``<url>`` references work, a document whose hashes are all unusable is refused unless a checksum is
given."""

from __future__ import annotations

import hashlib
import os

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._metalink import NS_V4
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

MiB = 1024 * 1024
MODULE = "directdownload.kvm.download"


@pytest.fixture
def image(www):
    path = www / "disk.qcow2"
    images.qcow2(str(path), size=8 * MiB, writes=[(0, MiB, 0x33)])
    return path


@pytest.fixture
def server(www):
    started = ImageServer(www)
    yield started
    started.close()


def write(path, name, body):
    path.write_bytes(('<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="%s"><file name="%s">%s</file>'
                      '</metalink>\n' % (NS_V4, name, body)).encode())


def args_for(url, pool, **extra):
    args = {"url": url, "pool_path": str(pool), "name": "disk.qcow2", "retry_delay": 0.1, "read_timeout": 5}
    args.update(extra)
    return args


def test_relative_name_and_relative_url(run_module, server, pool, www, image):
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    write(www / "rel.meta4", "images/disk.qcow2",
          '<hash type="md5">short</hash><hash type="sha-256">%s</hash><url>disk.qcow2</url>' % digest)
    record = run_module(MODULE, args_for(server.url("rel.meta4"), pool, metalink_name="images/disk.qcow2"))[0]
    result = record["result"]
    assert record["status"] == "changed", result
    assert result["final_url"] == server.url("disk.qcow2")
    assert images.sha256_file(str(pool / "disk.qcow2")) == digest


def test_unusable_hashes_refused_unless_a_checksum_is_given(run_module, server, pool, www, image):
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    write(www / "unusable.meta4", "disk.qcow2",
          '<hash type="sha3-256">%s</hash><hash>%s</hash><url>%s</url>' % (digest, digest, server.url("disk.qcow2")))
    record = run_module(MODULE, args_for(server.url("unusable.meta4"), pool))[0]
    result = record["result"]
    assert record["status"] == "failed", result
    assert "no usable hash" in result["msg"] and "sha3-256" in result["msg"] and "without a type" in result["msg"]
    assert result["retry_here"] is False and result["retry_elsewhere"] is False
    assert any("sha3-256" in warning for warning in record["result"].get("warnings", [])), result
    assert server.requests_for("/disk.qcow2") == []
    assert os.listdir(pool) == []

    record = run_module(MODULE, args_for(server.url("unusable.meta4"), pool, checksum="sha256:" + digest))[0]
    assert record["status"] == "changed", record["result"]
    assert images.sha256_file(str(pool / "disk.qcow2")) == digest
