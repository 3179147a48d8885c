#!/usr/bin/env bash
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Test runner behind `make test` and the per-stage targets. Run `make setup` (scripts/setup.sh) first.
#   scripts/test.sh [all|sanity|unit|integration|molecule|lint]...
# Every stage runs even when an earlier one failed; the exit code is non-zero when any stage failed.
# Tests are discovered: new test files, molecule scenarios, roles and playbooks need no change here.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2

VENV="$REPO/.venv"
BUILD="$REPO/.build"
COLLECTIONS="$BUILD/collections"
# Several people may run tests in one checkout at once: each run works in its own directory, removed at the end.
RUNS="$BUILD/test-runs"
RUN_DIR="$RUNS/$$"
# ansible-test needs the collection at a real .../ansible_collections/<namespace>/<name> path (a symlinked
# working directory resolves back to the checkout), so it runs on a copy.
TEST_ROOT="$RUN_DIR/ansible-test"
TEST_COPY="$TEST_ROOT/ansible_collections/directdownload/kvm"
# Every stage leaves JUnit XML in $JUNIT/<stage>/; the summary adds them up into one closing line. The last
# finished run's files are kept in .build/junit.
JUNIT="$RUN_DIR/junit"
PYTHON_VERSION=3.11
export PATH="$VENV/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$COLLECTIONS"
export PYTHONPATH="$COLLECTIONS${PYTHONPATH:+:$PYTHONPATH}"
export ANSIBLE_NOCOLOR=1 PY_COLORS=0 ANSIBLE_FORCE_COLOR=0 PIP_PROGRESS_BAR=off
# Interpreter discovery can pick a broken pyenv shim on some machines: name the interpreter.
export ANSIBLE_PYTHON_INTERPRETER="$VENV/bin/python"

if [ ! -x "$VENV/bin/ansible-test" ]; then
    echo "error: $VENV/bin/ansible-test not found; run 'make setup' first" >&2
    exit 2
fi

banner() {
    printf '\n'
    printf '=%.0s' {1..100}
    printf '\n=== %s\n' "$*"
    printf '=%.0s' {1..100}
    printf '\n'
}

# ansible-test downloads get-pip from a host we cannot reach; it uses this cached file when present. The stand-in
# bootstraps pip with ensurepip and then installs what ansible-test asked for from PyPI. Something may clean
# ~/.ansible/test between runs, so it is written right before every ansible-test call.
write_get_pip_shim() {
    local pip_version cache="$HOME/.ansible/test/cache"
    # The pip version ansible-test pins (24.2 for ansible-core 2.19); the shim's file name carries it.
    pip_version="$("$VENV/bin/python" - <<'PY'
import re
from pathlib import Path
import ansible_test
source = (Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py").read_text()
match = re.search(r"default_packages = dict\(\s*pip='([^']+)'", source)
print(match.group(1) if match else "24.2")
PY
)"
    mkdir -p "$cache"
    cat > "$cache/get_pip_${pip_version//./_}.py" <<'PY'
import subprocess
import sys
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q"] + args)
PY
}

# The per-test venvs ansible-test builds print pip's "Location ... is ignored" lines (an extra local index in some
# machines' pip config): harmless noise, filtered out. The command's own exit code is kept.
without_pip_noise() {
    "$@" 2>&1 | grep --line-buffered -v 'is ignored: it is neither a file nor a directory'
    return "${PIPESTATUS[0]}"
}

