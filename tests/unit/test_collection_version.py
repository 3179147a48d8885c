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


def _release_key(version):
    return tuple(int(part) for part in version.split("."))


def test_galaxy_yml_is_a_release_or_the_next_one_in_development():
    """galaxy.yml carries the version being developed: a release that CHANGELOG.md already describes, or the next
    one (above every release in changelogs/changelog.yaml) while its fragments wait in changelogs/fragments. So a
    tarball built from main never claims the number of a release it is not."""
    version = yaml.safe_load(GALAXY.read_text(encoding="utf-8"))["version"]
    changelogs = GALAXY.parent / "changelogs"
    releases = yaml.safe_load((changelogs / "changelog.yaml").read_text(encoding="utf-8"))["releases"]
    if version in releases:
        assert "## v%s" % version.replace(".", "\\.") in (GALAXY.parent / "CHANGELOG.md").read_text(encoding="utf-8")
    else:
        assert _release_key(version) > max(_release_key(r) for r in releases), (
            "galaxy.yml says %s, below the release %s" % (version, max(releases, key=_release_key)))
        assert list((changelogs / "fragments").glob("*.yml")), (
            "galaxy.yml says %s, which is not released, but no fragment describes it" % version)


def test_version_added_is_a_release_or_the_version_in_development():
    """A new module, plugin or option says in which version it came: a release, or galaxy.yml's version."""
    version = yaml.safe_load(GALAXY.read_text(encoding="utf-8"))["version"]
    releases = yaml.safe_load((GALAXY.parent / "changelogs" / "changelog.yaml").read_text(encoding="utf-8"))["releases"]
    allowed = set(releases) | {version}
    found = {}
    for path in sorted((GALAXY.parent / "plugins").rglob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("version_added:"):
                found.setdefault(line.split(":", 1)[1].strip().strip("'\""), []).append(path.name)
    assert found, "no version_added in plugins/"
    assert set(found) <= allowed, {v: names for v, names in found.items() if v not in allowed}
