# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Metalink downloads against real loopback mirrors, through the one engine: a parsed Metalink converted into a
description (_description.from_metalink), failover (_transfer.MultiSource) and segmented multi-source downloads
(_transfer.segmented_download) with piece hashes, re-fetch of a corrupt piece from another mirror, and resume."""

from __future__ import annotations

import hashlib
import os
import socket
import types

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import Checksum
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    ChecksumMismatch,
    InvalidInput,
    SourceError,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._http import HttpSource, SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._description import from_metalink
from ansible_collections.directdownload.kvm.plugins.module_utils._metalink import (
    NS_V3,
    NS_V4,
    load_metalink,
    parse_metalink,
    read_document,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import open_metalink_source
from ansible_collections.directdownload.kvm.plugins.module_utils._transfer import (
    MultiSource,
    mirror_key,
    segmented_download,
    sidecar_path,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import is_metalink_url

NAME = "img.raw"
PIECE = 256 * 1024
# 12 pieces and a short 13th: segments, stealing and an unaligned tail are all exercised.
SIZE = 12 * PIECE + 12345
RATE = 4 * 1024 * 1024  # slow enough for several workers to overlap, fast enough for quick tests


@pytest.fixture()
def image(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    data = bytearray(os.urandom(SIZE))
    data[4 * PIECE:7 * PIECE] = bytes(3 * PIECE)  # a hole: stays sparse in the part
    data = bytes(data)
    (root / NAME).write_bytes(data)
    (root / "other.raw").write_bytes(os.urandom(SIZE - 1))
    return types.SimpleNamespace(root=root, name=NAME, data=data, sha256=hashlib.sha256(data).hexdigest(),
                                 part=str(tmp_path / (".%s.part" % NAME)))


# servers: tests/unit/conftest.py (loopback servers over this module's image)


@pytest.fixture()
def refused_url():
    """A loopback port with nothing listening: connecting is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return "http://127.0.0.1:%d/%s" % (port, NAME)


OPTIONS = SourceOptions(connect_timeout=2, read_timeout=1)


def open_source(url):
    return HttpSource(url, OPTIONS)


def metalink(urls, data, pieces=True, hashes=("sha-256",), size=True, name=NAME):
    parts = []
    if size:
        parts.append("<size>%d</size>" % len(data))
    for type_name in hashes:
        parts.append('<hash type="%s">%s</hash>' % (type_name, hashlib.new(type_name.replace("-", ""), data)
                                                    .hexdigest()))
    if pieces:
        parts.append('<pieces length="%d" type="sha-1">%s</pieces>' % (PIECE, "".join(
            "<hash>%s</hash>" % hashlib.sha1(data[i:i + PIECE]).hexdigest() for i in range(0, len(data), PIECE))))
    for index, url in enumerate(urls):
        parts.append('<url priority="%d">%s</url>' % (index + 1, url))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="%s"><file name="%s">%s</file></metalink>'
            % (NS_V4, name, "\n".join(parts))).encode()


def describe(document, **kwargs):
    """The engine's description of a Metalink document."""
    return from_metalink(parse_metalink(document, **kwargs))


def read_all(body):
    out = bytearray()
    buf = bytearray(64 * 1024)
    while True:
        count = body.readinto(buf)
        if not count:
            return bytes(out)
        out += buf[:count]


def ranges(server, path="/" + NAME):
    server.wait_idle()
    return [r.headers.get("range") for r in server.requests_for(path, "GET")]


def byte_range(first, end):
    return "bytes=%d-%d" % (first, end - 1)


# ---------------------------------------------------------------------------------------------------------------
# One mirror at a time


def test_failover_refused_404_stalled_then_good(image, servers, refused_url):
    missing, stalling, good = servers(status=404), servers(stall_at=PIECE), servers()
    doc = metalink([refused_url, missing.url(NAME), stalling.url(NAME), good.url(NAME)], image.data)
    source = MultiSource(describe(doc), open_source)
    body = source.open(offset=0)
    assert body.url == stalling.url(NAME)
    assert read_all(body) == image.data
    body.close()
    # The stall moved the transfer to the next mirror at the byte where it stopped, not to byte 0.
    assert ranges(good) == ["bytes=%d-" % PIECE]
    assert body.url == good.url(NAME)
    assert [e["url"] for e in source.mirror_errors] == [refused_url, missing.url(NAME), stalling.url(NAME)]
    assert "404" in source.mirror_errors[1]["error"] and "read_timeout" in source.mirror_errors[2]["error"]
    assert source.bytes_per_mirror == {stalling.url(NAME): PIECE, good.url(NAME): SIZE - PIECE}