# A fresh copy of what git would commit (tracked files plus untracked files that are not ignored), with the
# dependency collections beside it so unit tests can import them, and its own git repository: ansible-test lists
# content with git, and without one it would walk up to the checkout's repository. Made once per run.
copy_ready=0
prepare_test_copy() {
    [ "$copy_ready" -eq 0 ] || return 0
    rm -rf "$TEST_ROOT"
    mkdir -p "$TEST_COPY"
    git ls-files -z -co --exclude-standard \
        | while IFS= read -r -d '' path; do
            if [ -e "$path" ] || [ -L "$path" ]; then printf '%s\0' "$path"; fi
          done \
        | tar --null -T - -cf - | tar -xf - -C "$TEST_COPY"
    local ns
    for ns in "$COLLECTIONS"/ansible_collections/*/; do
        ns="$(basename "$ns")"
        [ "$ns" = directdownload ] && continue
        cp -a "$COLLECTIONS/ansible_collections/$ns" "$TEST_ROOT/ansible_collections/"
    done
    git -C "$TEST_COPY" init -q
    copy_ready=1
}

# A one-case JUnit file for checks that write none themselves (a molecule scenario, ansible-lint).
write_junit_case() {
    local file="$1" name="$2" outcome="$3" failure=""
    mkdir -p "$(dirname "$file")"
    [ "$outcome" = passed ] || failure='<failure message="failed"/>'
    printf '<testsuite name="%s" tests="1"><testcase classname="%s" name="%s">%s</testcase></testsuite>\n' \
        "$name" "$name" "$name" "$failure" > "$file"
}

collect_ansible_test_junit() {
    mkdir -p "$JUNIT/$1"
    find "$TEST_COPY/tests/output/junit" -maxdepth 1 -name "$2" -exec cp {} "$JUNIT/$1/" \; 2>/dev/null
    rm -f "$TEST_COPY"/tests/output/junit/*.xml
}

run_sanity() {
    banner "sanity: ansible-test sanity --python $PYTHON_VERSION (on a copy in ${TEST_COPY#"$REPO"/})"
    prepare_test_copy
    write_get_pip_shim
    local rc=0
    (cd "$TEST_COPY" && without_pip_noise ansible-test sanity --python "$PYTHON_VERSION" --color no --junit) || rc=$?
    collect_ansible_test_junit sanity 'ansible-test-sanity-*.xml'
    return "$rc"
}

run_unit() {
    banner "unit: ansible-test units --python $PYTHON_VERSION --requirements (tests/unit)"
    if ! find tests/unit -name 'test_*.py' -print -quit 2>/dev/null | grep -q .; then
        echo "unit: no test files under tests/unit yet: nothing to run"
        return 0
    fi
    prepare_test_copy
    write_get_pip_shim
    local rc=0
    (cd "$TEST_COPY" && without_pip_noise ansible-test units --python "$PYTHON_VERSION" --requirements --color no --num-workers 2) || rc=$?
    collect_ansible_test_junit unit '*-units.xml'
    return "$rc"
}

# pytest exits 5 when it collected nothing: not a failure while a suite is still empty.
pytest_allow_empty() {
    local rc=0
    "$VENV/bin/python" -m pytest "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "(pytest collected no tests: nothing to run yet)"
        return 0
    fi
    return "$rc"
}

run_integration() {
    banner "integration: pytest -n 2 tests/integration (real ansible-playbook runs)"
    pytest_allow_empty -n 2 -p no:cacheprovider -o console_output_style=classic -rfEs \
        --junit-xml "$JUNIT/integration/pytest.xml" tests/integration
}

run_molecule() {
    banner "molecule: every scenario under extensions/molecule/"
    local scenarios=() file rc=0
    for file in extensions/molecule/*/molecule.yml; do
        [ -f "$file" ] && scenarios+=("$(basename "$(dirname "$file")")")
    done
    if [ "${#scenarios[@]}" -eq 0 ]; then
        echo "molecule: no scenarios yet (extensions/molecule/<name>/molecule.yml): nothing to run"
        return 0
    fi
    local scenario
    for scenario in "${scenarios[@]}"; do
        echo "--- molecule test -s $scenario"
        # Molecule keeps per-scenario state (e.g. "prepared") under ~/.ansible/tmp across runs and checkouts; a
        # stale "prepared" would skip prepare.yml. Every run starts from a reset state.
        (cd extensions && molecule reset -s "$scenario" >/dev/null 2>&1) || true
        if (cd extensions && molecule test -s "$scenario"); then
            write_junit_case "$JUNIT/molecule/$scenario.xml" "molecule-$scenario" passed
        else
            write_junit_case "$JUNIT/molecule/$scenario.xml" "molecule-$scenario" failed
            rc=1
        fi
    done
    return "$rc"
}

