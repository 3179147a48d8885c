# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Packaging a user can trust: the tarball ``ansible-galaxy collection build`` makes holds what runs (and the LICENSE
and CHANGELOG) but no development files, installs with ``ansible-galaxy collection install --no-deps`` and runs a
module from the installed copy; bindep.txt gives an execution environment no KVM-host package while
``make setup`` still installs everything the tests need."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile

import yaml

from ansible_collections.directdownload.kvm.tests.integration.conftest import COLLECTIONS_PATH, REPO_ROOT, VENV_PYTHON, _venv_tool
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

DEV_ONLY = (".ci/", "scripts/", "benchmarks/", ".ansible-lint", ".yamllint", ".gitignore", "Makefile",
            "requirements-dev.txt", "tests/output/", ".build/", ".venv/", "extensions/molecule/")


def clean_env(**extra):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("ANSIBLE_") and key not in ("PYTHONPATH",)}
    env.update(HOME=env.get("HOME", "/root"), ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="False")
    env.update(extra)
    return env


def test_tarball_has_what_runs_and_no_development_files_then_installs_and_runs(tmp_path):
    version = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text())["version"]
    build = subprocess.run([_venv_tool("ansible-galaxy"), "collection", "build", str(REPO_ROOT), "--output-path",
                            str(tmp_path / "dist")], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                           check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    tarball = tmp_path / "dist" / ("directdownload-kvm-%s.tar.gz" % version)
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
        manifest = json.load(archive.extractfile("MANIFEST.json"))
    for wanted in ("LICENSE", "CHANGELOG.md", "changelogs/changelog.yaml", "meta/runtime.yml", "bindep.txt",
                   "requirements.txt", "meta/execution-environment.yml", "plugins/modules/download.py",
                   "roles/deploy/tasks/main.yml", "playbooks/deploy_template.yml"):
        assert wanted in names, wanted
    leaked = [name for name in names if any(name == d.rstrip("/") or name.startswith(d) for d in DEV_ONLY)]
    assert not leaked, leaked
    info = manifest["collection_info"]
    assert info["license"] == ["GPL-3.0-or-later"]
    urls = [info.get(key) for key in ("repository", "documentation", "homepage", "issues")]
    assert not any(url and "example" in url for url in urls), urls
    with open(REPO_ROOT / "LICENSE", encoding="utf-8") as handle:
        assert "GNU GENERAL PUBLIC LICENSE" in handle.read(200)

    # Install from the tarball only; the dependency collections come from their own directory (no Galaxy).
    installed = tmp_path / "installed"
    install = subprocess.run([_venv_tool("ansible-galaxy"), "collection", "install", "--no-deps", "-p", str(installed),
                              str(tarball)], cwd=tmp_path, env=clean_env(ANSIBLE_COLLECTIONS_PATH=str(installed)),
                             capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    copy = installed / "ansible_collections" / "directdownload" / "kvm"
    assert (copy / "plugins" / "modules" / "url_check.py").is_file() and not (copy / "scripts").exists()
    deps = tmp_path / "deps" / "ansible_collections"
    deps.mkdir(parents=True)
    for namespace in (COLLECTIONS_PATH / "ansible_collections").iterdir():
        if namespace.name != "directdownload":
            (deps / namespace.name).symlink_to(namespace)
    env = clean_env(ANSIBLE_COLLECTIONS_PATH="%s:%s" % (installed, deps.parent), ANSIBLE_STDOUT_CALLBACK="json",
                    ANSIBLE_LOAD_CALLBACK_PLUGINS="1")

    doc = subprocess.run([_venv_tool("ansible-doc"), "--json", "directdownload.kvm.url_check"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, check=False)
    assert doc.returncode == 0, doc.stderr
    assert json.loads(doc.stdout)["directdownload.kvm.url_check"]["doc"]["filename"].startswith(str(copy))

    www = tmp_path / "www"
    www.mkdir()
    images.qcow2(str(www / "disk.qcow2"), size=16 * 1024 * 1024, writes=[(0, 65536, 0x11)])
    with ImageServer(www) as server:
        run = subprocess.run([_venv_tool("ansible"), "localhost", "-i", "localhost,", "-c", "local",
                              "-e", "ansible_python_interpreter=%s" % VENV_PYTHON, "-m", "directdownload.kvm.url_check",
                              "-a", "url=%s format=qcow2" % server.url("disk.qcow2")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert result["reachable"] is True and result["format_detected"] == "qcow2" and result["format_matches"] is True
    assert result["virtual_size"] == 16 * 1024 * 1024


def bindep_lines():
    """(name, platforms, profiles) of each bindep.txt line."""
    lines = []
    for raw in (REPO_ROOT / "bindep.txt").read_text().splitlines():
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        name, _sep, rest = text.partition(" ")
        words = rest.strip().strip("[]").split()
        lines.append((name, [w for w in words if w.startswith("platform:")],
                      [w for w in words if not w.startswith("platform:")]))
    return lines


def selected(platform, profiles):
    """bindep's rule: a line applies to the platform (or names none) and has no profile or a requested one."""
    return sorted(name for name, platforms, line_profiles in bindep_lines()
                  if (not platforms or platform in platforms)
                  and (not line_profiles or any(p in profiles for p in line_profiles)))


def setup_selection(profiles=None):
    """What scripts/setup.sh's dpkg_packages_from_bindep selects, run by bash itself."""
    script = ('source <(sed -n "/^BINDEP_PROFILES=/,/^install_system_packages/p" scripts/setup.sh | head -n -1) '
              "&& dpkg_packages_from_bindep")
    env = dict(os.environ)
    env.pop("BINDEP_PROFILES", None)
    if profiles is not None:
        env["BINDEP_PROFILES"] = profiles
    out = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
    return sorted(out.stdout.split())


def test_execution_environment_gets_no_kvm_host_package():
    """ansible-builder installs bindep's default profile: the lines without a profile."""
    host_only = ("java", "jre", "jdk", "qemu", "libvirt", "nfs", "libnfs")
    for platform in ("platform:dpkg", "platform:rpm"):
        ee = selected(platform, ["default"])
        assert ee == ["ca-certificates"], (platform, ee)
        assert not [name for name in ee if any(word in name for word in host_only)]
    kvm_rpm = selected("platform:rpm", ["kvm"])
    assert {"qemu-img", "libvirt-client", "java-17-openjdk-headless", "libnfs-utils"} <= set(kvm_rpm)


def test_setup_installs_every_package_the_tests_need():
    """make setup (default profiles) installs every dpkg line, as before the profiles; demo gets only its few."""
    every_dpkg_line = sorted(name for name, platforms, _profiles in bindep_lines()
                             if not platforms or "platform:dpkg" in platforms)
    assert setup_selection() == every_dpkg_line
    assert setup_selection() == selected("platform:dpkg", ["kvm", "test"])
    assert {"qemu-utils", "openjdk-17-jre-headless", "libvirt-daemon", "nfs-ganesha", "aria2"} <= set(setup_selection())
    assert setup_selection("demo") == ["ca-certificates", "python3-venv", "qemu-utils"]
    assert setup_selection(" ") == ["ca-certificates"]  # no profile: what an EE would get