def test_truncated_body_continues_on_the_next_mirror(image, servers):
    cut, good = servers(truncate_at=3 * PIECE + 100), servers()
    source = MultiSource(describe(metalink([cut.url(NAME), good.url(NAME)], image.data)), open_source)
    body = source.open()
    data = read_all(body)
    assert data == image.data
    assert "truncated" in source.mirror_errors[0]["error"]
    assert len(ranges(good)) == 1 and ranges(good)[0].startswith("bytes=")


def test_without_a_hash_bytes_of_two_mirrors_are_never_joined(image, servers):
    cut, good = servers(truncate_at=2 * PIECE), servers()
    doc = metalink([cut.url(NAME), good.url(NAME)], image.data, pieces=False, hashes=())
    source = MultiSource(describe(doc), open_source)
    body = source.open()
    with pytest.raises(SourceError, match="truncated"):
        read_all(body)
    assert ranges(good) == []
    # The engine retries with what it saved: the saved mirror is asked first with its validators (If-Range); it
    # still fails, and the next mirror starts again from byte 0.
    saved = body.validators
    # The mirror is named by a digest: sidecars are files, mirror URLs may carry credentials.
    assert saved["mirror"].startswith("sha256:") and cut.url(NAME) not in str(saved) and saved["etag"]
    cut.set_fault("/" + NAME, status=503)
    again = source.open(offset=2 * PIECE, validators=saved)
    assert again.offset == 0 and again.url == good.url(NAME)
    assert read_all(again) == image.data
    assert ranges(good) == [None]


def test_a_user_checksum_makes_joining_mirrors_safe(image, servers):
    cut, good = servers(truncate_at=2 * PIECE), servers()
    doc = metalink([cut.url(NAME), good.url(NAME)], image.data, pieces=False, hashes=())
    source = MultiSource(describe(doc), open_source)
    assert source.expected_checksums(Checksum("sha256", image.sha256)) == [Checksum("sha256", image.sha256)]
    assert read_all(source.open()) == image.data
    assert ranges(good) == ["bytes=%d-" % (2 * PIECE)]


def test_resume_on_the_saved_mirror_uses_its_validators(image, servers):
    first, second = servers(), servers()
    source = MultiSource(describe(metalink([first.url(NAME), second.url(NAME)], image.data)), open_source)
    body = source.open()
    buf = bytearray(PIECE)
    body.readinto(buf)
    saved = body.validators
    body.close()
    assert saved["mirror"] == mirror_key(first.url(NAME))
    saved_on_second = dict(saved, mirror=mirror_key(second.url(NAME)))
    resumed = source.open(offset=PIECE, validators=saved_on_second)
    assert resumed.url == second.url(NAME) and resumed.offset == PIECE
    assert read_all(resumed) == image.data[PIECE:]
    second.wait_idle()
    request = second.requests_for("/" + NAME, "GET")[0]
    assert request.headers.get("range") == "bytes=%d-" % PIECE and request.headers.get("if-range") == saved["etag"]


def test_a_mirror_with_another_size_is_skipped(image, servers):
    wrong, good = servers(), servers()
    doc = metalink([wrong.url("other.raw"), good.url(NAME)], image.data)
    source = MultiSource(describe(doc), open_source)
    body = source.open()
    assert body.url == good.url(NAME) and read_all(body) == image.data
    assert "metalink says %d" % SIZE in source.mirror_errors[0]["error"]


