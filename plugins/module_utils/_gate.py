# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The safety gate: every downloaded image is untrusted until this module says otherwise.

One place, run once per file after the transfer and the extraction, for every source (HTTP, NFS, mirrors):

1. **What the bytes are** (:func:`signatures`): the qcow2 magic first, then every foreign format qemu would probe
   (VMDK including its text descriptors, VHD, VHDX, VDI, QED, LUKS, Parallels, Bochs, cloop, qcow v1), then the ISO
   9660 signature. A file with two signatures (a qcow2 that is also an ISO) is refused: every prober would read it
   its own way. No signature: raw. The format is established from the bytes, never from the name or the
   ``format`` option; a declared format that differs is refused, naming what was found (a "raw" image that is a
   qcow2 with a backing file would be probed as that qcow2 by the next ``qemu-img convert``).
2. **qcow2 read by us first** (:func:`qcow2_header`): version, backing file (any protocol), external data file,
   unknown incompatible features, the corrupt bit, encryption, virtual size. qemu-img only sees a qcow2 that
   names no other file.
3. **qemu-img never probes** (:func:`run_qemu_img`): ``-f qcow2`` always, ``--output=json``, an absolute path,
   its own session and process group, limits on CPU time, address space, file size (0: ``info`` writes nothing)
   and core dumps, a wall-clock timeout, ``PR_SET_PDEATHSIG`` so that it dies with the module, and its group
   killed on any exception. Raw and ISO images never reach qemu-img at all (their virtual size is their size).
4. **Policy** (:func:`check_policy`): only qcow2, raw and ISO; the size caps of :class:`Limits`.

