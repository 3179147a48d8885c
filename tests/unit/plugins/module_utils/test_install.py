# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_install.py with real parts: images made by qemu-img at run time, the real gzip/bzip2/xz/zstd/zip
compressors, a real tmpfs for ENOSPC."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zipfile

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _gate, _install
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    DirectDownloadError,
    ImageRejected,
    InvalidInput,
    NotEnoughSpace,
)
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.images import KiB, MiB

EXTRACTABLE = [kind for kind in images.COMPRESSION_KINDS if kind != "zip-two"]
# Slack for "still sparse": file systems may allocate a few metadata blocks more than the source had.
SPARSE_SLACK = 512 * KiB


@pytest.fixture(scope="module")
def holey(tmp_path_factory):
    """16 MiB apparent, 1 MiB of data in four regions: the sparse source every extraction test compresses."""
    return images.sparse_raw(tmp_path_factory.mktemp("src") / "holey.raw", 16 * MiB)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, holey):
    """Every compression kind of ``holey``, each named with a misleading suffix."""
    directory = tmp_path_factory.mktemp("compressed")
    return {kind: images.compress(holey, directory / ("%s.qcow2" % kind), kind) for kind in images.COMPRESSION_KINDS}


# ---------------------------------------------------------------- detection

@pytest.mark.parametrize("kind", images.COMPRESSION_KINDS)
def test_compression_detected_by_magic_not_suffix(compressed, kind):
    assert _install.detect_compression(compressed[kind]) == images.DETECTED_AS[kind]


def test_uncompressed_files_are_not_compressed_whatever_their_name(tmp_path):
    assert _install.detect_compression(images.qcow2(tmp_path / "disk.gz", 8 * MiB)) is None
    assert _install.detect_compression(images.random_raw(tmp_path / "disk.xz", 64 * KiB, seed=1)) is None
    assert _install.detect_compression(images.iso(tmp_path / "cd.zst")) is None
    empty = tmp_path / "empty.bz2"
    empty.write_bytes(b"")
    assert _install.detect_compression(str(empty)) is None


def test_iso_signature_wins_over_a_compression_magic_in_the_system_area(tmp_path):
    iso = images.iso(tmp_path / "hybrid.iso")
    with open(iso, "r+b") as handle:
        handle.write(b"\x1f\x8b\x08\x00")  # the first 32 KiB are free for boot code: may look like anything
    assert _install.is_iso(iso)
    assert _install.detect_compression(iso) is None


def test_iso_found_by_a_later_volume_descriptor(tmp_path):
    iso = images.iso(tmp_path / "cd.iso")
    with open(iso, "r+b") as handle:
        handle.seek(32769)
        handle.write(b"XXXXX")  # first descriptor damaged; the terminator at sector 17 still says CD001
    assert _install.is_iso(iso)
    assert not _install.is_iso(images.qcow2(tmp_path / "d.qcow2", MiB))
    assert not _install.is_iso(images.random_raw(tmp_path / "short.raw", 100, seed=2))


# ---------------------------------------------------------------- size estimates

@pytest.mark.parametrize("kind,exact", [("gzip", True), ("xz", True), ("zip", True), ("zip-dir", True), ("zstd", True),
                                        ("gzip-multi", False), ("bzip2", None), ("zstd-nosize", None), ("zip-two", None)])
def test_estimated_extracted_size(compressed, kind, exact):
    estimate = _install.estimated_extracted_size(compressed[kind], images.DETECTED_AS[kind])
    if exact is None:
        assert estimate is None
    elif exact:
        assert estimate == 16 * MiB
    else:
        assert 0 < estimate <= 16 * MiB  # ISIZE of the last member only: a lower bound