def test_checksum_mismatch_moves_to_the_next_mirror(image, servers):
    """What the engine does on a whole-file mismatch: discard, ask the source to move on, download again."""
    corrupt, good = servers(corrupt_at=5000), servers()
    metalink_file = describe(metalink([corrupt.url(NAME), good.url(NAME)], image.data))
    source = MultiSource(from_metalink(metalink_file), open_source)
    expected = source.expected_checksums()[0]
    body = source.open()
    data = read_all(body)
    actual = hashlib.sha256(data).hexdigest()
    assert not expected.matches(actual)
    assert source.next_mirror_after_mismatch(body.url, expected.hexdigest, actual) is True
    body = source.open()
    assert body.url == good.url(NAME) and expected.matches(hashlib.sha256(read_all(body)).hexdigest())
    assert source.mirror_errors[-1]["url"] == corrupt.url(NAME)
    assert "checksum mismatch" in source.mirror_errors[-1]["error"]
    assert source.next_mirror_after_mismatch(body.url) is False
    with pytest.raises(SourceError, match="no mirror is left"):
        source.open()


def test_every_mirror_failing_is_one_clear_error(image, servers, refused_url):
    missing, gone = servers(status=404), servers(status=410)
    doc = metalink([refused_url, missing.url(NAME), gone.url(NAME)], image.data)
    source = MultiSource(describe(doc), open_source)
    with pytest.raises(SourceError) as info:
        source.open()
    assert "every mirror failed" in info.value.msg and "404" in info.value.msg and "410" in info.value.msg
    assert len(info.value.details["mirror_errors"]) == 3
    # A refused connection may heal: the whole failure is retryable, here and elsewhere.
    assert (info.value.retry_here, info.value.retry_elsewhere) == (True, True)
    only_missing = MultiSource(describe(metalink([missing.url(NAME), gone.url(NAME)], image.data)),
                               open_source)
    with pytest.raises(SourceError) as info:
        only_missing.open()
    assert (info.value.retry_here, info.value.retry_elsewhere) == (False, False)


def test_probe_and_read_head_fail_over(image, servers, refused_url):
    missing, good = servers(status=404), servers()
    source = MultiSource(describe(metalink([refused_url, missing.url(NAME), good.url(NAME)], image.data)),
                         open_source)
    info = source.probe()
    assert info["size"] == SIZE and info["mirror"] == good.url(NAME) and len(info["mirror_errors"]) == 2
    assert info["metalink"]["checksum"] == "{SHA-256}" + image.sha256
    assert source.read_head(512) == image.data[:512]


def test_v3_document_served_over_http(image, servers):
    good = servers()
    (image.root / "img.metalink").write_bytes((
        '<metalink version="3.0" xmlns="%s"><files><file name="%s"><size>%d</size><verification>'
        '<hash type="sha256">%s</hash></verification><resources>'
        '<url type="http" preference="10">%s</url><url type="http" preference="90">%s</url>'
        '</resources></file></files></metalink>'
        % (NS_V3, NAME, SIZE, image.sha256, good.url("missing.raw"), good.url(NAME))).encode())
    metalink_file = load_metalink(good.url("img.metalink"), open_source)
    assert metalink_file.version == 3 and metalink_file.mirrors[0].url == good.url(NAME)
    body = MultiSource(from_metalink(metalink_file), open_source).open()
    assert read_all(body) == image.data


def test_content_type_detection_without_suffix(image, servers):
    """A URL without a metalink suffix whose server says application/metalink4+xml is read as a metalink."""
    good = servers()
    (image.root / "get").write_bytes(metalink([good.url(NAME)], image.data))
    good.set_fault("/get", content_type="application/metalink4+xml")
    url = good.url("get")
    assert not is_metalink_url(url)
    body = HttpSource(url, OPTIONS).open()
    assert is_metalink_url(url, body.content_type)
    document = read_document(body)
    body.close()
    request = types.SimpleNamespace(source_options=OPTIONS, metalink_name=None, metalink_locations=(),
                                    connections=1, nfs_transport="auto")
    source = open_metalink_source(url, request, document=document)
    assert read_all(source.open()) == image.data


def test_open_metalink_source_fetches_the_document(image, servers):
    good = servers()
    (image.root / "img.meta4").write_bytes(metalink([good.url(NAME)], image.data))
    request = types.SimpleNamespace(source_options=OPTIONS, metalink_name=NAME, metalink_locations=["de"],
                                    connections=3, nfs_transport="auto")
    source = open_metalink_source(good.url("img.meta4"), request)
    assert source.connections == 3 and source.segmented and source.size == SIZE
    assert read_all(source.open()) == image.data


