# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The one error path of the modules: a module_utils error becomes ``fail_json`` here, with the same shape in every
module (the amazon.aws ``fail_json_aws_error`` / community.general ``module_fails_on_exception`` idea)::

    with failures(module, registry=registry.path):   # context: keys every failure of this module carries
        ...one engine call...
        module.exit_json(**result)

A failure result has ``msg``, ``retry_here`` (could this host succeed later?), ``retry_elsewhere`` (could another
host or mirror succeed?), the public details of the error (``rule``, ``expected``, ``status``, ``reason`` ...) and the
context. module_utils raise only ``DirectDownloadError`` and its subclasses (``_errors.py``); an ``OSError`` that
escapes anyway (an I/O error no helper expected) is shaped the same way, retryable here and elsewhere.

Nothing here imports Ansible: ``module`` is whatever has ``fail_json`` (an ``AnsibleModule``), so the shaping is
unit-tested without one.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import DirectDownloadError

# Keys of a failure that the adapter owns: a detail of the same name never overrides them. ``exception`` is
# Ansible's traceback key (an error's ``exception`` detail, the import traceback of a missing library, stays private).
RESERVED_KEYS = ("msg", "failed", "changed", "exception", "retry_here", "retry_elsewhere", "retryable",
                 "invocation", "warnings", "deprecations")


def public_details(exc: DirectDownloadError) -> dict:
    """The details of ``exc`` that a failure result shows (everything but :data:`RESERVED_KEYS`)."""
    return {key: value for key, value in exc.details.items() if key not in RESERVED_KEYS}


def failure(exc: BaseException, **context: Any) -> dict:
    """The keyword arguments of ``fail_json`` for ``exc``: ``context`` (the module's own keys, such as ``url`` or
    ``registry``), overridden by the public details of the error, then ``msg`` and the retry scope."""
    if not isinstance(exc, DirectDownloadError):
        # An I/O error no helper turned into one of ours: worth another try, here or elsewhere.
        exc = DirectDownloadError("I/O error: %s" % exc)
    result = dict(context)
    result.update(public_details(exc))
    result.update(msg=exc.msg, retry_here=bool(exc.retry_here), retry_elsewhere=bool(exc.retry_elsewhere))
    return result


@contextlib.contextmanager
def failures(module: Any, before_fail: Optional[Callable[[dict], None]] = None, **context: Any) -> Iterator[None]:
    """Run the block; a DirectDownloadError (or a stray OSError) in it ends the module with
    ``module.fail_json(**failure(exc, **context))``. ``exit_json``/``fail_json`` inside the block pass through.
    ``before_fail(result)``, when given, sees the failure result first (``download`` shows its Metalink notes)."""
    try:
        yield
    except (DirectDownloadError, OSError) as exc:
        result = failure(exc, **context)
        if before_fail is not None:
            before_fail(result)
        module.fail_json(**result)


__all__ = ["RESERVED_KEYS", "failure", "failures", "public_details"]
