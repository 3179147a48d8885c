# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_module: the one error path from module_utils errors to fail_json."""

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _module
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import (
    ChecksumMismatch,
    InvalidInput,
    TLSVerificationError,
)


class FakeModule:
    """What the adapter needs of an AnsibleModule: fail_json ends the module."""

    def __init__(self):
        self.failed = None

    def fail_json(self, **result):
        self.failed = result
        raise SystemExit(1)


def test_the_failure_has_msg_the_retry_scope_the_public_details_and_the_context():
    error = ChecksumMismatch("bad bytes", "{MD5}a", "{MD5}b", url="https://m.example/x", exception="traceback",
                             retryable=True, changed=True)
    result = _module.failure(error, url="https://given.example/x", registry="/r.json")
    assert result == {"msg": "bad bytes", "retry_here": False, "retry_elsewhere": False, "expected": "{MD5}a",
                      "actual": "{MD5}b", "url": "https://m.example/x", "registry": "/r.json"}


def test_an_untrusted_certificate_may_be_retried_elsewhere_not_here():
    result = _module.failure(TLSVerificationError("certificate verify failed", reason="tls"))
    assert (result["retry_here"], result["retry_elsewhere"], result["reason"]) == (False, True, "tls")


def test_the_context_manager_fails_the_module_once_and_lets_exits_through():
    module = FakeModule()
    with pytest.raises(SystemExit):
        with _module.failures(module, alias="ca"):
            raise InvalidInput("bad alias", rule="alias")
    assert module.failed == {"msg": "bad alias", "retry_here": False, "retry_elsewhere": False, "rule": "alias",
                             "alias": "ca"}
    with pytest.raises(SystemExit) as exited:
        with _module.failures(module):
            raise SystemExit(0)  # exit_json inside the block
    assert exited.value.code == 0


def test_a_stray_os_error_is_shaped_like_any_other_failure():
    module = FakeModule()
    with pytest.raises(SystemExit):
        with _module.failures(module, url="u"):
            raise PermissionError(13, "Permission denied", "/pool")
    assert module.failed["msg"].startswith("I/O error: ") and "Permission denied" in module.failed["msg"]
    assert (module.failed["retry_here"], module.failed["retry_elsewhere"], module.failed["url"]) == (True, True, "u")


def test_other_exceptions_are_not_hidden():
    with pytest.raises(KeyError):
        with _module.failures(FakeModule()):
            raise KeyError("a bug shows as a traceback")