def test_an_oversized_document_is_refused_while_reading(image, servers):
    good = servers()
    (image.root / "big.meta4").write_bytes(b"<" * (3 * 1024 * 1024))
    with pytest.raises(InvalidInput, match="larger than"):
        load_metalink(good.url("big.meta4"), open_source)


# ---------------------------------------------------------------------------------------------------------------
# Several mirrors at once


def test_segmented_from_two_rate_limited_mirrors(image, servers):
    first, second = servers(rate=RATE), servers(rate=RATE)
    metalink_file = describe(metalink([first.url(NAME), second.url(NAME)], image.data))
    seen = []
    result = segmented_download(metalink_file, open_source, image.part, connections=2,
                                checksums=metalink_file.expected_checksums(), progress=lambda d, t: seen.append(d),
                                save_interval=0.05)
    with open(image.part, "rb") as handle:
        assert handle.read() == image.data
    assert result["checksum"] == "{SHA-256}" + image.sha256 and result["digests"]["sha256"] == image.sha256
    assert result["size"] == SIZE and result["bytes_downloaded"] == SIZE and result["pieces_verified"]
    assert set(result["bytes_per_mirror"]) == {first.url(NAME), second.url(NAME)}
    assert all(count >= PIECE for count in result["bytes_per_mirror"].values())
    assert result["mirror_errors"] == [] and result["refetched_pieces"] == []
    assert seen[-1] == SIZE
    # Exact ranges only, each aligned on pieces.
    for server in (first, second):
        for value in ranges(server):
            first_byte, last_byte = (int(x) for x in value[len("bytes="):].split("-"))
            assert first_byte % PIECE == 0 and (last_byte + 1 == SIZE or (last_byte + 1) % PIECE == 0)
    # The zero-filled pieces stayed holes; the resume sidecar is gone after success.
    assert os.stat(image.part).st_blocks * 512 <= SIZE - 2 * PIECE
    assert not os.path.exists(sidecar_path(image.part))


def test_corrupt_piece_is_fetched_again_alone_from_another_mirror(image, servers):
    # Mirror A serves piece 1 corrupted; B is good. Only piece 1 is fetched a second time, from B.
    corrupt = servers(corrupt_at=PIECE + 777, rate=RATE)
    good = servers(rate=RATE)
    metalink_file = describe(metalink([corrupt.url(NAME), good.url(NAME)], image.data))
    logged = []
    result = segmented_download(metalink_file, open_source, image.part, connections=2,
                                checksums=metalink_file.expected_checksums(), log=logged.append)
    with open(image.part, "rb") as handle:
        assert handle.read() == image.data
    assert result["refetched_pieces"] == [1]
    assert result["bytes_downloaded"] == SIZE + PIECE
    assert "piece 1" in result["mirror_errors"][0]["error"] and result["mirror_errors"][0]["url"] == corrupt.url(NAME)
    assert any("piece 1" in line and "another mirror" in line for line in logged)
    covering = [value for value in ranges(good)
                if int(value[6:].split("-")[0]) <= PIECE + 777 <= int(value[6:].split("-")[1])]
    assert covering == [byte_range(PIECE, 2 * PIECE)]


def test_single_connection_with_pieces_refetches_from_another_mirror(image, servers):
    corrupt, good = servers(corrupt_at=3 * PIECE), servers()
    metalink_file = describe(metalink([corrupt.url(NAME), good.url(NAME)], image.data))
    result = segmented_download(metalink_file, open_source, image.part, connections=1,
                                checksums=metalink_file.expected_checksums())
    assert result["refetched_pieces"] == [3]
    # The bad piece is fetched again alone; the mirror that served it is quarantined for the rest of the download,
    # so the good one serves everything after it too.
    assert ranges(good) == [byte_range(3 * PIECE, 4 * PIECE), byte_range(4 * PIECE, SIZE)]
    assert ranges(corrupt) == [byte_range(0, SIZE)]
    by_url = {entry["url"]: entry for entry in result["sources"]}
    assert by_url[corrupt.url(NAME)]["pieces_rejected"] == 1 and "piece 3" in by_url[corrupt.url(NAME)]["error"]
    assert by_url[corrupt.url(NAME)]["bytes"] == 4 * PIECE
    assert by_url[good.url(NAME)] == dict(url=good.url(NAME), bytes=SIZE - 3 * PIECE, pieces_rejected=0, error=None, peer=False)
    with open(image.part, "rb") as handle:
        assert handle.read() == image.data


