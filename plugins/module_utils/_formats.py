# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The image formats the collection installs, and the one place where a ``format`` value is read.

CloudStack writes formats in upper case (``QCOW2``, ``RAW``, ``ISO``); Ansible users write ``qcow2``. Every module,
role and playbook accepts both: a module passes its ``format`` option through :func:`canonical_format` (the
argument specs take ``format`` without ``choices``, because Ansible compares choices case-sensitively) and the
engine, the registry and the safety gate only ever see the lower-case name.
"""

from __future__ import annotations

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput

# The formats that direct download to KVM installs (the safety gate refuses every other one).
FORMATS = ("qcow2", "raw", "iso")


def canonical_format(value: str | None, name: str = "format") -> str | None:
    """``QCOW2``, `` Qcow2 ``, ``qcow2`` -> ``qcow2``; None or an empty string -> None (no format given).

    Raises InvalidInput for a value that is not one of :data:`FORMATS` in any case."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("%s must be one of %s, got %r" % (name, ", ".join(FORMATS), value))
    text = value.strip().lower()
    if not text:
        return None
    if text not in FORMATS:
        raise InvalidInput("%s must be one of %s (in any case), got %r" % (name, ", ".join(FORMATS), value))
    return text


__all__ = ["FORMATS", "canonical_format"]
