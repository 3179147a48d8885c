# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this doc fragment is PRIVATE to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!
"""The input of the filters that read deployment report rows (``report_table``, ``fanout_files``): the rows of
``_fleet.report_row``, as the deploy role's ``deploy_report`` and ``template_copy``'s ``report`` carry them."""

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
positional: _input
options:
  _input:
    description:
      - The report rows, one per host and pool (C(deploy_report) of the C(directdownload.kvm.deploy) role, or
        RV(directdownload.kvm.template_copy#module:report)).
    type: list
    elements: dict
    required: true
"""