def test_xz_estimate_adds_up_concatenated_streams_and_padding(tmp_path):
    first = images.compress(images.random_raw(tmp_path / "a", 300 * KiB, seed=1), tmp_path / "a.xz", "xz")
    second = images.compress(images.sparse_raw(tmp_path / "b", 5 * MiB), tmp_path / "b.xz", "xz")
    joined = tmp_path / "joined"
    joined.write_bytes(open(first, "rb").read() + b"\0" * 8 + open(second, "rb").read() + b"\0" * 4)
    assert _install.estimated_extracted_size(str(joined), "xz") == 300 * KiB + 5 * MiB
    # Stream padding (NULs in multiples of 4) is part of the xz format: read through, as `xz -d` does.
    assert _install.extract(str(joined), str(tmp_path / "out"), "xz") == 300 * KiB + 5 * MiB
    os.unlink(str(tmp_path / "out"))
    # Padding that is not a multiple of 4 is not xz: refused as trailing data, nothing kept.
    joined.write_bytes(open(first, "rb").read() + b"\0" * 3)
    with pytest.raises(ImageRejected, match="not a multiple of 4"):
        _install.extract(str(joined), str(tmp_path / "out"), "xz")
    assert not (tmp_path / "out").exists()
    # Concatenated streams without padding (what `cat a.xz b.xz` gives) extract whole.
    joined.write_bytes(open(first, "rb").read() + open(second, "rb").read())
    assert _install.extract(str(joined), str(tmp_path / "out"), "xz") == 300 * KiB + 5 * MiB


def test_estimate_of_garbage_is_unknown(tmp_path):
    garbage = images.random_raw(tmp_path / "g", 4 * KiB, seed=3)
    for kind in ("xz", "zip", "zstd"):
        assert _install.estimated_extracted_size(garbage, kind) is None


# ---------------------------------------------------------------- extraction

