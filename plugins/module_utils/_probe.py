# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Probe a template URL as a KVM host sees it (CloudStack's CheckUrlCommand), for ``url_check``.

What the probe does, and where it differs from CloudStack (research §1.3, §8):

- ``source.probe()``: HEAD, or a one-byte ranged GET where HEAD is refused; the template's headers are sent
  (CloudStack never sends them on the probe, so protected URLs could not be registered); redirects by the same
  policy as the download; TLS with the host's trust (system CAs + ``ca_path`` + the trust directory).
- ``source.read_head()``: the first KiBs with a ranged GET, to read the image header. The format is detected by
  content: qcow2 (magic ``QFI\\xfb`` checked, virtual size from bytes 24-31, big-endian), ISO 9660, a few foreign
  formats, an HTML page served by mistake. Compressed images (gzip, bzip2, xz, zip, zstd: detected by magic, not
  by suffix) are stream-decompressed from that head only; bzip2 may need its whole first block, so the head grows
  up to ``MAX_HEAD_BYTES``. CloudStack reads the 8 bytes without checking the magic, and decompresses only when the
  URL ends in a compression suffix.
- A metalink (by suffix or by the Content-Type the server sends) is parsed and its mirrors probed in order; the
  sizes come from the image a mirror serves, never from the XML bytes (CloudStack #13916).
- An unreachable URL is a normal answer (``reachable: false`` with ``error``); only bad input raises.
"""

from __future__ import annotations

import bz2
import io
import lzma
import struct
import zlib

from ansible_collections.directdownload.kvm.plugins.module_utils import _gate
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import DirectDownloadError, InvalidInput, printable
# The magic tables of the installer and the gate: one definition of "what is this file" for probe and install.
from ansible_collections.directdownload.kvm.plugins.module_utils._gate import ISO_OFFSETS, QCOW2_MAGIC
from ansible_collections.directdownload.kvm.plugins.module_utils._install import compression_from_head
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import is_metalink_answer, is_metalink_url, redact_url

try:
    import zstandard
except ImportError:
    zstandard = None

# The first read: enough for a qcow2 header and for the ISO 9660 descriptors at 32 KiB + 1.
HEAD_BYTES = 64 * 1024
# bzip2 produces nothing before its first block (up to 900 kB of input) is complete: read more, up to this.
MAX_HEAD_BYTES = 4 * 1024 * 1024
# Decompressed bytes wanted from a compressed image: the qcow2 header fields we read end at byte 104. Every
# decompressor is asked for at most this much output, whatever the head holds (a 49 KB zstd head can expand to
# 1.6 GB), and the xz and zstd decoders get a memory limit for their window (the header declares it).
WANTED_PLAIN_BYTES = 4096
XZ_MEMORY_LIMIT = 128 * 1024 * 1024
ZSTD_MAX_WINDOW = 128 * 1024 * 1024
ISO_NEEDS = max(ISO_OFFSETS) + 5


class PlainSourceOptions:
    """What ``_sources.open_plain_source`` reads from a request: the http(s) options and the NFS transport."""

    def __init__(self, source_options, nfs_transport="auto"):
        self.source_options = source_options
        self.nfs_transport = nfs_transport


# --------------------------------------------------------------------------------------------------------------
# Reading image heads (pure functions on bytes)
# --------------------------------------------------------------------------------------------------------------

def _zip_member_data(head):
    """The compressed data of the first member of a zip archive and its method, from the local file header."""
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return None, None
    method, = struct.unpack("<H", head[8:10])
    name_length, extra_length = struct.unpack("<HH", head[26:30])
    return head[30 + name_length + extra_length:], method


def decompress_head(head, kind, wanted=WANTED_PLAIN_BYTES):
    """Decompress the start of a compressed stream ``head`` (which may stop anywhere). Returns up to ``wanted``
    plain bytes (fewer, possibly none, when the head is too short), or None when ``kind`` cannot be read here."""
    try:
        if kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, wanted)
        if kind == "xz":
            return lzma.LZMADecompressor(memlimit=XZ_MEMORY_LIMIT).decompress(head, max_length=wanted)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(head, max_length=wanted)
        if kind == "zip":
            data, method = _zip_member_data(head)
            if method == 0:
                return data[:wanted]
            if method == 8:
                return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, wanted)
            return None
        if kind == "zstd":
            if zstandard is None:
                return None
            reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
                io.BytesIO(head), read_across_frames=True)
            return _read_bounded(reader, wanted)
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
        raise InvalidInput("the %s stream at the start of the image is corrupt: %s" % (kind, exc)) from exc
    except Exception as exc:  # zstandard.ZstdError does not derive from the above
        if zstandard is not None and isinstance(exc, zstandard.ZstdError):
            raise InvalidInput("the zstd stream at the start of the image is corrupt: %s" % exc) from exc
        raise
    return None


def _read_bounded(reader, wanted):
    """Up to ``wanted`` bytes from a stream reader; a stream that stops early gives what it had."""
    plain = b""
    while len(plain) < wanted:
        chunk = reader.read(wanted - len(plain))
        if not chunk:
            break
        plain += chunk
    return plain


def qcow2_virtual_size(plain):
    """The virtual size from a qcow2 header (bytes 24-31, big-endian), or None when the magic is not there."""
    if len(plain) < 32 or plain[:4] != QCOW2_MAGIC:
        return None
    return struct.unpack(">Q", plain[24:32])[0]


def detect_format(plain, complete=False):
    """What the image is, from its first (decompressed) bytes: ``qcow2``, ``iso``, a foreign format name
    (``vmdk``, ``vhdx``, ``vpc``, ``qed``, ``luks``, ``vdi``), ``html`` (an error page served with 200), or ``raw``.
    ``None`` when the bytes are too few to tell an ISO from raw (unless ``complete``: the whole file was read)."""
    found = _gate.signatures(plain)
    if found and found[0] != "iso":
        return found[0]
    start = plain[:1024].lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return "html"
    if found:
        return "iso"
    if len(plain) < ISO_NEEDS and not complete:
        return None
    return "raw"


def inspect_head(read_head, size=None):
    """Read and interpret the start of an image with ``read_head(count) -> bytes``.

    Returns a dict: ``compression``, ``format_detected``, ``virtual_size`` (qcow2: from its header; raw/iso
    uncompressed: ``size``), and ``notes`` (list of str)."""
    notes = []
    head = read_head(HEAD_BYTES)
    kind = compression_from_head(head)
    plain = head
    if kind is not None:
        plain = decompress_head(head, kind)
        count = HEAD_BYTES
        while plain is not None and len(plain) < 32 and len(head) == count and count < MAX_HEAD_BYTES:
            count = min(count * 4, MAX_HEAD_BYTES)
            head = read_head(count)
            plain = decompress_head(head, kind)
        if plain is None:
            notes.append("the %s image header cannot be read here%s" % (
                kind, " (the Python zstandard library is missing)" if kind == "zstd" else ""))
            return {"compression": kind, "format_detected": None, "virtual_size": None, "notes": notes}
    short_file = size is not None and len(head) >= size
    fmt = detect_format(plain, complete=short_file or (kind is not None and len(plain) < WANTED_PLAIN_BYTES))
    if kind is not None and fmt is None:
        fmt = "raw"
    virtual_size = None
    if fmt == "qcow2":
        virtual_size = qcow2_virtual_size(plain)
    elif fmt in ("raw", "iso") and kind is None:
        virtual_size = size
    if fmt == "html":
        notes.append("the server answered with an HTML page, not an image")
    notes.extend(gate_notes(plain, fmt, virtual_size))
    return {"compression": kind, "format_detected": fmt, "virtual_size": virtual_size, "notes": notes}


def gate_notes(plain, fmt, virtual_size):
    """What the download's safety gate would refuse, as far as the head shows it (notes for the operator)."""
    notes = []
    found = _gate.signatures(plain)
    if len(found) > 1:
        notes.append("the image carries the signatures of %s at once: download will refuse it" % " and ".join(found))
    if fmt not in (None, "html") + _gate.ALLOWED_FORMATS:
        notes.append("the image is %s: download will refuse it (qcow2, raw or iso only)" % fmt)
    if fmt == "qcow2" and len(plain) >= 20 and struct.unpack(">Q", plain[8:16])[0]:
        notes.append("the qcow2 image has a backing file: download will refuse it")
    if virtual_size is not None and virtual_size > _gate.DEFAULT_MAX_VIRTUAL_SIZE:
        notes.append("the virtual size is above the default max_virtual_size of download (16 TiB)")
    return notes


# --------------------------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------------------------

def _unreachable(url, error, **extra):
    result = {"reachable": False, "url": redact_url(url), "error": error, "status": None, "size": None,
              "virtual_size": None, "format_detected": None, "final_url": None}
    result.update(extra)
    return result


def format_matches(expected, detected):
    """True/False when both are known. ``raw`` cannot be proven from bytes, so raw matches anything that is not
    a recognised other format."""
    if not expected or not detected:
        return None
    if expected == "raw":
        return detected == "raw"
    return expected == detected


def probe_plain(url, open_plain, image_format=None, read_header=True):
    """Probe one http(s) or nfs URL. Returns the result dict (``reachable`` False with ``error`` on failure)."""
    try:
        source = open_plain(url)  # http(s): _http.HttpSource; nfs: _nfs.NfsSource (status None, size from stat)
        info = source.probe()
    except InvalidInput:
        raise
    except DirectDownloadError as exc:
        return _unreachable(url, exc.msg, status=exc.details.get("status"), retryable=exc.retryable)
    result = {
        "reachable": True,
        "url": redact_url(url),
        "status": info.get("status"),
        "size": info.get("size"),
        "content_type": printable(info.get("content_type")),  # a server's text
        "final_url": redact_url(info.get("final_url") or url),
        "accept_ranges": info.get("accept_ranges"),
        "compression": None,
        "format_detected": None,
        "virtual_size": None,
        "notes": [],
        "error": None,
    }
    if is_metalink_answer(info.get("final_url") or url, info.get("content_type")):
        result["is_metalink"] = True
        return result
    if read_header:
        try:
            result.update(inspect_head(source.read_head, info.get("size")))
        except InvalidInput as exc:
            result["notes"].append(exc.msg)
        except DirectDownloadError as exc:
            # HEAD worked but a ranged GET did not: the image is reachable, its header unknown.
            result["notes"].append("could not read the image header: %s" % exc.msg)
    elif image_format in ("iso", "raw"):
        result["virtual_size"] = info.get("size")
    result["format_matches"] = format_matches(image_format, result["format_detected"])
    return result


def probe_metalink(url, open_plain, image_format=None, read_header=True, metalink_name=None, locations=(),
                   document=None):
    """Fetch and parse the metalink at ``url`` (or use ``document``), then probe its mirrors in order until one
    answers. Sizes come from the mirror that answered. Returns the result dict."""
    from ansible_collections.directdownload.kvm.plugins.module_utils import _metalink  # pylint: disable=import-outside-toplevel
    if not _metalink.HAS_LXML:
        raise InvalidInput("reading a metalink needs the Python lxml library on this host")
    try:
        if document is None:
            metalink_file = _metalink.load_metalink(url, open_plain, name=metalink_name, location_preference=locations)
        else:
            metalink_file = _metalink.parse_metalink(document, name=metalink_name, location_preference=locations)
    except InvalidInput as exc:
        return _unreachable(url, "the metalink document is not usable: %s" % exc.msg, is_metalink=True)
    except DirectDownloadError as exc:
        return _unreachable(url, "cannot fetch the metalink document: %s" % exc.msg, is_metalink=True,
                            status=exc.details.get("status"))
    mirror_errors = []
    summary = metalink_file.as_dict()
    for mirror in metalink_file.mirrors:
        try:
            result = probe_plain(mirror.url, open_plain, image_format, read_header)
        except InvalidInput as exc:
            mirror_errors.append({"url": mirror.redacted, "error": exc.msg})
            continue
        if not result["reachable"]:
            mirror_errors.append({"url": mirror.redacted, "error": result["error"]})
            continue
        if metalink_file.size is not None and result["size"] is not None and result["size"] != metalink_file.size:
            mirror_errors.append({"url": mirror.redacted, "error": "serves %d bytes, the metalink says %d"
                                  % (result["size"], metalink_file.size)})
            continue
        result.update(url=redact_url(url), mirror=mirror.redacted, mirror_errors=mirror_errors, is_metalink=True,
                      metalink=summary)
        if result["size"] is None and metalink_file.size is not None:
            result["notes"].append("the mirror did not announce a size; the metalink says %d bytes"
                                   % metalink_file.size)
        return result
    return _unreachable(url, "no mirror of the metalink answered: %s" % "; ".join(
        "%s: %s" % (e["url"], e["error"]) for e in mirror_errors) if mirror_errors else "the metalink lists no mirror",
        mirror_errors=mirror_errors, is_metalink=True, metalink=summary)


def probe_url(url, open_plain, image_format=None, read_header=True, metalink_name=None, locations=()):
    """Probe ``url`` (http, https, nfs, or a metalink). ``open_plain(url)`` returns a Source for one plain URL
    (``_sources.plain_source_factory``). Raises InvalidInput for a URL that can never work; anything about the
    network is in the result."""
    if is_metalink_url(url):
        return probe_metalink(url, open_plain, image_format, read_header, metalink_name, locations)
    result = probe_plain(url, open_plain, image_format, read_header)
    if result.pop("is_metalink", False):
        # Served as application/metalink+xml under a plain name: read it as a metalink.
        return probe_metalink(url, open_plain, image_format, read_header, metalink_name, locations)
    return result
