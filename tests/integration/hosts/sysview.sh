#!/usr/bin/env bash
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Run a command in a private view of this machine, as if it were another KVM host:
#   sysview.sh STATE_DIR HOSTNAME COMMAND [ARG...]
# The command gets its own mount and UTS namespaces: /etc and /var are overlays (reads see this machine's files,
# writes land in STATE_DIR/etc.upper and STATE_DIR/var.upper), /run is STATE_DIR/run, and the hostname is HOSTNAME.
# /usr, /tmp and /root stay shared. libvirtd needs a `libvirt-qemu` user (compiled in, looked up before qemu.conf is
# read): the private /etc/passwd has one, the real one is never touched.
# Nothing here outlives the command's processes: the mounts go away with the namespace.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 STATE_DIR HOSTNAME COMMAND [ARG...]" >&2
    exit 2
fi
state_dir=$1
host_name=$2
shift 2

if [ "${DD_SYSVIEW_INNER:-}" != 1 ]; then
    mkdir -p "$state_dir"/etc.upper "$state_dir"/etc.work "$state_dir"/var.upper "$state_dir"/var.work \
        "$state_dir"/run/sshd "$state_dir"/var.upper/log/libvirt
    chmod 755 "$state_dir"/run "$state_dir"/run/sshd
    if [ ! -e "$state_dir"/etc.upper/passwd ]; then
        cp /etc/passwd /etc/group "$state_dir"/etc.upper/
        grep -q '^libvirt-qemu:' /etc/passwd ||
            echo 'libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin' >>"$state_dir"/etc.upper/passwd
        grep -q '^libvirt-qemu:' /etc/group || echo 'libvirt-qemu:x:64055:' >>"$state_dir"/etc.upper/group
    fi
    DD_SYSVIEW_INNER=1 exec unshare --mount --uts "$0" "$state_dir" "$host_name" "$@"
fi

mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$state_dir/etc.upper,workdir=$state_dir/etc.work" /etc
mount -t overlay overlay -o "lowerdir=/var,upperdir=$state_dir/var.upper,workdir=$state_dir/var.work" /var
mount --bind "$state_dir"/run /run
hostname "$host_name"
unset DD_SYSVIEW_INNER
exec "$@"
