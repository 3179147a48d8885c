#!/usr/bin/env bash
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Start N "KVM hosts" on this machine, reachable over real SSH, plus an empty mirror namespace:
#   start.sh -b BASE_DIR [-n HOSTS] [-p PREFIX] [-s SUBNET] [--no-libvirt]
# Every host is a network namespace PREFIXhI (address SUBNET.(10+I)) on a bridge PREFIXbr (SUBNET.1) that this
# script creates; the mirror namespace PREFIXm has SUBNET.5 and runs whatever the caller starts in it. Nothing
# else on this machine is addressed. In each host run, in a private view of the system (sysview.sh: own /etc and /var
# overlays, own /run, own hostname), its own libvirtd (qemu:///system) and an sshd that accepts BASE_DIR/client_key.
# /usr, /tmp and /root are shared between the hosts, as a shared primary storage would be.
# Writes BASE_DIR/inventory.ini (group kvm_hosts, python /usr/bin/python3) and BASE_DIR/harness.env (for stop.sh).
# Stop with stop.sh -b BASE_DIR (or -p PREFIX after a crash); start.sh stops a previous harness of that prefix first,
# so concurrent users must not share a prefix: kvmhosts.py hands out prefixes and subnets under a lock (slots).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

hosts=3
prefix=ddh
subnet=10.213.77
libvirt=1
base=""
while [ $# -gt 0 ]; do
    case $1 in
    -b) base=$2; shift 2 ;;
    -n) hosts=$2; shift 2 ;;
    -p) prefix=$2; shift 2 ;;
    -s) subnet=$2; shift 2 ;;
    --no-libvirt) libvirt=0; shift ;;
    *) echo "usage: $0 -b BASE_DIR [-n HOSTS] [-p PREFIX] [-s SUBNET] [--no-libvirt]" >&2; exit 2 ;;
    esac
done
[ -n "$base" ] || { echo "start.sh: -b BASE_DIR is required" >&2; exit 2; }
# Interface names are at most 15 characters: PREFIX + "br" / "v" + number.
[[ $prefix =~ ^[a-z][a-z0-9]{0,7}$ ]] || { echo "start.sh: prefix must be 1-8 lowercase letters or digits" >&2; exit 2; }
if ! [[ $hosts =~ ^[0-9]+$ ]] || [ "$hosts" -lt 1 ] || [ "$hosts" -gt 80 ]; then
    echo "start.sh: 1 to 80 hosts" >&2
    exit 2
fi
[[ $subnet =~ ^10\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || { echo "start.sh: subnet must look like 10.X.Y" >&2; exit 2; }

mkdir -p "$base"
base=$(cd "$base" && pwd)
"$here"/stop.sh -p "$prefix" -b "$base"

cat >"$base"/harness.env <<ENV
prefix=$prefix
hosts=$hosts
subnet=$subnet
ENV
[ -f "$base"/client_key ] || ssh-keygen -q -t ed25519 -N '' -C "directdownload-test-client" -f "$base"/client_key
cp "$base"/client_key.pub "$base"/authorized_keys
chmod 600 "$base"/authorized_keys

ip link add "${prefix}br" type bridge
ip addr add "$subnet.1/24" dev "${prefix}br"
ip link set "${prefix}br" up

add_namespace() { # name address veth
    ip netns add "$1"
    ip link add "$3" type veth peer name eth0 netns "$1"
    ip link set "$3" master "${prefix}br" up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
    ip -n "$1" link set lo up
}

add_namespace "${prefix}m" "$subnet.5" "${prefix}vm"

{
    echo "[kvm_hosts]"
    for i in $(seq 1 "$hosts"); do
        echo "kvmhost$i ansible_host=$subnet.$((10 + i))"
    done
    echo
    echo "[kvm_hosts:vars]"
    echo "ansible_user=root"
    echo "ansible_ssh_private_key_file=$base/client_key"
    echo "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR'"
    echo "ansible_python_interpreter=/usr/bin/python3"
} >"$base"/inventory.ini

for i in $(seq 1 "$hosts"); do
    ns="${prefix}h$i"
    address="$subnet.$((10 + i))"
    d="$base/h$i"
    mkdir -p "$d"
    add_namespace "$ns" "$address" "${prefix}v$i"
    [ -f "$d"/hostkey ] || ssh-keygen -q -t ed25519 -N '' -C "kvmhost$i" -f "$d"/hostkey
    cat >"$d"/sshd_config <<CFG
ListenAddress $address:22
HostKey $d/hostkey
PidFile $d/sshd.pid
AuthorizedKeysFile $base/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
CFG
    daemons="exec /usr/sbin/sshd -D -f $d/sshd_config -E $d/sshd.log"
    if [ "$libvirt" = 1 ]; then
        daemons="/usr/sbin/libvirtd -d -p /run/libvirtd.pid && $daemons"
    fi
    setsid ip netns exec "$ns" "$here"/sysview.sh "$d/root" "kvmhost$i" sh -c "$daemons" \
        </dev/null >"$d"/launch.log 2>&1 &
done

ssh_ok() {
    ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
        -o ConnectTimeout=2 -i "$base"/client_key "root@$1" "$2" >/dev/null 2>&1
}
ready_check=true
[ "$libvirt" = 1 ] && ready_check="virsh -q pool-list"
for i in $(seq 1 "$hosts"); do
    address="$subnet.$((10 + i))"
    for _ in $(seq 1 300); do
        ssh_ok "$address" "$ready_check" && continue 2
        sleep 0.05
    done
    echo "start.sh: kvmhost$i ($address) did not answer over SSH; see $base/h$i/launch.log and sshd.log" >&2
    cat "$base/h$i/launch.log" >&2 || true
    exit 1
done
echo "$base/inventory.ini"
