# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection's version has one source, galaxy.yml; the copy module_utils carry to managed hosts (where no
galaxy.yml exists: the User-Agent) must agree with it."""

from __future__ import annotations

from pathlib import Path

import yaml

from ansible_collections.directdownload.kvm.plugins.module_utils import _http

GALAXY = Path(__file__).resolve().parents[2] / "galaxy.yml"


def test_collection_version_is_galaxy_yml_version():
    version = yaml.safe_load(GALAXY.read_text(encoding="utf-8"))["version"]
    assert _http.COLLECTION_VERSION == version, (
        "plugins/module_utils/_http.py COLLECTION_VERSION is %r but galaxy.yml says %r: set COLLECTION_VERSION = %r"
        % (_http.COLLECTION_VERSION, version, version))
    assert _http.DEFAULT_USER_AGENT == "directdownload.kvm/" + version
