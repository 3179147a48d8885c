# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this doc fragment is PRIVATE to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!
"""The registry option of every registry module (template, template_copy, template_info, certificate_registry).

With the ``action_group`` attribute of the ``registry`` group. Its argument spec is
``_registry.registry_argument_spec()``; the default path is ``_settings.DEFAULT_REGISTRY_PATH``.
Keep the three in step.
"""

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options:
  registry:
    description:
      - Path of the registry state file on the host that runs the module (the controller, unless the task is
        delegated to a registry host). C(~) is expanded for the user running the module.
      - Its directory is created with mode 0700 and the file is written with mode 0600, under a lock, atomically.
    type: path
    default: ~/.local/state/directdownload/registry.json
attributes:
  action_group:
    description:
      - Use C(group/directdownload.kvm.registry) in C(module_defaults) to set defaults for this module and the other
        modules that read or write the registry (for example O(registry)).
    support: full
    membership:
      - directdownload.kvm.registry
"""