@pytest.mark.parametrize("kind", EXTRACTABLE)
def test_extract_round_trip_keeps_holes(compressed, holey, tmp_path, kind):
    dst = str(tmp_path / "out.raw")
    written = _install.extract(compressed[kind], dst, images.DETECTED_AS[kind])
    assert written == os.path.getsize(holey) == os.path.getsize(dst)
    assert images.sha256_file(dst) == images.sha256_file(holey)
    assert images.allocated_bytes(dst) <= images.allocated_bytes(holey) + SPARSE_SLACK
    assert oct(os.stat(dst).st_mode & 0o777) == oct(0o644 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_extract_detects_the_kind_when_not_given(compressed, holey, tmp_path):
    dst = str(tmp_path / "out.raw")
    _install.extract(compressed["zstd"], dst)
    assert images.sha256_file(dst) == images.sha256_file(holey)


def test_extract_dense_data_with_an_odd_tail(tmp_path):
    src = images.random_raw(tmp_path / "dense.raw", MiB + 12345, seed=7)
    packed = images.compress(src, tmp_path / "dense.bin", "gzip")
    dst = str(tmp_path / "out")
    assert _install.extract(packed, dst, "gzip", block_size=4096) == MiB + 12345
    assert images.sha256_file(dst) == images.sha256_file(src)


def test_extract_a_qcow2_inside_gzip_gives_the_qcow2(tmp_path):
    disk = images.qcow2(tmp_path / "disk.qcow2", 64 * MiB, writes=[(MiB, MiB, 0xAB)])
    packed = images.compress(disk, tmp_path / "download", "gzip")
    dst = str(tmp_path / "disk")
    _install.extract(packed, dst, "gzip")
    info = _gate.inspect_image(dst)
    assert (info.format, info.virtual_size) == ("qcow2", 64 * MiB)


def test_zip_with_two_members_is_refused_with_their_names(compressed, tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(ImageRejected) as caught:
        _install.extract(compressed["zip-two"], str(dst), "zip")
    assert "exactly one file" in caught.value.msg
    assert "holey.raw" in caught.value.msg and "README.txt" in caught.value.msg
    assert not dst.exists()


def test_empty_zip_is_refused(tmp_path):
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(str(empty), "w").close()
    assert _install.detect_compression(str(empty)) == "zip"
    with pytest.raises(ImageRejected, match="holds 0"):
        _install.extract(str(empty), str(tmp_path / "out"), "zip")


def _flip_byte(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_corrupted_gzip_leaves_no_destination(tmp_path):
    src = images.random_raw(tmp_path / "data", 512 * KiB, seed=4)
    packed = images.compress(src, tmp_path / "data.gz", "gzip")
    _flip_byte(packed, os.path.getsize(packed) // 2)
    dst = tmp_path / "out"
    with pytest.raises(ImageRejected, match="not valid gzip data"):
        _install.extract(packed, str(dst), "gzip")
    assert not dst.exists()


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zip", "zstd", "zstd-nosize"])
def test_truncated_archive_is_refused_and_removed(tmp_path, kind):
    src = images.random_raw(tmp_path / "data", 512 * KiB, seed=5)
    packed = images.compress(src, tmp_path / "packed", kind)
    with open(packed, "r+b") as handle:
        handle.truncate(os.path.getsize(packed) * 2 // 3)
    dst = tmp_path / "out"
    with pytest.raises(ImageRejected):
        _install.extract(packed, str(dst), images.DETECTED_AS[kind])
    assert not dst.exists()


def test_zip_with_an_offset_before_the_file_is_refused_not_an_io_error(tmp_path):
    # The central directory says where the member is; one pointing before byte 0 made zipfile's seek fail with
    # EINVAL, which was reported as an I/O error retryable anywhere (another host would get the same bytes).
    src = tmp_path / "s"
    src.write_bytes(bytes(4096))
    packed = tmp_path / "z.zip"
    with zipfile.ZipFile(str(packed), "w") as archive:
        archive.write(str(src), "s")
    data = bytearray(packed.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 16:end + 20] = struct.pack("<I", 0x670000)  # the central directory offset, past the end: zipfile
    # subtracts it from where the directory really is and seeks the member to a negative offset
    packed.write_bytes(bytes(data))
    with pytest.raises(ImageRejected) as caught:
        _install.extract(str(packed), str(tmp_path / "out"), "zip")
    assert (caught.value.retry_here, caught.value.retry_elsewhere) == (False, False)
    assert not (tmp_path / "out").exists()


def test_zstd_with_trailing_garbage_is_refused(compressed, tmp_path):
    packed = tmp_path / "packed"
    packed.write_bytes(open(compressed["zstd"], "rb").read() + b"not zstd at all")
    with pytest.raises(ImageRejected, match="trailing garbage"):
        _install.extract(str(packed), str(tmp_path / "out"), "zstd")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind, argv", [("xz", ["xz", "-c", "--lzma2=dict=600MiB"]),
                                        ("zstd", ["zstd", "-q", "-c", "--long=31"])])
def test_a_decoder_window_above_the_limit_is_refused(tmp_path, kind, argv):
    # The header of a compressed image chooses the decoder's memory: 600 MiB of xz dictionary, 2 GiB of zstd window.
    packed = tmp_path / "packed"
    with open(str(packed), "wb") as out:
        subprocess.run(argv, input=b"x" * 100000, stdout=out, check=True)
    with pytest.raises(ImageRejected, match="decoder window") as caught:
        _install.extract(str(packed), str(tmp_path / "out"), kind)
    assert caught.value.details["rule"] == "decoder_memory"
    assert not (tmp_path / "out").exists()


def test_zstd_without_the_library_gives_an_install_hint(compressed, tmp_path, monkeypatch):
    # zstandard is installed in the test venv and cannot be uninstalled for one test: hide it instead.
    monkeypatch.setattr(_install, "zstandard", None)
    with pytest.raises(ImageRejected, match="python3-zstandard"):
        _install.extract(compressed["zstd"], str(tmp_path / "out"), "zstd")
    assert not (tmp_path / "out").exists()


def test_extract_never_overwrites_an_existing_destination(compressed, tmp_path):
    dst = tmp_path / "out"
    dst.write_bytes(b"someone else's file")
    with pytest.raises(DirectDownloadError, match="already exists"):
        _install.extract(compressed["gzip"], str(dst), "gzip")
    assert dst.read_bytes() == b"someone else's file"


def test_unknown_kind_and_uncompressed_source_are_invalid_input(tmp_path):
    raw = images.random_raw(tmp_path / "raw", 4 * KiB, seed=6)
    with pytest.raises(InvalidInput, match="not compressed"):
        _install.extract(raw, str(tmp_path / "out"))
    with pytest.raises(InvalidInput, match="unknown compression"):
        _install.extract(raw, str(tmp_path / "out2"), "lz4")
    assert not (tmp_path / "out2").exists()


# ---------------------------------------------------------------- free space

def test_free_space_and_ensure_free_space(tmp_path):
    assert _install.free_space(str(tmp_path)) > 0
    _install.ensure_free_space(str(tmp_path), None, "nothing")
    _install.ensure_free_space(str(tmp_path), 1, "one byte")
    with pytest.raises(NotEnoughSpace) as caught:
        _install.ensure_free_space(str(tmp_path), 1 << 60, "the image")
    assert "needed" in caught.value.msg and "available" in caught.value.msg and "the image" in caught.value.msg
    assert caught.value.details["needed"] == 1 << 60


def test_human_size():
    assert _install.human_size(512) == "512 B"
    assert _install.human_size(1536) == "1.5 KiB"
    assert _install.human_size(5 * 1024 ** 3) == "5.0 GiB"
    assert _install.human_size(3 * 1024 ** 5) == "3072.0 TiB"


def test_enospc_refused_as_soon_as_the_real_bytes_pass_the_free_space(small_tmpfs, tmp_path):
    # The space check counts the bytes really written (holes cost nothing): dense data that cannot fit is stopped
    # as soon as it passes the free space, before the pool is full, and nothing is left.
    src = images.random_raw(tmp_path / "big", 2 * MiB, seed=8)
    packed = images.compress(src, tmp_path / "big.gz", "gzip")
    dst = small_tmpfs / "out"
    with pytest.raises(NotEnoughSpace, match="while extracting") as caught:
        _install.extract(packed, str(dst), "gzip")
    assert caught.value.details["written"] <= MiB + 64 * KiB
    assert not dst.exists()
    assert os.listdir(str(small_tmpfs)) == []


def test_sparse_image_larger_than_the_free_space_fits_by_its_data(small_tmpfs, tmp_path):
    # 16 MiB apparent, 512 KiB of data, into a 1 MiB tmpfs: what is really written fits, so it is extracted.
    src = images.sparse_raw(tmp_path / "thin", 16 * MiB, data=[(0, 256 * KiB), (8 * MiB, 256 * KiB)])
    packed = images.compress(src, tmp_path / "thin.xz", "xz")
    dst = small_tmpfs / "out"
    assert _install.extract(packed, str(dst), "xz") == 16 * MiB
    assert images.sha256_file(str(dst)) == images.sha256_file(src)


def test_enospc_mid_way_removes_the_partial_file(small_tmpfs, tmp_path):
    src = images.random_raw(tmp_path / "big", 2 * MiB, seed=9)
    packed = images.compress(src, tmp_path / "big.bz2", "bzip2")  # bzip2 does not record its size
    assert _install.estimated_extracted_size(packed, "bzip2") is None
    dst = small_tmpfs / "out"
    with pytest.raises(NotEnoughSpace, match="filled up while extracting") as caught:
        _install.extract(packed, str(dst), "bzip2")
    assert caught.value.details["written"] > 0
    assert not dst.exists()
    assert os.listdir(str(small_tmpfs)) == []


# ---------------------------------------------------------------- inspection and policy

def test_inspect_qcow2(tmp_path):
    disk = images.qcow2(tmp_path / "disk.qcow2", 64 * MiB, writes=[(0, MiB, 0x11)])
    info = _gate.inspect_image(disk, "qcow2")
    assert (info.format, info.virtual_size, info.backing_file, info.data_file) == ("qcow2", 64 * MiB, None, None)
    assert info.actual_size > MiB
    assert info.raw_json["format"] == "qcow2"
    _gate.check_policy(info, "qcow2")
    _gate.check_policy(info, "QCOW2")
    _gate.check_policy(info)


def test_inspect_raw_probed_and_declared(tmp_path):
    raw = images.sparse_raw(tmp_path / "disk.raw", 16 * MiB)
    for declared in (None, "raw"):
        info = _gate.inspect_image(raw, declared)
        assert (info.format, info.virtual_size) == ("raw", 16 * MiB)
        _gate.check_policy(info, declared)


def test_inspect_iso_never_asks_qemu_img(tmp_path):
    iso = images.iso(tmp_path / "cd.iso", 3 * MiB)
    info = _gate.inspect_image(iso, qemu_img=str(tmp_path / "no-such-qemu-img"))
    assert (info.format, info.virtual_size, info.raw_json) == ("iso", 3 * MiB, None)
    _gate.check_policy(info, "iso")
    with pytest.raises(ImageRejected, match="expected to be qcow2 but it is iso"):
        _gate.check_policy(info, "qcow2")


def test_backing_file_is_refused_without_running_qemu_img(tmp_path):
    base = images.qcow2(tmp_path / "base.qcow2", 16 * MiB)
    overlay = images.qcow2_with_backing(tmp_path / "overlay.qcow2", base)
    info = _gate.inspect_image(overlay, "qcow2", qemu_img=str(tmp_path / "no-such-qemu-img"))
    assert info.backing_file == base
    with pytest.raises(ImageRejected, match="backing file") as caught:
        _gate.check_policy(info, "qcow2")
    assert base in caught.value.msg and (caught.value.retry_here, caught.value.retry_elsewhere) == (False, False)


def test_backing_file_reported_by_qemu_img_is_refused_too(tmp_path):
    # Defence in depth: even an ImageInfo built from qemu-img's JSON alone is refused on its backing-filename.
    info = _gate.info_from_json("x", {"format": "qcow2", "virtual-size": 1, "backing-filename": "/etc/shadow"}, 0)
    with pytest.raises(ImageRejected, match="/etc/shadow"):
        _gate.check_policy(info)


def test_external_data_file_is_refused(tmp_path):
    disk = images.qcow2_with_data_file(tmp_path / "disk.qcow2", tmp_path / "disk.data")
    info = _gate.inspect_image(disk)
    assert info.data_file == str(tmp_path / "disk.data")
    with pytest.raises(ImageRejected, match="external data file"):
        _gate.check_policy(info, "qcow2")


def test_raw_disk_holding_a_qcow2_header_is_refused_even_when_declared_raw(tmp_path):
    # Declared raw does not hide what the bytes are: every later `qemu-img convert` without -f would probe it as
    # the qcow2 it looks like and read its backing file (issue 16). qemu-img is not even run.
    raw = images.raw_containing_qcow2_header(tmp_path / "guest.raw", 4 * MiB, backing="/etc/hostname")
    for declared in ("raw", None):
        info = _gate.inspect_image(raw, declared, qemu_img=str(tmp_path / "no-such-qemu-img"))
        assert info.format == "qcow2" and info.backing_file == "/etc/hostname"
        with pytest.raises(ImageRejected, match="backing file"):
            _gate.check_policy(info, declared)


def test_format_mismatch_names_both_formats(tmp_path):
    raw = images.random_raw(tmp_path / "disk", MiB, seed=10)
    info = _gate.inspect_image(raw, "qcow2")
    assert info.format == "raw"
    with pytest.raises(ImageRejected, match="expected to be qcow2 but it is raw"):
        _gate.check_policy(info, "qcow2")


@pytest.mark.parametrize("fmt", ["vmdk", "vpc", "vhdx", "vdi", "qed"])
def test_foreign_formats_are_refused(tmp_path, fmt):
    disk = str(tmp_path / ("disk." + fmt))
    subprocess.run([images.QEMU_IMG, "create", "-q", "-f", fmt, disk, "16M"], check=True)
    info = _gate.inspect_image(disk, qemu_img=str(tmp_path / "no-such-qemu-img"))
    assert info.format == fmt
    with pytest.raises(ImageRejected, match="qcow2, raw or iso only"):
        _gate.check_policy(info)


def test_encrypted_qcow2_is_refused(tmp_path):
    # Legacy AES rather than LUKS: creating LUKS runs a PBKDF benchmark that takes seconds; both set "encrypted".
    disk = str(tmp_path / "enc.qcow2")
    subprocess.run([images.QEMU_IMG, "create", "-q", "--object", "secret,id=sec0,data=s3cret", "-f", "qcow2",
                    "-o", "encrypt.format=aes,encrypt.key-secret=sec0", disk, "16M"], check=True)
    info = _gate.inspect_image(disk)
    assert info.format == "qcow2" and info.encrypted
    with pytest.raises(ImageRejected, match="encrypted"):
        _gate.check_policy(info)


def test_missing_qemu_img_names_the_package(tmp_path):
    disk = images.qcow2(tmp_path / "disk", 16 * MiB)  # raw and ISO never need qemu-img: their size is their size
    with pytest.raises(DirectDownloadError, match="qemu-utils on Debian/Ubuntu, qemu-img on RHEL") as caught:
        _gate.inspect_image(disk, qemu_img=str(tmp_path / "no-such-qemu-img"))
    assert (caught.value.retry_here, caught.value.retry_elsewhere) == (False, True)  # another host may have it
    raw = images.random_raw(tmp_path / "disk.raw", 64 * KiB, seed=11)
    assert _gate.inspect_image(raw, qemu_img=str(tmp_path / "no-such-qemu-img")).format == "raw"


def test_qemu_img_failure_carries_its_stderr(tmp_path):
    disk = images.qcow2(tmp_path / "disk.qcow2", 16 * MiB)
    with open(disk, "r+b") as handle:
        handle.seek(40)
        handle.write(struct.pack(">Q", 0x1234))  # an unaligned L1 table offset: qemu-img refuses the image
    with pytest.raises(ImageRejected, match="qemu-img could not read") as caught:
        _gate.inspect_image(disk)
    assert "l1 table" in caught.value.details["stderr"].lower()
    assert (caught.value.retry_here, caught.value.retry_elsewhere) == (False, False) and caught.value.details["rule"] == "qemu_img"


# ---------------------------------------------------------------- atomic install

def test_install_file_renames_and_replaces_a_regular_file(tmp_path):
    final = tmp_path / "disk.qcow2"
    final.write_bytes(b"old")
    tmp = tmp_path / ".disk.qcow2.part"
    tmp.write_bytes(b"new image")
    assert _install.install_file(str(tmp), str(final)) == str(final)
    assert final.read_bytes() == b"new image"
    assert not tmp.exists()


def test_install_file_refuses_a_symlink_destination(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    final = tmp_path / "disk.qcow2"
    final.symlink_to(target)
    tmp = tmp_path / ".disk.qcow2.part"
    tmp.write_bytes(b"image")
    with pytest.raises(InvalidInput, match="symbolic link"):
        _install.install_file(str(tmp), str(final))
    assert final.is_symlink() and target.read_bytes() == b"precious" and tmp.exists()


def test_install_file_refuses_a_directory_destination(tmp_path):
    final = tmp_path / "disk.qcow2"
    final.mkdir()
    tmp = tmp_path / ".disk.qcow2.part"
    tmp.write_bytes(b"image")
    with pytest.raises(InvalidInput, match="is a directory"):
        _install.install_file(str(tmp), str(final))
    assert final.is_dir() and tmp.exists()


def test_install_file_without_a_temporary_file_fails(tmp_path):
    with pytest.raises(FileNotFoundError):
        _install.install_file(str(tmp_path / "missing"), str(tmp_path / "disk"))
    assert not (tmp_path / "disk").exists()


def test_hidden_names():
    assert _install.record_path("/pool/disk.qcow2") == "/pool/.disk.qcow2.ddinfo.json"
    assert _install.extracting_path("/pool/disk.qcow2") == "/pool/.disk.qcow2.extracting"


# ---------------------------------------------------------------- installed-image records

def _installed(tmp_path, content=b"image bytes"):
    final = tmp_path / "disk.qcow2"
    final.write_bytes(content)
    return str(final)


def test_record_round_trip_with_redacted_url(tmp_path):
    final = _installed(tmp_path)
    written = _install.write_record(final, {
        "checksum": "sha256:" + "a" * 64, "url": "https://user:pw@mirror.example/disk.qcow2?token=abc",
        "format": "qcow2", "virtual_size": 1024,
    })
    record = _install.read_record(final)
    assert record == written
    assert record["url"] == "https://***@mirror.example/disk.qcow2?token=***"
    assert record["st_size"] == len(b"image bytes") and record["installed_at"].endswith("Z")
    text = open(_install.record_path(final)).read()
    assert "pw" not in text and "abc" not in text
    assert _install.record_matches_file(final, record)
    assert sorted(os.listdir(str(tmp_path))) == [".disk.qcow2.ddinfo.json", "disk.qcow2"]  # no temp left


def test_record_detects_a_touched_file(tmp_path):
    final = _installed(tmp_path)
    record = _install.write_record(final, {"checksum": "md5:" + "b" * 32})
    st = os.stat(final)
    os.utime(final, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert not _install.record_matches_file(final, record)


def test_record_detects_a_replaced_file_with_same_size_and_mtime(tmp_path):
    final = _installed(tmp_path, b"AAAA")
    record = _install.write_record(final, {})
    replacement = tmp_path / "other"
    replacement.write_bytes(b"BBBB")  # created while the original exists: a different inode for sure
    os.utime(str(replacement), ns=(record["st_mtime_ns"], record["st_mtime_ns"]))
    os.rename(str(replacement), final)
    assert os.path.getsize(final) == record["st_size"] and os.stat(final).st_mtime_ns == record["st_mtime_ns"]
    assert not _install.record_matches_file(final, record)


def test_missing_or_broken_records(tmp_path):
    final = _installed(tmp_path)
    assert _install.read_record(final) is None
    assert not _install.record_matches_file(final, None)
    with open(_install.record_path(final), "w") as handle:
        handle.write("{not json")
    assert _install.read_record(final) is None
    record = _install.write_record(final, {})
    os.unlink(final)
    assert not _install.record_matches_file(final, record)


def test_remove_image_removes_file_and_record(tmp_path):
    final = _installed(tmp_path)
    _install.write_record(final, {})
    assert _install.remove_image(final)
    assert os.listdir(str(tmp_path)) == []
    assert not _install.remove_image(final)


def test_remove_image_refuses_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    final = tmp_path / "disk.qcow2"
    final.symlink_to(target)
    with pytest.raises(InvalidInput):
        _install.remove_image(str(final))
    assert target.exists()


def test_tools_are_present():
    # The suite relies on real tools; say clearly which one is missing rather than fail obscurely.
    for tool in ("qemu-img", "qemu-io", "gzip", "bzip2", "xz", "zstd"):
        assert shutil.which(tool), "%s is needed by these tests" % tool