def test_bad_mirrors_are_dropped_and_the_good_ones_finish(image, servers, refused_url):
    missing = servers(status=404)
    no_range = servers(no_range=True)
    stalling = servers(stall_at=9 * PIECE + 10, rate=RATE)
    good = servers(rate=RATE)
    urls = [refused_url, missing.url(NAME), no_range.url(NAME), stalling.url(NAME), good.url(NAME)]
    metalink_file = describe(metalink(urls, image.data))
    result = segmented_download(metalink_file, open_source, image.part, connections=4,
                                checksums=metalink_file.expected_checksums())
    with open(image.part, "rb") as handle:
        assert handle.read() == image.data
    failed = {e["url"] for e in result["mirror_errors"]}
    assert {refused_url, missing.url(NAME), no_range.url(NAME)} <= failed
    assert good.url(NAME) in result["bytes_per_mirror"]
    assert set(result["bytes_per_mirror"]) <= {stalling.url(NAME), good.url(NAME), no_range.url(NAME),
                                               refused_url, missing.url(NAME)}


def test_no_mirror_serves_ranges(image, servers):
    first, second = servers(no_range=True), servers(no_range=True)
    metalink_file = describe(metalink([first.url(NAME), second.url(NAME)], image.data))
    with pytest.raises(SourceError, match="no mirror left") as info:
        segmented_download(metalink_file, open_source, image.part, connections=2)
    assert info.value.details["ranges_unsupported"] is True


def test_whole_file_mismatch_after_good_pieces(image, servers):
    first, second = servers(), servers()
    metalink_file = describe(metalink([first.url(NAME), second.url(NAME)], image.data))
    wrong = Checksum("sha512", hashlib.sha512(b"something else").hexdigest())
    with pytest.raises(ChecksumMismatch, match="expected {SHA-512}"):
        segmented_download(metalink_file, open_source, image.part, connections=2,
                           checksums=metalink_file.expected_checksums(wrong))
    assert not os.path.exists(sidecar_path(image.part))


def test_without_pieces_units_are_ranges_and_the_file_hash_decides(image, servers):
    first, second = servers(rate=RATE), servers(rate=RATE)
    metalink_file = describe(metalink([first.url(NAME), second.url(NAME)], image.data, pieces=False))
    result = segmented_download(metalink_file, open_source, image.part, connections=3, unit_size=128 * 1024,
                                checksums=metalink_file.expected_checksums())
    assert result["unit_size"] == 128 * 1024 and not result["pieces_verified"]
    assert result["checksum"] == "{SHA-256}" + image.sha256
    with open(image.part, "rb") as handle:
        assert handle.read() == image.data


class Interrupt(BaseException):
    """Stands for SIGINT/SIGTERM arriving in the middle of a download."""


def interrupt_at(fraction):
    def progress(done, total):
        if done >= total * fraction:
            raise Interrupt()
    return progress


def test_resume_keeps_verified_pieces_and_refetches_a_damaged_one(image, servers):
    first, second = servers(rate=RATE), servers(rate=RATE)
    metalink_file = describe(metalink([first.url(NAME), second.url(NAME)], image.data))
    checksums = metalink_file.expected_checksums()
    with pytest.raises(Interrupt):
        segmented_download(metalink_file, open_source, image.part, connections=2, checksums=checksums,
                           progress=interrupt_at(0.4), save_interval=0.05)
    sidecar = sidecar_path(image.part)
    assert os.path.exists(sidecar) and os.path.getsize(image.part) == SIZE
    with open(sidecar) as handle:
        assert "done" in handle.read()
    # Damage piece 0 on disk (e.g. a torn write): the resume hashes done pieces again and fetches it anew.
    with open(image.part, "r+b") as handle:
        handle.write(b"\xff" * 10)
    for server in (first, second):
        server.wait_idle()
        server.clear_requests()
    logged = []
    result = segmented_download(metalink_file, open_source, image.part, connections=2, checksums=checksums,
                                log=logged.append)
    with open(image.part, "rb") as handle:
        assert handle.read() == image.data
    assert result["resumed_bytes"] > 0 and result["bytes_downloaded"] < SIZE
    assert result["resumed_bytes"] + result["bytes_downloaded"] == SIZE
    assert any("failed their hash on resume" in line for line in logged)
    fetched = [value for server in (first, second) for value in ranges(server)]
    assert any(value.startswith("bytes=0-") for value in fetched)


