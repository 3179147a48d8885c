#!/usr/bin/env bash
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# `make demo` (after `make setup`): start a local image mirror on loopback, run playbooks/demo.yml against
# localhost, stop the mirror (by PID, also on failure or Ctrl-C).
#
# What the demo playbook receives as extra vars (all absolute paths / loopback URLs):
#   demo_dir            .build/demo: the demo's own directory (kept between runs, `make clean` removes it)
#   demo_pool_path      .build/demo/pool: a pool directory for a playbook that wants one (not created here;
#                       playbooks/demo.yml makes .build/demo/pool-<host> per demo host)
#   demo_registry       .build/demo/registry.json: where the demo keeps its template registry
#   demo_mirror_url     http://127.0.0.1:<port>/ serving .build/demo/mirror
#   demo_image_url      <mirror>/demo-template.qcow2      (a qcow2 made with qemu-img, 64 MiB virtual)
#   demo_image_checksum sha256:<hex> of that file
#   demo_image_gz_url   <mirror>/demo-template.qcow2.gz  (the same image, gzip-compressed)
#   demo_image_gz_checksum sha256:<hex> of the .gz (the checksum covers the bytes as downloaded)
#   demo_iso_url        <mirror>/demo.iso (a small raw file standing in for an ISO)
# The images are made once and reused. Each run starts from empty pools (.build/demo/pool*) and an empty registry,
# so that round 1 shows a registration and two downloads, and round 2 the same playbooks moving nothing.
# DEMO_CLEAN=0 make demo   keeps the pools and the registry of the last run: both rounds then move nothing.
# The output is a short story (scripts/callback_plugins/directdownload_demo.py); DEMO_VERBOSE=1 make demo shows
# Ansible's usual output, every task.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="$REPO/.venv"
DEMO="${DEMO_DIR:-$REPO/.build/demo}"  # DEMO_DIR: elsewhere (the demo's own test)
MIRROR="$DEMO/mirror"
POOL="$DEMO/pool"
PLAYBOOK="$REPO/playbooks/demo.yml"

say() { printf '==> demo: %s\n' "$*"; }

if [ "${DEMO_CLEAN:-1}" = 1 ]; then
    rm -rf "$DEMO"/pool* "$DEMO/registry.json"
fi
mkdir -p "$MIRROR"

# ---------------------------------------------------------------- images on the mirror (made once)
if [ ! -f "$MIRROR/demo-template.qcow2" ]; then
    say "making demo images with qemu-img in ${MIRROR#"$REPO"/}"
    tmp_raw="$DEMO/demo-template.raw"
    # 64 MiB disk whose first 4 MiB hold random data: a realistic, mostly sparse image.
    qemu-img create -q -f raw "$tmp_raw" 64M
    head -c 4M /dev/urandom | dd of="$tmp_raw" conv=notrunc status=none
    qemu-img convert -O qcow2 "$tmp_raw" "$MIRROR/demo-template.qcow2.tmp"
    rm -f "$tmp_raw"
    gzip -c -n "$MIRROR/demo-template.qcow2.tmp" > "$MIRROR/demo-template.qcow2.gz"
    head -c 2M /dev/urandom > "$MIRROR/demo.iso"
    mv "$MIRROR/demo-template.qcow2.tmp" "$MIRROR/demo-template.qcow2"
fi
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# ---------------------------------------------------------------- the mirror, on loopback
mirror_pid=""
stop_mirror() {
    if [ -n "$mirror_pid" ] && kill -0 "$mirror_pid" 2>/dev/null; then
        kill "$mirror_pid" 2>/dev/null || true
        wait "$mirror_pid" 2>/dev/null || true
        say "mirror stopped (pid $mirror_pid)"
    fi
}
trap stop_mirror EXIT
trap 'exit 130' INT TERM

port_file="$DEMO/mirror.port"
rm -f "$port_file"
# Port DEMO_PORT (default 8765), or any free port when it is taken; the server writes it down once it listens.
"$VENV/bin/python" - "$MIRROR" "$port_file" > "$DEMO/mirror.log" 2>&1 <<'PY' &
import functools, http.server, os, sys
directory, port_file = sys.argv[1], sys.argv[2]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
try:  # a fixed port keeps the template URL, so a second `make demo` re-registers nothing
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("DEMO_PORT", "8765"))), handler)
except OSError:  # taken: any free port (the template is then registered again with the new URL)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
PY
mirror_pid=$!
for _ in $(seq 1 100); do
    [ -s "$port_file" ] && break
    kill -0 "$mirror_pid" 2>/dev/null || { cat "$DEMO/mirror.log" >&2; exit 1; }
    sleep 0.05
done
[ -s "$port_file" ] || { say "the mirror did not start"; cat "$DEMO/mirror.log" >&2; exit 1; }
mirror_url="http://127.0.0.1:$(cat "$port_file")/"
say "mirror serving ${MIRROR#"$REPO"/} at $mirror_url (pid $mirror_pid)"

extra_vars="$DEMO/extra-vars.json"
cat > "$extra_vars" <<JSON
{
  "demo_dir": "$DEMO",
  "demo_pool_path": "$POOL",
  "demo_registry": "$DEMO/registry.json",
  "demo_mirror_url": "$mirror_url",
  "demo_image_url": "${mirror_url}demo-template.qcow2",
  "demo_image_checksum": "sha256:$(sha256_of "$MIRROR/demo-template.qcow2")",
  "demo_image_gz_url": "${mirror_url}demo-template.qcow2.gz",
  "demo_image_gz_checksum": "sha256:$(sha256_of "$MIRROR/demo-template.qcow2.gz")",
  "demo_iso_url": "${mirror_url}demo.iso",
  "ansible_python_interpreter": "$VENV/bin/python"
}
JSON

if [ ! -f "$PLAYBOOK" ]; then
    say "playbooks/demo.yml does not exist yet (coming). When it does, this runs:"
    echo "      ansible-playbook -i localhost, -c local -e @${extra_vars#"$REPO"/} playbooks/demo.yml"
    echo "    which downloads $mirror_url""demo-template.qcow2 (and its .gz twin) into ${POOL#"$REPO"/}"
    echo "    with directdownload.kvm.download: verified by SHA-256, extracted, inspected by qemu-img, installed atomically."
    exit 0
fi

output=()
if [ "${DEMO_VERBOSE:-0}" = 1 ]; then
    say "running playbooks/demo.yml on localhost (DEMO_VERBOSE=1: every task)"
else
    say "running playbooks/demo.yml on localhost (DEMO_VERBOSE=1 make demo shows every task)"
    output=(env ANSIBLE_STDOUT_CALLBACK=directdownload_demo ANSIBLE_CALLBACK_PLUGINS="$REPO/scripts/callback_plugins")
fi
"${output[@]}" env ANSIBLE_COLLECTIONS_PATH="$REPO/.build/collections" DIRECTDOWNLOAD_SETTINGS="$DEMO/etc/agent.json" \
    ANSIBLE_NOCOLOR="${ANSIBLE_NOCOLOR:-}" \
    "$VENV/bin/ansible-playbook" -i localhost, -c local -e "@$extra_vars" "$PLAYBOOK"
if [ "${DEMO_VERBOSE:-0}" = 1 ]; then
    for pool in "$DEMO"/pool*/; do
        say "${pool#"$REPO"/} holds:"
        ls -lhs "$pool"
    done
fi
say "see for yourself: qemu-img info ${DEMO#"$REPO"/}/pool-kvm-a/<name>; the registry is ${DEMO#"$REPO"/}/registry.json"
