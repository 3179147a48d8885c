# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_errors: the retry scope of each error class (retry_here / retry_elsewhere) and the deprecated alias."""

from __future__ import annotations

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _errors
from ansible_collections.directdownload.kvm.plugins.module_utils._certs import KeystoreError
from ansible_collections.directdownload.kvm.plugins.module_utils._registry import RegistryError


@pytest.mark.parametrize("error, here, elsewhere", [
    (_errors.DirectDownloadError("x"), True, True),
    (_errors.SourceError("connection refused"), True, True),
    (_errors.TLSVerificationError("certificate verify failed"), False, True),
    (_errors.InvalidInput("bad option"), False, False),
    (_errors.ChecksumMismatch("mismatch", "{MD5}a", "{MD5}b"), False, False),
    (_errors.ImageRejected("backing file"), False, False),
    (RegistryError("corrupt"), False, False),
    (KeystoreError("keytool failed"), False, False),
])
def test_each_class_sets_its_retry_scope(error, here, elsewhere):
    assert (error.retry_here, error.retry_elsewhere) == (here, elsewhere)


def test_an_instance_narrows_its_scope():
    error = _errors.SourceError("HTTP 404").retry_scope(False, False)
    assert (error.retry_here, error.retry_elsewhere) == (False, False)
    assert error.retry_scope(False, True) is error and (error.retry_here, error.retry_elsewhere) == (False, True)
    assert _errors.SourceError("x").retry_here is True, "an instance's change stays on the instance"
    assert not hasattr(error, "retryable"), "one flag for two questions is gone: retry_here and retry_elsewhere"


def test_messages_and_details_are_escaped():
    error = _errors.DirectDownloadError("line\nforged", name="a\x1bb")
    assert error.msg == "line\\nforged" and error.details["name"] == "a\\x1bb"
