#!/usr/bin/env bash
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Idempotent set-up shared by `make demo` and `make test` (Debian 12, as root):
#   1. system packages: the platform:dpkg lines of bindep.txt for the profiles in BINDEP_PROFILES (default "kvm test":
#      everything the tests need) that are not installed yet (apt-get update only then)
#   2. .venv with Python 3.11 and requirements-dev.txt (skipped while the requirement files are unchanged)
#   3. the collection importable from .build/collections: a relative symlink to this checkout, plus
#      community.libvirt, community.general and ansible.posix taken from PyPI's `ansible` wheel (no Galaxy)
# A warm machine runs it in about a second.
#
# `setup.sh --demo` (what `make demo` runs) installs only what the demo needs: qemu-img (qemu-utils) and python3-venv,
# a .venv with ansible-core and requirements.txt, and the collection link; no test tools, no dependency collections
# (the demo uses none). A later full set-up adds the rest.
set -euo pipefail

DEMO_ONLY=0
if [ "${1:-}" = "--demo" ]; then
    DEMO_ONLY=1
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="$REPO/.venv"
BUILD="$REPO/.build"
COLLECTIONS="$BUILD/collections/ansible_collections"
WHEELS="$BUILD/wheels"
# The `ansible` bundle whose collections match ansible-core 2.19.
ANSIBLE_BUNDLE_SPEC="${ANSIBLE_BUNDLE_SPEC:-ansible>=12,<13}"
DEPENDENCY_COLLECTIONS=(community/libvirt community/general ansible/posix)

say() { printf '==> setup: %s\n' "$*"; }

# pip prints "Location ... is ignored" for an extra index of this machine's pip config: harmless noise.
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v 'is ignored' || true; }; return "${PIPESTATUS[0]}"; }

# ---------------------------------------------------------------- 1. system packages
# The bindep profiles to install (bindep.txt: none = execution environment, kvm, test, demo). Lines without a
# profile are always installed.
BINDEP_PROFILES="${BINDEP_PROFILES:-kvm test}"

dpkg_packages_from_bindep() {
    # Lines look like `name [platform:dpkg kvm test]`: take those that apply to dpkg (or name no platform) and
    # that have no profile or one of BINDEP_PROFILES.
    sed -e 's/#.*//' bindep.txt | while read -r name rest; do
        [ -n "$name" ] || continue
        local selectors="${rest#[}" platforms=() profiles=() word wanted
        selectors="${selectors%]}"
        for word in $selectors; do
            case "$word" in
                platform:*) platforms+=("$word") ;;
                *) profiles+=("$word") ;;
            esac
        done
        if [ "${#platforms[@]}" -gt 0 ] && [[ " ${platforms[*]} " != *" platform:dpkg "* ]]; then
            continue
        fi
        if [ "${#profiles[@]}" -gt 0 ]; then
            wanted=0
            for word in "${profiles[@]}"; do
                [[ " $BINDEP_PROFILES " == *" $word "* ]] && wanted=1
            done
            [ "$wanted" -eq 1 ] || continue
        fi
        printf '%s\n' "$name"
    done
}

# What the demo needs of the system (Debian/Ubuntu names): qemu-img, and the venv module for .venv: the [demo]
# profile of bindep.txt, named here because bindep.txt's unprofiled (execution environment) lines are not needed.
DEMO_PACKAGES=(qemu-utils python3-venv)

install_system_packages() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        say "not a dpkg system: install the packages of bindep.txt yourself (bindep -b shows what is missing)"
        return 0
    fi
    local missing=() pkg
    while read -r pkg; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
    done < <(if [ "$DEMO_ONLY" = 1 ]; then printf '%s\n' "${DEMO_PACKAGES[@]}"; else dpkg_packages_from_bindep; fi)
    if [ "${#missing[@]}" -eq 0 ]; then
        if [ "$DEMO_ONLY" = 1 ]; then
            say "system packages: ${DEMO_PACKAGES[*]} installed"
        else
            say "system packages: all of bindep.txt installed (profiles: $BINDEP_PROFILES)"
        fi
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { say "need root (or sudo) to install: ${missing[*]}"; return 1; }
        sudo=(sudo)
    fi
    say "installing system packages: ${missing[*]}"
    # Packages such as nginx, openssh-server and rpcbind would start services on install; the tests start their
    # own on loopback. A temporary policy-rc.d (only if the machine has none) keeps the install quiet.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || rc=$?
    if [ "$rc" -eq 0 ]; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
            >"$BUILD/apt-install.log" 2>&1 || rc=$?
        [ "$rc" -eq 0 ] || tail -n 30 "$BUILD/apt-install.log" >&2
    fi
    [ "$added_policy" -eq 0 ] || "${sudo[@]}" rm -f "$policy"
    return "$rc"
}