def test_resume_without_pieces_trusts_units_and_verifies_the_file(image, servers):
    first, second = servers(rate=RATE), servers(rate=RATE)
    metalink_file = describe(metalink([first.url(NAME), second.url(NAME)], image.data, pieces=False))
    checksums = metalink_file.expected_checksums()
    with pytest.raises(Interrupt):
        segmented_download(metalink_file, open_source, image.part, connections=2, checksums=checksums,
                           unit_size=64 * 1024, progress=interrupt_at(0.3), save_interval=0.05)
    result = segmented_download(metalink_file, open_source, image.part, connections=2, checksums=checksums,
                                unit_size=64 * 1024)
    assert result["resumed_bytes"] > 0 and result["checksum"] == "{SHA-256}" + image.sha256
    with open(image.part, "rb") as handle:
        assert handle.read() == image.data


def test_resume_state_of_another_file_is_not_used(image, servers):
    first = servers(rate=RATE)
    metalink_file = describe(metalink([first.url(NAME)], image.data))
    with pytest.raises(Interrupt):
        segmented_download(metalink_file, open_source, image.part, connections=2, progress=interrupt_at(0.3),
                           checksums=metalink_file.expected_checksums(), save_interval=0.05)
    first.clear_faults()
    other = describe(metalink([first.url(NAME)], image.data, hashes=("sha-512",)))
    result = segmented_download(other, open_source, image.part, connections=2, checksums=other.expected_checksums())
    assert result["resumed_bytes"] == 0 and result["bytes_downloaded"] == SIZE


def test_metalink_source_segmented_wrapper_collects_errors(image, servers, refused_url):
    good = servers()
    source = MultiSource(describe(metalink([refused_url, good.url(NAME)], image.data)), open_source,
                         connections=2)
    assert source.segmented
    result = source.download_segmented(image.part, checksums=source.expected_checksums())
    assert result["checksum"] == "{SHA-256}" + image.sha256
    assert source.mirror_errors and source.mirror_errors[0]["url"] == refused_url
    assert source.bytes_per_mirror == {good.url(NAME): SIZE}
    # After a mismatch the mirrors that served the bytes are set aside; the unreachable one may be tried again.
    assert source.next_mirror_after_mismatch() is True
    assert [m.url for m in source.mirrors()] == [refused_url]


def test_size_from_the_mirrors_when_the_metalink_has_none(image, servers):
    first, second = servers(), servers()
    metalink_file = describe(metalink([first.url(NAME), second.url(NAME)], image.data, pieces=False,
                                      size=False))
    assert metalink_file.size is None
    result = segmented_download(metalink_file, open_source, image.part, connections=2, unit_size=64 * 1024,
                                checksums=metalink_file.expected_checksums())
    assert result["size"] == SIZE
    with open(image.part, "rb") as handle:
        assert handle.read() == image.data


def test_segmented_mismatch_sets_aside_the_mirrors_that_served(image, servers):
    first, second = servers(), servers()
    source = MultiSource(describe(metalink([first.url(NAME), second.url(NAME)], image.data, pieces=False,
                                           hashes=())), open_source, connections=2)
    wrong = Checksum("sha256", hashlib.sha256(b"else").hexdigest())
    with pytest.raises(ChecksumMismatch):
        source.download_segmented(image.part, checksums=source.expected_checksums(wrong), unit_size=64 * 1024)
    assert set(source.bytes_per_mirror) == {first.url(NAME), second.url(NAME)}
    assert source.next_mirror_after_mismatch() is False
    assert sorted(e["url"] for e in source.mirror_errors) == sorted([first.url(NAME), second.url(NAME)])
