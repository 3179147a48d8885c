# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_formats: one table of formats, read in any case (CloudStack writes QCOW2)."""

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _formats
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput


@pytest.mark.parametrize("value, expected", [("qcow2", "qcow2"), ("QCOW2", "qcow2"), (" Qcow2 ", "qcow2"),
                                             ("RAW", "raw"), ("Iso", "iso"), (None, None), ("", None)])
def test_formats_are_read_in_any_case(value, expected):
    assert _formats.canonical_format(value) == expected


@pytest.mark.parametrize("value", ["vmdk", "qcow", 2, "qcow2 raw"])
def test_other_formats_are_refused_naming_the_table(value):
    with pytest.raises(InvalidInput, match="format must be one of qcow2, raw, iso"):
        _formats.canonical_format(value)


def test_the_table_is_the_one_the_gate_and_the_registry_use():
    from ansible_collections.directdownload.kvm.plugins.module_utils import _gate, _template
    assert _formats.FORMATS == ("qcow2", "raw", "iso")
    assert _gate.ALLOWED_FORMATS is _formats.FORMATS and _template.FORMATS is _formats.FORMATS
    assert _template.validate_format_and_type("QCOW2") == ("qcow2", "template")


@pytest.mark.parametrize("head, expected", [
    (b"\x1f\x8b\x08\x00", "gzip"), (b"BZh9" + b"1AY", "bzip2"), (b"BZh0", None), (b"BZhx", None),
    (b"\xfd7zXZ\x00\x00", "xz"), (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"QFI\xfb", None), (b"", None),
])
def test_one_magic_table_names_the_compression(head, expected):
    assert _formats.compression_from_head(head) == expected
    assert expected is None or expected in _formats.COMPRESSIONS


def test_probe_install_and_gate_read_the_same_tables():
    from ansible_collections.directdownload.kvm.plugins.module_utils import _gate, _install, _probe, _urls
    assert _install.compression_from_head is _formats.compression_from_head
    assert _probe.compression_from_head is _formats.compression_from_head
    assert _gate.QCOW2_MAGIC is _formats.QCOW2_MAGIC and _gate.ISO_OFFSETS is _formats.ISO_OFFSETS
    assert _urls.COMPRESSION_SUFFIXES is _formats.COMPRESSION_SUFFIXES
    assert _formats.STREAM_MAGICS["bzip2"] == tuple(b"BZh%d" % n for n in range(1, 10))