run_lint() {
    banner "lint: ansible-lint (profile from .ansible-lint) on roles/ and playbooks/"
    local targets=() dir rc=0
    for dir in roles playbooks; do
        if [ -d "$dir" ] && find "$dir" -type f \( -name '*.yml' -o -name '*.yaml' \) -print -quit | grep -q .; then
            targets+=("$dir")
        fi
    done
    if [ "${#targets[@]}" -eq 0 ]; then
        echo "lint: roles/ and playbooks/ hold no YAML yet: nothing to lint"
        return 0
    fi
    ansible-lint --offline "${targets[@]}" || rc=$?
    write_junit_case "$JUNIT/lint/ansible-lint.xml" ansible-lint "$([ "$rc" -eq 0 ] && echo passed || echo failed)"
    return "$rc"
}

# "sanity: 24 passed, 0 failed, 1 skipped" per stage, then the total as the run's closing line.
junit_totals() {
    "$VENV/bin/python" - "$JUNIT" "$@" <<'PY'
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

root, stages = Path(sys.argv[1]), sys.argv[2:]
failed_stages = os.environ.get("FAILED_STAGES", "").split()
total = [0, 0, 0]
for stage in stages:
    counts = [0, 0, 0]
    for path in sorted((root / stage).glob("*.xml")):
        for case in ET.parse(path).iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                counts[1] += 1
            elif case.find("skipped") is not None:
                counts[2] += 1
            else:
                counts[0] += 1
    if stage in failed_stages and counts[1] == 0:
        counts[1] = 1  # the stage failed before or outside its test cases (a crash, a set-up error): count it
    total = [a + b for a, b in zip(total, counts)]
    print(f"  {stage + ':':13}{counts[0]} passed, {counts[1]} failed, {counts[2]} skipped")
print(f"total: {total[0]} passed, {total[1]} failed, {total[2]} skipped")
PY
}

stages=("$@")
[ "${#stages[@]}" -gt 0 ] || stages=(all)
if [ "${stages[0]}" = all ]; then
    stages=(sanity unit integration molecule lint)
fi

# Remove what earlier runs left behind when their process is gone (killed runs), then claim our directory.
for stale in "$RUNS"/*/; do
    [ -d "$stale" ] || continue
    pid="$(basename "$stale")"
    kill -0 "$pid" 2>/dev/null || rm -rf "$stale"
done
mkdir -p "$RUN_DIR"
finish_run() {
    if [ -d "$JUNIT" ]; then
        rm -rf "$BUILD/junit"
        mv "$JUNIT" "$BUILD/junit"
    fi
    rm -rf "$RUN_DIR"
}
trap finish_run EXIT

declare -A outcome
failed_stages=()
start_all=$SECONDS
for stage in "${stages[@]}"; do
    start=$SECONDS
    case "$stage" in
        sanity|unit|integration|molecule|lint) "run_$stage"; rc=$? ;;
        *) echo "unknown stage: $stage (expected sanity, unit, integration, molecule, lint)" >&2; rc=2 ;;
    esac
    if [ "$rc" -eq 0 ]; then
        outcome[$stage]="passed ($((SECONDS - start)) s)"
    else
        outcome[$stage]="FAILED rc=$rc ($((SECONDS - start)) s)"
        failed_stages+=("$stage")
    fi
done

banner "summary ($((SECONDS - start_all)) s)"
for stage in "${stages[@]}"; do
    printf '  %-12s %s\n' "$stage" "${outcome[$stage]}"
done
if [ "${#failed_stages[@]}" -gt 0 ]; then
    echo "FAILED stages: ${failed_stages[*]}"
else
    echo "all stages passed"
fi
echo "test cases (from the JUnit XML files, kept in .build/junit):"
FAILED_STAGES="${failed_stages[*]}" junit_totals "${stages[@]}"
[ "${#failed_stages[@]}" -eq 0 ] || exit 1
