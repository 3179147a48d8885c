# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import json

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._settings import (
    BUILTIN_DEFAULTS,
    load_settings,
    option_or_setting,
)


def test_missing_file_gives_builtin_defaults(tmp_path):
    assert load_settings(str(tmp_path / "none.json")) == BUILTIN_DEFAULTS


def test_file_overrides_defaults_and_options_override_file(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"read_timeout": 5, "trust_dir": "/x"}))
    settings = load_settings(str(path))
    assert settings["read_timeout"] == 5 and settings["connect_timeout"] == BUILTIN_DEFAULTS["connect_timeout"]
    assert option_or_setting({"read_timeout": None}, "read_timeout", settings) == 5
    assert option_or_setting({"read_timeout": 9}, "read_timeout", settings) == 9


def test_unreadable_file_is_an_error(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match="cannot read the agent settings file"):
        load_settings(str(path))
