#!/usr/bin/env bash
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Stop what start.sh started:  stop.sh [-b BASE_DIR] [-p PREFIX]
# Idempotent and safe after a crash: it finds the processes by namespace (`ip netns pids`: sshd, its sessions,
# libvirtd, whatever ran in the mirror namespace), kills those PIDs (TERM, then KILL), closes the SSH control
# masters that Ansible left under BASE_DIR/cp, and removes the namespaces, veths and the bridge of PREFIX only.
set -uo pipefail

base=""
prefix=""
while [ $# -gt 0 ]; do
    case $1 in
    -b) base=$2; shift 2 ;;
    -p) prefix=$2; shift 2 ;;
    *) echo "usage: $0 [-b BASE_DIR] [-p PREFIX]" >&2; exit 2 ;;
    esac
done
if [ -z "$prefix" ] && [ -n "$base" ] && [ -f "$base"/harness.env ]; then
    prefix=$(sed -n 's/^prefix=//p' "$base"/harness.env)
fi
[[ $prefix =~ ^[a-z][a-z0-9]{0,7}$ ]] || { echo "stop.sh: give -p PREFIX or -b BASE_DIR of a started harness" >&2; exit 2; }

# Ansible's ControlPersist masters run in this namespace and keep sessions open in the hosts: close them first.
if [ -n "$base" ] && [ -d "$base"/cp ]; then
    for socket in "$base"/cp/*; do
        [ -S "$socket" ] && ssh -o ControlPath="$socket" -O exit placeholder >/dev/null 2>&1
    done
fi

namespaces=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix}(h[0-9]+|m)$")
pids=""
for ns in $namespaces; do
    pids="$pids $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
done
pids=$(echo "$pids" | xargs -n1 2>/dev/null | sort -u | xargs)
if [ -n "$pids" ]; then
    # shellcheck disable=SC2086 # one PID per word
    kill $pids 2>/dev/null
    for _ in $(seq 1 100); do
        alive=""
        for pid in $pids; do
            kill -0 "$pid" 2>/dev/null && alive="$alive $pid"
        done
        [ -z "$alive" ] && break
        sleep 0.05
    done
    # shellcheck disable=SC2086
    [ -n "$alive" ] && kill -KILL $alive 2>/dev/null
fi
for ns in $namespaces; do
    ip netns del "$ns" 2>/dev/null
done
for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${prefix}(v[0-9]+|vm|br)$"); do
    ip link del "$link" 2>/dev/null
done
if [ -n "$base" ]; then
    rm -f "$base"/h*/sshd.pid "$base"/h*/root/run/libvirtd.pid
fi
exit 0
