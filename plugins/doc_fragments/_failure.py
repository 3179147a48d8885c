# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this doc fragment is PRIVATE to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!
"""The shape of every module's failure, as ``_module.failures`` builds it (RETURN cannot come from a fragment, so
the keys are described here once, as a note, and in full in the RETURN of ``download``)."""

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options: {}
notes:
  - "On failure the module returns C(msg), the details of the error (for example C(rule), C(status), C(reason),
    C(expected)/C(actual), C(path)) and its retry scope: C(retry_here), whether running the task again on this host,
    later, may succeed (a timeout, an HTTP 503), and C(retry_elsewhere), whether another host or mirror may succeed
    (an untrusted certificate: another host may trust the CA; never for a bad option, a checksum mismatch or a refused
    image). Both are booleans set by the class of the error, the same in every module of the collection; they
    replace C(retryable)."
"""
