#!/usr/bin/env bash
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# A private libvirtd (qemu:///system) whose state lives under STATE_DIR, for tests on this machine:
#   libvirtd.sh start STATE_DIR   prints the URI to use, e.g. qemu:///system?socket=STATE_DIR/run/libvirt/libvirt-sock
#   libvirtd.sh stop STATE_DIR    kills the daemon by the PID in its pid file; safe to run twice or after a crash
# The daemon sees this machine through sysview.sh (private /etc, /var, /run): pools it defines persist in
# STATE_DIR/etc.upper/libvirt/storage and never touch the real /etc/libvirt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() {
    echo "usage: $0 start|stop STATE_DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
action=$1
state_dir=$(mkdir -p "$2" && cd "$2" && pwd)
pid_file=$state_dir/run/libvirtd.pid
uri="qemu:///system?socket=$state_dir/run/libvirt/libvirt-sock"

stop() {
    [ -f "$pid_file" ] || return 0
    local pid
    pid=$(cat "$pid_file")
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
}

case $action in
start)
    stop
    setsid "$here"/sysview.sh "$state_dir" "$(hostname)" /usr/sbin/libvirtd -d -p /run/libvirtd.pid \
        </dev/null >"$state_dir"/libvirtd.log 2>&1
    # `virsh version` would fail (no qemu-system here); pool-list answers once the storage driver is up.
    for _ in $(seq 1 200); do
        if virsh -c "$uri" pool-list >/dev/null 2>&1; then
            echo "$uri"
            exit 0
        fi
        sleep 0.05
    done
    echo "libvirtd did not answer on $uri; log: $state_dir/libvirtd.log" >&2
    cat "$state_dir"/libvirtd.log >&2 || true
    stop
    exit 1
    ;;
stop)
    stop
    ;;
*)
    usage
    ;;
esac
