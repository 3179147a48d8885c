# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""libvirt storage pools: resolve a pool name to its directory, refresh it after an install.

The libvirt Python bindings are used when present; otherwise ``virsh``, the field's command-line tool.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput

try:
    import libvirt  # pylint: disable=import-error
    HAS_LIBVIRT = True
except ImportError:
    libvirt = None
    HAS_LIBVIRT = False

DEFAULT_URI = "qemu:///system"


def _virsh(uri, *args):
    virsh = shutil.which("virsh")
    if virsh is None:
        raise InvalidInput("neither the libvirt Python bindings nor virsh are installed: install python3-libvirt "
                           "(or libvirt-clients), or give pool_path instead of pool")
    proc = subprocess.run([virsh, "-c", uri] + list(args), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise InvalidInput("virsh %s failed: %s" % (" ".join(args), (proc.stderr or proc.stdout).strip()))
    return proc.stdout


def _target_from_xml(name, xml):
    root = ET.fromstring(xml)
    pool_type = root.get("type")
    path = root.findtext("./target/path")
    if pool_type not in ("dir", "fs", "netfs") or not path:
        raise InvalidInput("libvirt pool %r is of type %r: only directory-backed pools (dir, fs, netfs) can receive "
                           "direct downloads" % (name, pool_type))
    return path


def pool_target_path(name: str, uri: str = DEFAULT_URI) -> str:
    """The directory of the active libvirt pool ``name``."""
    if HAS_LIBVIRT:
        try:
            conn = libvirt.open(uri)
            try:
                pool = conn.storagePoolLookupByName(name)
                if not pool.isActive():
                    raise InvalidInput("libvirt pool %r is not active: start it (virsh pool-start %s)" % (name, name))
                return _target_from_xml(name, pool.XMLDesc(0))
            finally:
                conn.close()
        except libvirt.libvirtError as exc:
            raise InvalidInput("cannot resolve libvirt pool %r on %s: %s" % (name, uri, exc)) from exc
    info = _virsh(uri, "pool-info", name)
    if "running" not in info:
        raise InvalidInput("libvirt pool %r is not active: start it (virsh pool-start %s)" % (name, name))
    return _target_from_xml(name, _virsh(uri, "pool-dumpxml", name))


def refresh_pool(name: str, uri: str = DEFAULT_URI) -> None:
    """Make libvirt see the newly installed volume at once (``virsh vol-list`` shows it)."""
    if HAS_LIBVIRT:
        try:
            conn = libvirt.open(uri)
            try:
                conn.storagePoolLookupByName(name).refresh(0)
            finally:
                conn.close()
            return
        except libvirt.libvirtError as exc:
            raise InvalidInput("cannot refresh libvirt pool %r on %s: %s" % (name, uri, exc)) from exc
    _virsh(uri, "pool-refresh", name)