Every refusal is an ``ImageRejected`` (not retryable: another host would fetch the same bytes) whose message
names the rule and whose ``details["rule"]`` is a stable key; text from the image is escaped by ``_errors``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import struct
import subprocess
from collections import namedtuple
from typing import Any, Optional, Sequence

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    DirectDownloadError,
    ImageRejected,
    InvalidInput,
    human_size,
    printable,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._formats import (
    FORMATS,
    ISO_MAGIC,
    ISO_OFFSETS,
    QCOW2_MAGIC,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

ALLOWED_FORMATS = FORMATS  # the one table, _formats.py

# Defaults of the caps (module options max_size, max_virtual_size, max_expansion, allow_encrypted).
DEFAULT_MAX_VIRTUAL_SIZE = 16 * TiB
DEFAULT_MAX_SIZE = 1 * TiB
DEFAULT_MAX_EXPANSION = 100
# Extraction may always produce this much, whatever the ratio: tiny archives of small sparse disks are honest.
EXPANSION_FLOOR = 64 * MiB

# qemu-img's leash. `qemu-img info` on a qcow2 answers in milliseconds with < 10 MiB resident; 512 MiB of address
# space was measured enough for qemu-img 7.2 (256 MiB is not: its thread pool fails to start), 1 GiB leaves room
# for the largest tables a qcow2 may have (L1 32 MiB, refcount table 8 MiB, snapshot table 64 MiB).
QEMU_IMG_TIMEOUT = 120
QEMU_IMG_CPU_SECONDS = 60
QEMU_IMG_ADDRESS_SPACE = 1 * GiB
QEMU_IMG_OPEN_FILES = 64

# How much of the file the sniff reads: qemu probes the first 2048 bytes (BLOCK_PROBE_BUF_SIZE), the ISO 9660
# volume descriptors sit at sectors 16-18 ("CD001" at byte 1 of each).
HEAD_BYTES = max(ISO_OFFSETS) + 5

_QCOW2_EXT_DATA_FILE = 0x44415441
# Incompatible feature bits qemu knows (dirty, corrupt, external data file, compression type, extended L2).
_QCOW2_INCOMPAT_DIRTY = 1 << 0
_QCOW2_INCOMPAT_CORRUPT = 1 << 1
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_QCOW2_INCOMPAT_KNOWN = (1 << 5) - 1
_QCOW2_CRYPT_METHODS = {0: None, 1: "aes", 2: "luks"}

_CLOOP_MAGIC = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
_VMDK_VERSIONS = tuple(b"version=%d%s" % (number, end) for number in (1, 2, 3) for end in (b"\n", b"\r\n"))


class Limits:
    """The caps of the gate, one object carried from the module options to the extraction and the policy.

    ``max_size``: bytes, for the file as downloaded and for what extraction may produce (apparent size).
    ``max_virtual_size``: bytes, the largest virtual disk accepted. ``max_expansion``: extraction may produce at
    most this many times the compressed size (never less than EXPANSION_FLOOR). ``allow_encrypted``: accept an
    encrypted qcow2 (the host must then have its key).
    """

    def __init__(self, max_size=None, max_virtual_size=None, max_expansion=None, allow_encrypted=False):
        self.allow_encrypted = bool(allow_encrypted)
        for name, value, default, kind in (("max_size", max_size, DEFAULT_MAX_SIZE, int),
                                           ("max_virtual_size", max_virtual_size, DEFAULT_MAX_VIRTUAL_SIZE, int),
                                           ("max_expansion", max_expansion, DEFAULT_MAX_EXPANSION, float)):
            try:
                value = default if value is None else kind(value)
                valid = 0 < value < float("inf")  # NaN fails this too
            except (TypeError, ValueError, OverflowError):
                valid = False
            if not valid:
                raise InvalidInput("%s must be a number greater than 0, got %r" % (name, value))
            setattr(self, name, value)

    def extraction_cap(self, compressed_size: int) -> tuple[int, str]:
        """``(bytes, option)``: the most an extraction of ``compressed_size`` bytes may produce, and the option
        that sets it."""
        by_ratio = max(EXPANSION_FLOOR, int(compressed_size * self.max_expansion))
        if by_ratio < self.max_size:
            return by_ratio, "max_expansion"
        return self.max_size, "max_size"

    def __repr__(self):
        return "Limits(max_size=%d, max_virtual_size=%d, max_expansion=%g, allow_encrypted=%s)" % (
            self.max_size, self.max_virtual_size, self.max_expansion, self.allow_encrypted)


DEFAULT_LIMITS = Limits()


def refuse(rule: str, msg: str, **details: Any) -> ImageRejected:
    """An ImageRejected naming its rule (``details["rule"]``)."""
    return ImageRejected(msg, rule=rule, **details)


class ImageInfo(namedtuple("ImageInfo", "format virtual_size actual_size backing_file data_file raw_json path "
                                        "encrypted problem")):
    """What ``inspect_image`` learnt. ``raw_json`` is qemu-img's answer (None when qemu-img was not asked);
    ``problem`` is ``(rule, message)`` for a qcow2 header that must be refused, found before qemu-img ran."""

    __slots__ = ()

    def __new__(cls, format, virtual_size, actual_size, backing_file=None, data_file=None, raw_json=None,  # pylint: disable=redefined-builtin
                path=None, encrypted=False, problem=None):
        return super().__new__(cls, format, virtual_size, actual_size, backing_file, data_file, raw_json, path,
                               encrypted, problem)


# ---------------------------------------------------------------- what the bytes are

def _vmdk_descriptor(head):
    """qemu's vmdk_probe on text: comment lines (``#``) and blank lines made of spaces, then ``version=1|2|3``.
    Scanned over the whole head, not only qemu's 2048 bytes: wider than qemu is safe, narrower is not."""
    buf = head
    pos, end = 0, len(buf)
    while pos < end:
        char = buf[pos:pos + 1]
        if char == b"#":
            newline = buf.find(b"\n", pos)
            pos = end if newline < 0 else newline + 1
            continue
        if char == b" ":
            while pos < end and buf[pos:pos + 1] == b" ":
                pos += 1
            if buf[pos:pos + 1] == b"\r":
                pos += 1
            if pos >= end or buf[pos:pos + 1] != b"\n":
                return False
            pos += 1
            continue
        return buf.startswith(_VMDK_VERSIONS, pos)
    return False


def signatures(head: bytes) -> list[str]:
    """Every disk-format signature in ``head`` (the first HEAD_BYTES of a file), in the order of precedence:
    ``qcow2``/``qcow``, then the foreign formats qemu probes, then ``iso``. An empty list means raw."""
    found = []
    if head[:4] == QCOW2_MAGIC:
        version = struct.unpack(">I", head[4:8])[0] if len(head) >= 8 else 0
        found.append("qcow" if version == 1 else "qcow2")  # qemu: qcow v1 for version 1, qcow2 for >= 2
    if head[:4] in (b"KDMV", b"COWD") or _vmdk_descriptor(head):
        found.append("vmdk")
    if head[:8] == b"conectix":
        found.append("vpc")
    if head[:8] == b"vhdxfile":
        found.append("vhdx")
    if head[64:68] == b"\x7f\x10\xda\xbe":
        found.append("vdi")
    if head[:4] == b"QED\x00":
        found.append("qed")
    if head[:6] == b"LUKS\xba\xbe":
        found.append("luks")
    if head[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt"):
        found.append("parallels")
    if head[:22] == b"Bochs Virtual HD Image":
        found.append("bochs")
    if head.startswith(_CLOOP_MAGIC):
        found.append("cloop")
    if any(head[offset:offset + len(ISO_MAGIC)] == ISO_MAGIC for offset in ISO_OFFSETS):
        found.append("iso")
    return found


def read_head(path: str, count: int = HEAD_BYTES) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(count)


def established_format(head: bytes, name: str = "the image") -> str:
    """The one format the bytes show (``raw`` when none); ImageRejected when they show two."""
    found = signatures(head)
    if len(found) > 1:
        raise refuse(
            "one_format",
            "%s carries the signatures of %s at once: refused, each reader would see another image "
            "(a polyglot such as a qcow2 that is also an ISO)" % (name, " and ".join(found)),
            signatures=found,
        )
    return found[0] if found else "raw"


# ---------------------------------------------------------------- qcow2, read by us

Qcow2Header = namedtuple("Qcow2Header", "version virtual_size cluster_bits backing_file data_file incompatible "
                                        "crypt_method header_length")


def _name_at(handle, size, offset, length):
    if offset >= size or length > 1023:
        return "(name at byte %d, %d bytes: outside the header)" % (offset, length)
    handle.seek(offset)
    return handle.read(length).decode("utf-8", "replace") or "(empty name)"


def qcow2_header(path: str) -> Qcow2Header:
    """Read a qcow2 header without trusting one field of it: offsets are checked against the file, loops are
    bounded by the first cluster. Raises ImageRejected for a header qemu would not open (truncated, version,
    cluster size)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        header = handle.read(104)
        if len(header) < 72 or header[:4] != QCOW2_MAGIC:
            raise refuse("corrupt", "%s: truncated qcow2 header (%d bytes)" % (path, len(header)))
        version, backing_offset, backing_size, cluster_bits = struct.unpack(">IQII", header[4:24])
        virtual_size, crypt_method = struct.unpack(">QI", header[24:36])
        if version not in (2, 3):
            raise refuse("qcow2_version", "%s: qcow2 version %d is not supported (2 and 3 are)" % (path, version),
                         version=version)
        if not 9 <= cluster_bits <= 21:
            raise refuse("corrupt", "%s: corrupt qcow2 header (cluster_bits %d, qemu accepts 9 to 21)"
                         % (path, cluster_bits))
        cluster_size = 1 << cluster_bits
        incompatible = 0
        header_length = 72
        if version == 3:
            if len(header) < 104:
                raise refuse("corrupt", "%s: truncated qcow2 v3 header" % path)
            incompatible = struct.unpack(">Q", header[72:80])[0]
            header_length = struct.unpack(">I", header[100:104])[0]
            if header_length < 104 or header_length > cluster_size:  # qemu's own two checks
                raise refuse("corrupt", "%s: corrupt qcow2 header (header_length %d)" % (path, header_length))
        backing_file = None
        if backing_offset:
            backing_file = _name_at(handle, size, backing_offset, backing_size)
        data_file = None
        handle.seek(header_length)
        extension_bytes = min(cluster_size, size) - header_length
        extensions = handle.read(extension_bytes) if extension_bytes > 0 else b""
        pos = 0
        while pos + 8 <= len(extensions):  # bounded: every step moves at least 8 bytes
            ext_type, ext_length = struct.unpack(">II", extensions[pos:pos + 8])
            if ext_type == 0:
                break
            if ext_type == _QCOW2_EXT_DATA_FILE:
                data_file = extensions[pos + 8:pos + 8 + min(ext_length, 1023)].decode("utf-8", "replace") \
                    or "(empty name)"
            pos += 8 + ((ext_length + 7) & ~7)
        if incompatible & _QCOW2_INCOMPAT_DATA_FILE and not data_file:
            data_file = "(external data file, name not recorded)"
    return Qcow2Header(version, virtual_size, cluster_bits, backing_file, data_file, incompatible, crypt_method,
                       header_length)


def _qcow2_problem(header, path):
    """``(rule, message)`` for what in a qcow2 header is refused whatever the options, or None."""
    unknown = header.incompatible & ~_QCOW2_INCOMPAT_KNOWN
    if unknown:
        bits = [bit for bit in range(64) if unknown >> bit & 1]
        return ("qcow2_features", "%s: the qcow2 header sets incompatible feature bits this gate does not know (%s):"
                " refused, qemu's handling of them cannot be checked" % (path, ", ".join(map(str, bits))))
    if header.incompatible & _QCOW2_INCOMPAT_CORRUPT:
        return ("corrupt", "%s: the qcow2 header is marked corrupt: refused" % path)
    if header.crypt_method not in _QCOW2_CRYPT_METHODS:
        return ("corrupt", "%s: unknown qcow2 encryption method %d" % (path, header.crypt_method))
    return None


# ---------------------------------------------------------------- qemu-img on a leash

def _prctl_function():
    try:
        import ctypes  # pylint: disable=import-outside-toplevel
        function = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    return function


_PRCTL = _prctl_function()
_PR_SET_PDEATHSIG = 1


def _leash(parent_pid):
    """What the child does between fork and exec (``preexec_fn``, after ``setsid``): die with the module (the
    death signal is armed, then the parent is checked, so a parent that died in between is noticed), and limits
    that make a runaway qemu-img end by itself."""
    def setup():
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)
        for limit, value in ((resource.RLIMIT_CPU, QEMU_IMG_CPU_SECONDS),
                             (resource.RLIMIT_AS, QEMU_IMG_ADDRESS_SPACE),
                             (resource.RLIMIT_FSIZE, 0),
                             (resource.RLIMIT_CORE, 0),
                             (resource.RLIMIT_NOFILE, QEMU_IMG_OPEN_FILES)):
            soft, hard = resource.getrlimit(limit)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(limit, (value, value))
    return setup


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_qemu_img(args: Sequence[str], qemu_img: str = "qemu-img",
                 timeout: float = QEMU_IMG_TIMEOUT) -> tuple[int, bytes, bytes]:
    """Run ``qemu-img ARGS`` on a leash (see the module docstring) and return ``(returncode, stdout, stderr)``.

    Raises DirectDownloadError when qemu-img is missing (retryable elsewhere only: another host may have it) or
    does not answer within ``timeout`` seconds (retryable here and elsewhere; the whole process group is killed
    first).
    """
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [qemu_img] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True, start_new_session=True, env=env,
            preexec_fn=_leash(os.getpid()),  # pylint: disable=subprocess-popen-preexec-fn
        )
    except FileNotFoundError:
        raise DirectDownloadError(
            "%s not found: install the package that provides it (qemu-utils on Debian/Ubuntu, qemu-img on "
            "RHEL/Rocky/Alma)" % qemu_img, reason="qemu_img_missing"
        ).retry_scope(False, True) from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise DirectDownloadError("qemu-img %s did not answer within %d s (killed)" % (" ".join(args), timeout),
                                  reason="timeout") from None
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode, stdout, stderr


def qemu_img_info(path: str, fmt: str, qemu_img: str = "qemu-img", timeout: float = QEMU_IMG_TIMEOUT) -> dict[str, Any]:
    """``qemu-img info --output=json -f FMT /absolute/path`` as a dict. ImageRejected when qemu-img cannot read
    the image (another host would get the same bytes)."""
    path = os.path.abspath(path)  # "json:{...}" or "nbd:..." never reach qemu-img's filename parser
    rc, stdout, stderr = run_qemu_img(["info", "--output=json", "--force-share", "-f", fmt, path], qemu_img, timeout)
    if rc != 0:
        text = stderr.decode("utf-8", "replace").strip()
        if rc < 0:
            text = "killed by signal %d%s" % (-rc, " (its CPU limit)" if -rc == signal.SIGXCPU else "")
        raise refuse("qemu_img", "qemu-img could not read %s: %s" % (path, text or "exit code %d" % rc),
                     rc=rc, stderr=printable(text, 4000))
    try:
        data = json.loads(stdout.decode("utf-8", "replace"))
    except ValueError as exc:
        raise refuse("qemu_img", "qemu-img info gave output that is not JSON: %s" % exc) from exc
    if not isinstance(data, dict):
        raise refuse("qemu_img", "qemu-img info gave JSON that is not an object")
    return data


# ---------------------------------------------------------------- inspection and policy

def _allocated(st):
    return st.st_blocks * 512


def inspect_image(path: str, declared_format: Optional[str] = None, qemu_img: str = "qemu-img",
                  timeout: float = QEMU_IMG_TIMEOUT) -> ImageInfo:
    """What ``path`` is, established from its bytes. qemu-img runs only on a qcow2 whose header names no other
    file and sets nothing refused, always with ``-f qcow2``; raw, ISO and foreign formats never reach it.

    ``declared_format`` is not trusted: it is compared by :func:`check_policy`. Raises ImageRejected for a file
    with two signatures, a qcow2 header qemu would not open, or an image qemu-img cannot read.
    """
    del declared_format  # the bytes decide; check_policy compares
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise refuse("regular_file", "%s is not a regular file" % path)
    fmt = established_format(read_head(path), path)
    if fmt in ("raw", "iso"):
        return ImageInfo(fmt, st.st_size, _allocated(st), path=path)
    if fmt != "qcow2":
        return ImageInfo(fmt, None, _allocated(st), path=path)
    header = qcow2_header(path)
    encrypted = header.crypt_method != 0
    problem = _qcow2_problem(header, path)
    if problem or header.backing_file or header.data_file:
        return ImageInfo("qcow2", header.virtual_size, _allocated(st), header.backing_file, header.data_file,
                         path=path, encrypted=encrypted, problem=problem)
    data = qemu_img_info(path, "qcow2", qemu_img, timeout)
    info = info_from_json(path, data, _allocated(st))
    disagreement = _disagreement(info, header)
    if disagreement:
        return info._replace(problem=("qemu_img", "%s: qemu-img and the qcow2 header disagree (%s): refused"
                                      % (path, disagreement)))
    return info


def _disagreement(info, header):
    if info.format != "qcow2":
        return "qemu-img says %s" % info.format
    if info.virtual_size != header.virtual_size:
        return "virtual size %s vs %s" % (info.virtual_size, header.virtual_size)
    if info.encrypted != (header.crypt_method != 0):
        return "encryption"
    corrupt = ((info.raw_json or {}).get("format-specific") or {}).get("data", {}).get("corrupt")
    if corrupt:
        return "qemu-img marks it corrupt"
    return None


def info_from_json(path: str, data: dict[str, Any], allocated: Optional[int]) -> ImageInfo:
    specific = (data.get("format-specific") or {}).get("data") or {}
    return ImageInfo(
        format=data.get("format"),
        virtual_size=data.get("virtual-size"),
        actual_size=data.get("actual-size", allocated),
        backing_file=data.get("full-backing-filename") or data.get("backing-filename"),
        data_file=specific.get("data-file"),
        raw_json=data,
        path=path,
        encrypted=bool(data.get("encrypted")),
    )


_WHAT = {
    "qcow": "a qcow (version 1) image, which can name a backing file",
    "vmdk": "a VMDK image (its descriptor can name any host file as an extent)",
    "vpc": "a VHD image", "vhdx": "a VHDX image", "vdi": "a VDI image",
    "qed": "a QED image, which can name a backing file",
    "luks": "a LUKS-encrypted image", "parallels": "a Parallels image", "bochs": "a Bochs image",
    "cloop": "a cloop image", "qcow2": "a qcow2 image", "iso": "an ISO 9660 image", "raw": "a raw image",
}


def check_policy(info: ImageInfo, expected_format: Optional[str] = None, limits: Optional[Limits] = None) -> None:
    """Refuse what must not reach a pool. Raises ImageRejected naming the rule; returns None when acceptable."""
    limits = limits or DEFAULT_LIMITS
    name = info.path or "the image"
    for rule, named, what, why in (
            ("backing_file", info.backing_file, "a backing file",
             "a template must be self-contained (a backing file can point anywhere on the host; CVE-2024-50386)"),
            ("data_file", info.data_file, "an external data file", "it could expose any file on the host (CVE-2024-50386)")):
        if named:
            raise refuse(rule, "%s is a %s image with %s (%s): refused, %s" % (name, info.format, what, named, why),
                         format=info.format, **{rule: named})
    if info.problem:
        raise refuse(info.problem[0], info.problem[1], format=info.format)
    expected = (expected_format or "").strip().lower() or None
    if expected and expected != info.format:
        raise refuse(
            "format_mismatch",
            "format mismatch: %s was expected to be %s but it is %s (%s): refused" % (
                name, expected, info.format, _WHAT.get(info.format, info.format)),
            expected_format=expected, format=info.format,
        )
    if info.format not in ALLOWED_FORMATS:
        raise refuse(
            "format",
            "%s is %s: direct download to KVM takes qcow2, raw or iso only "
            "(convert it first, e.g. qemu-img convert -O qcow2)" % (name, _WHAT.get(info.format, info.format)),
            format=info.format,
        )
    if info.encrypted and not limits.allow_encrypted:
        raise refuse("encrypted", "%s is an encrypted %s image: refused (set allow_encrypted when the hosts have its "
                     "key)" % (name, info.format), format=info.format)
    if info.virtual_size is not None and info.virtual_size > limits.max_virtual_size:
        raise refuse(
            "max_virtual_size",
            "%s has a virtual size of %s, above max_virtual_size (%s): refused (raise max_virtual_size to accept it)"
            % (name, human_size(info.virtual_size), human_size(limits.max_virtual_size)),
            virtual_size=info.virtual_size, max_virtual_size=limits.max_virtual_size,
        )


def check_size(path: str, limits: Optional[Limits] = None) -> None:
    """Refuse a file larger than ``max_size`` (the downloaded or the extracted file)."""
    limits = limits or DEFAULT_LIMITS
    size = os.path.getsize(path)
    if size > limits.max_size:
        raise refuse("max_size", "%s is %s, above max_size (%s): refused (raise max_size to accept it)"
                     % (path, human_size(size), human_size(limits.max_size)), size=size, max_size=limits.max_size)


def check_announced_size(size: Optional[int], url: str, limits: Optional[Limits] = None) -> None:
    """Refuse, before any byte is written, a download whose announced size (Content-Length, a metalink's size) is
    above ``max_size``: the same rule as :func:`check_size` on the file, without fetching it first."""
    limits = limits or DEFAULT_LIMITS
    if size is not None and size > limits.max_size:
        raise refuse("max_size", "%s announces %s, above max_size (%s): refused before the transfer (raise max_size "
                     "to accept it)" % (url, human_size(size), human_size(limits.max_size)),
                     size=size, max_size=limits.max_size)


def admit(path: str, declared_format: Optional[str] = None, limits: Optional[Limits] = None,
          qemu_img: str = "qemu-img", timeout: float = QEMU_IMG_TIMEOUT) -> ImageInfo:
    """The whole gate on one file: size cap, inspection, policy. Returns the ImageInfo of an admitted image."""
    check_size(path, limits)
    try:
        info = inspect_image(path, declared_format, qemu_img=qemu_img, timeout=timeout)
    except (struct.error, ValueError) as exc:
        raise refuse("corrupt", "%s: corrupt image header (%s)" % (path, exc)) from exc
    check_policy(info, declared_format, limits)
    return info
