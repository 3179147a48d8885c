# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this doc fragment is PRIVATE to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!
"""Attribute descriptions shared by every module of the collection, and the note on the shape of every module's
failure (``_module.failures``; RETURN cannot come from a fragment, so ``download`` lists the keys in its RETURN).

A module extends ``directdownload.kvm._attributes`` and then states, in its own ``attributes:`` block, the
``support`` (full, partial, none, N/A) and ``details`` of each attribute. The variants below fill in the
common answers so that read-only modules do not repeat them.
"""

from __future__ import annotations


class ModuleDocFragment:

    # Standard fragment: descriptions only. Every module uses it.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description:
      - Can run in C(check_mode) and reports whether it would change something, without changing the target.
  diff_mode:
    description:
      - Returns details on what has changed (or would change in C(check_mode)) when run in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode with the same arguments, the second run reports no change.
      - This assumes that what the module manages or queries has not changed in a relevant way in between.
notes:
  - "On failure the module returns C(msg), the details of the error (for example C(rule), C(status), C(reason),
    C(expected)/C(actual), C(path)) and its retry scope: C(retry_here), whether running the task again on this host,
    later, may succeed (a timeout, an HTTP 503), and C(retry_elsewhere), whether another host or mirror may succeed
    (an untrusted certificate: another host may trust the CA; never for a bad option, a checksum mismatch or a refused
    image). Both are booleans set by the class of the error, the same in every module of the collection; they
    replace C(retryable)."
"""

    # For modules that only read state. Use together with the standard fragment.
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
"""

    # For modules that only read state. Use together with the standard fragment.
    IDEMPOTENT_NOT_MODIFY_STATE = r"""
options: {}
attributes:
  idempotent:
    support: full
    details:
      - This action does not modify state.
"""

    # For modules listed in the C(directdownload) action group of meta/runtime.yml.
    # module_defaults groups (meta/runtime.yml action_groups): the members of a group share the options a user
    # would set once for all of them.
    ACTION_GROUP_REGISTRY = r"""
options: {}
attributes:
  action_group:
    description:
      - Use C(group/directdownload.kvm.registry) in C(module_defaults) to set defaults for this module and the other
        modules that read or write the registry (for example O(registry)).
    support: full
    membership:
      - directdownload.kvm.registry
"""

    ACTION_GROUP_TRANSFER = r"""
options: {}
attributes:
  action_group:
    description:
      - Use C(group/directdownload.kvm.transfer) in C(module_defaults) to set defaults for this module and the other
        module that reaches image URLs (the transport options, for example O(headers), O(ca_path) or O(proxy)).
    support: full
    membership:
      - directdownload.kvm.transfer
"""

    ACTION_GROUP_CERTIFICATES = r"""
options: {}
attributes:
  action_group:
    description:
      - Use C(group/directdownload.kvm.certificates) in C(module_defaults) to set defaults for this module and the
        other module that reads the KVM host's keystore and trust directory (for example O(keystore) or
        O(trust_dir)).
    support: full
    membership:
      - directdownload.kvm.certificates
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
