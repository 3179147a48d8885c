# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this doc fragment is PRIVATE to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!
"""Attribute descriptions shared by every module of the collection, and the note on the shape of every module's
failure (``_module.failures``; RETURN cannot come from a fragment, so ``download`` lists the keys in its RETURN).

A module extends ``directdownload.kvm._attributes`` (the author, the attribute descriptions, and ``support: full``
for check mode, diff mode and idempotency) and the fragment of its family (``_registry``, ``_keystore``,
``_transport``), which carries the family's options and its ``action_group``. The module's own ``attributes:``
block then holds only what differs: the ``details`` of each attribute, and a ``support`` other than full.
Ansible merges a fragment's attributes key by key; the module's own keys win, then the earlier fragment's, so
``INFO_MODULE`` (the answers of the read-only modules) is listed before the standard fragment.
"""

from __future__ import annotations


class ModuleDocFragment:

    # Standard fragment: the maintainers, the descriptions, and the support every module has unless it says
    # otherwise (in its own attributes, or with a variant listed before this fragment). Every module uses it.
    DOCUMENTATION = r"""
author:
  - directdownload.kvm maintainers (@directdownload)
options: {}
attributes:
  check_mode:
    description:
      - Can run in C(check_mode) and reports whether it would change something, without changing the target.
    support: full
  diff_mode:
    description:
      - Returns details on what has changed (or would change in C(check_mode)) when run in diff mode.
    support: full
  idempotent:
    description:
      - When run twice in a row outside check mode with the same arguments, the second run reports no change.
      - This assumes that what the module manages or queries has not changed in a relevant way in between.
    support: full
notes:
  - "On failure the module returns C(msg), the details of the error (for example C(rule), C(status), C(reason),
    C(expected)/C(actual), C(path)) and its retry scope: C(retry_here), whether running the task again on this host,
    later, may succeed (a timeout, an HTTP 503), and C(retry_elsewhere), whether another host or mirror may succeed
    (an untrusted certificate: another host may trust the CA; never for a bad option, a checksum mismatch or a refused
    image). Both are booleans set by the class of the error, the same in every module of the collection; they
    replace C(retryable)."
"""

    # For modules that only read state. List it first, before the standard fragment: the first fragment that sets
    # a key of an attribute wins.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
  idempotent:
    support: full
    details:
      - This action does not modify state.
"""

    # For modules that have an action plugin of the same name (controller-side part).
    FLOW = r"""
options: {}
attributes:
  action:
    description: Has a corresponding action plugin, so part of the work runs on the controller.
  async:
    description: Supports being used with the C(async) keyword.
"""
