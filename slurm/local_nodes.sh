#!/usr/bin/env bash
# Several "nodes" on this one machine, to run (and test) multi-node jobs without a cluster: each node is a
# network namespace with its own address, joined to the others by a veth pair on a bridge, and every
# command run on it gets the node's hostname; all nodes share the file system, which stands in for a
# cluster's shared storage.
#
#   sudo slurm/local_nodes.sh up 2                # node0 (10.77.0.10), node1 (10.77.0.11); bridge 10.77.0.1
#   sudo slurm/local_nodes.sh exec node1 CMD...   # run CMD on node1 (its network and hostname)
#   slurm/local_nodes.sh list                     # NAME ADDRESS, one line per node
#   sudo slurm/local_nodes.sh down                # stop what runs on the nodes; remove namespaces and links
#
# Environment: LOCAL_NODES_NAME (default dtn) prefixes the namespaces, links and state directory, so
# several sets can live side by side; LOCAL_NODES_SUBNET (default 10.77.0) is the bridge's /24;
# LOCAL_NODES_PREFIX (default node) names the hosts.
#
# Nodes have no default route: their traffic stays between them and this machine (the bridge address).
# Node names resolve on the nodes through a hosts file that `exec` bind-mounts over /etc/hosts in the
# command's own mount namespace (gloo binds to the address of its hostname); this machine's /etc/hosts
# is never changed. A command enters its node with `nsenter --net` and `unshare --uts --mount`, not
# `ip netns exec`, which remounts /sys without the cgroup file system (slurmd then refuses to start).
set -euo pipefail

NAME=${LOCAL_NODES_NAME:-dtn}
SUBNET=${LOCAL_NODES_SUBNET:-10.77.0}
PREFIX=${LOCAL_NODES_PREFIX:-node}
STATE=/run/dist_train_nodes/$NAME
BRIDGE=${NAME}br

die() { echo "local_nodes.sh: error: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (run it with sudo)"; }
namespace() { echo "$NAME-$1"; }
count() { [ -f "$STATE/count" ] && cat "$STATE/count" || echo 0; }

up() {
    need_root up
    local n=${1:-2} i node
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 200)) || die "up needs a node count from 1 to 200, got '$n'"
    if [ -f "$STATE/count" ]; then
        [ "$(count)" = "$n" ] && { list; return 0; }
        die "$(count) nodes are up already (LOCAL_NODES_NAME=$NAME); run: $0 down"
    fi
    command -v nsenter >/dev/null && command -v unshare >/dev/null || die "nsenter/unshare not found (util-linux)"
    mkdir -p "$STATE"
    trap 'down >/dev/null 2>&1 || true' ERR  # a half-built set is removed
    ip link add "$BRIDGE" type bridge
    ip addr add "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    {
        echo "127.0.0.1 localhost"
        echo "::1 localhost ip6-localhost ip6-loopback"
        echo "$SUBNET.1 $(hostname -s)"
    } >"$STATE/hosts"
    for ((i = 0; i < n; i++)); do
        node=$PREFIX$i
        ip netns add "$(namespace "$node")"
        ip link add "${NAME}v$i" type veth peer name eth0 netns "$(namespace "$node")"
        ip link set "${NAME}v$i" master "$BRIDGE"
        ip link set "${NAME}v$i" up
        ip -n "$(namespace "$node")" addr add "$SUBNET.$((10 + i))/24" dev eth0
        ip -n "$(namespace "$node")" link set eth0 up
        ip -n "$(namespace "$node")" link set lo up
        echo "$SUBNET.$((10 + i)) $node" >>"$STATE/hosts"
        echo "$node $SUBNET.$((10 + i))" >>"$STATE/nodes"
    done
    echo "$n" >"$STATE/count"
    trap - ERR
    list
}

list() {
    [ -f "$STATE/nodes" ] || die "no nodes are up (LOCAL_NODES_NAME=$NAME); run: sudo $0 up N"
    cat "$STATE/nodes"
}

run_on() {
    need_root exec
    local node=${1:-}
    shift || true
    [ -n "$node" ] && [ $# -gt 0 ] || die "usage: $0 exec NODE COMMAND..."
    [ -e "/run/netns/$(namespace "$node")" ] || die "no node '$node' (LOCAL_NODES_NAME=$NAME; see: $0 list)"
    exec nsenter --net="/run/netns/$(namespace "$node")" unshare --uts --mount --propagation private \
        /bin/sh -c 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"' sh "$node" "$STATE/hosts" "$@"
}

down() {
    need_root down
    local ns pids node
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-" || true); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] && kill $pids 2>/dev/null || true
    done
    for _ in $(seq 20); do
        pids=""
        for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-" || true); do
            pids="$pids $(ip netns pids "$ns" 2>/dev/null || true)"
        done
        [ -z "${pids// /}" ] && break
        sleep 0.5
    done
    [ -n "${pids// /}" ] && kill -KILL $pids 2>/dev/null || true  # what did not stop in 10 s
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
    for node in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${NAME}v[0-9]+$" || true); do
        ip link del "$node" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -rf "$STATE"
    echo "nodes down (LOCAL_NODES_NAME=$NAME)"
}

case "${1:-}" in
    up) up "${2:-2}" ;;
    exec) shift; run_on "$@" ;;
    list) list ;;
    down) down ;;
    *) echo "usage: $0 up [N] | exec NODE COMMAND... | list | down" >&2; exit 2 ;;
esac