# ---------------------------------------------------------------- 2. virtualenv
pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 /usr/bin/python3 python3.11; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    say "no Python 3.11 with the venv module found (Debian 12: apt-get install python3-venv; or set PYTHON=...)" >&2
    return 1
}

make_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        :
    else
        local python
        python="$(pick_python)"
        say "creating .venv with $python ($("$python" --version 2>&1))"
        rm -rf "$VENV"
        "$python" -m venv "$VENV"
        rm -f "$VENV/.requirements.sha256"
    fi
    if [ "$DEMO_ONLY" = 1 ]; then
        make_demo_venv
        return
    fi
    local want have=""
    want="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)"
    [ -f "$VENV/.requirements.sha256" ] && have="$(cat "$VENV/.requirements.sha256")"
    # The stamp alone could hide a pip run that was interrupted: the key imports must work too.
    if [ "$want" = "$have" ] && "$VENV/bin/python" -c 'import ansible, ansible_test, pytest, molecule' 2>/dev/null; then
        say "venv: requirements unchanged ($("$VENV/bin/python" -c 'import ansible; print("ansible-core", ansible.__version__)'))"
        return 0
    fi
    say "installing requirements-dev.txt into .venv"
    quiet_pip install -q --disable-pip-version-check --progress-bar off -r requirements-dev.txt
    printf '%s\n' "$want" > "$VENV/.requirements.sha256"
}

make_demo_venv() {
    # Any ansible-core of the pinned series will do; the full set-up (its own stamp) installs the rest later.
    if "$VENV/bin/python" -c 'import ansible, sys; sys.exit(not ansible.__version__.startswith("2.19."))' 2>/dev/null; then
        say "venv: ansible-core $("$VENV/bin/python" -c 'import ansible; print(ansible.__version__)') present"
        return 0
    fi
    local core
    core="$(grep -E '^ansible-core' requirements-dev.txt)"
    say "installing $core and requirements.txt into .venv (demo only)"
    quiet_pip install -q --disable-pip-version-check --progress-bar off -r requirements.txt "$core"
}

# ---------------------------------------------------------------- 3. collections
link_collection() {
    mkdir -p "$COLLECTIONS/directdownload"
    # Relative, so the checkout can move; four levels up from .build/collections/ansible_collections/directdownload.
    ln -sfn ../../../.. "$COLLECTIONS/directdownload/kvm"
}

newest_bundle_wheel() {
    find "$WHEELS" -maxdepth 1 -name 'ansible-[0-9]*-py3-none-any.whl' -print | sort -V | tail -n 1
}

extract_dependency_collections() {
    local missing=() c
    for c in "${DEPENDENCY_COLLECTIONS[@]}"; do
        [ -f "$COLLECTIONS/$c/MANIFEST.json" ] || missing+=("$c")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "dependency collections present: ${DEPENDENCY_COLLECTIONS[*]}"
        return 0
    fi
    mkdir -p "$WHEELS"
    local wheel
    wheel="$(newest_bundle_wheel)"
    if [ -z "$wheel" ]; then
        say "downloading the '$ANSIBLE_BUNDLE_SPEC' wheel from PyPI (about 55 MB, cached in .build/wheels)"
        quiet_pip download -q --disable-pip-version-check --progress-bar off --no-deps --only-binary=:all: \
            -d "$WHEELS" "$ANSIBLE_BUNDLE_SPEC"
        wheel="$(newest_bundle_wheel)"
        [ -n "$wheel" ] || { say "pip downloaded no ansible wheel into $WHEELS"; return 1; }
    fi
    say "extracting ${missing[*]} from $(basename "$wheel")"
    "$VENV/bin/python" - "$wheel" "$BUILD/collections" "${missing[@]}" <<'PY'
import shutil, sys, zipfile
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
prefixes = tuple(f"ansible_collections/{name}/" for name in names)
for name in names:
    shutil.rmtree(f"{dest}/ansible_collections/{name}", ignore_errors=True)
with zipfile.ZipFile(wheel) as archive:
    members = [m for m in archive.namelist() if m.startswith(prefixes)]
    archive.extractall(dest, members)
PY
}

mkdir -p "$BUILD"
install_system_packages
make_venv
link_collection
if [ "$DEMO_ONLY" = 1 ]; then
    say "ready for the demo: ansible-core $("$VENV/bin/python" -c "import ansible; print(ansible.__version__)") in .venv"
    exit 0
fi
extract_dependency_collections
say "ready: ansible-core $("$VENV/bin/python" -c "import ansible; print(ansible.__version__)") in .venv, collections in .build/collections"
