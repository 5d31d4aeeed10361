#!/usr/bin/env bash
# A SLURM cluster on this machine, to try (and test) the SLURM flow without a real cluster: one node (this
# machine) or N nodes, each a network namespace of slurm/local_nodes.sh with its own slurmd.
#
#   slurm/local_cluster.sh install            # Debian/Ubuntu: apt-get install slurm-wlm munge
#   slurm/local_cluster.sh start              # one node: write slurm.conf, start munged, slurmctld, slurmd
#   slurm/local_cluster.sh start --nodes 2    # node0, node1 (namespaces on a bridge), one slurmd each
#   slurm/local_cluster.sh status                  # sinfo
#   slurm/local_cluster.sh stop               # stop the daemons, remove the nodes (config and job state stay)
#
# One node: the node is this machine (its hostname, CPU count and memory); the daemons talk over 127.0.0.1,
# so the hostname need not resolve. N nodes: node<i> has address 10.77.0.<10+i> and the machine's CPU count
# (so N nodes oversubscribe the cores) and 1/N of its memory; slurmctld runs here, on the bridge address
# 10.77.0.1; each slurmd has its own spool, pid and log file (%n), and `slurm/local_nodes.sh exec node1 CMD`
# (with LOCAL_NODES_NAME=dtslurm) runs a command on a node. Either way start waits until every node is idle.
# One partition, `debug`, is the default. A requeued or cancelled job gets SIGTERM, then SIGKILL 2 s later
# (KillWait; submitit ignores SIGTERM, so a requeued run stops within 2 s). Jobs run as the user who submits
# them. start refuses to overwrite a slurm.conf this script did not write.
set -euo pipefail

CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
CONF=$CONF_DIR/slurm.conf
STATE=${SLURM_STATE_DIR:-/var/spool/dist_train_slurm}
LOGS=${SLURM_LOG_DIR:-/var/log/slurm}
MARKER="# written by dist_train slurm/local_cluster.sh"
NODES_SH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/local_nodes.sh"
export LOCAL_NODES_NAME=${LOCAL_NODES_NAME:-dtslurm} LOCAL_NODES_SUBNET=${LOCAL_NODES_SUBNET:-10.77.0}

die() { echo "local_cluster.sh: error: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root: run it as root (with sudo where you are not)"; }

install_packages() {
    need_root install
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

# The node names (one per line) of the cluster `start` last wrote.
node_names() { sed -n 's/^NodeName=\([^ ]*\) .*/\1/p' "$CONF"; }

write_conf() {
    local nodes=$1 host cpus mem_mb ctl_addr node_lines partition i
    host=$(hostname -s)
    cpus=$(nproc --all)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # leave 1 GiB to the system
    if ((nodes == 1)); then
        ctl_addr=127.0.0.1
        node_lines="NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
        partition=$host
    else
        ctl_addr=$LOCAL_NODES_SUBNET.1
        node_lines=$(for ((i = 0; i < nodes; i++)); do
            echo "NodeName=node$i NodeAddr=$LOCAL_NODES_SUBNET.$((10 + i)) CPUs=$cpus RealMemory=$((mem_mb / nodes)) State=UNKNOWN"
        done)
        partition="node[0-$((nodes - 1))]"
    fi
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching it"
    fi
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS"
    cat >"$CONF" <<EOF
$MARKER
ClusterName=dist-train-local
SlurmctldHost=$host($ctl_addr)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=2
$node_lines
PartitionName=debug Nodes=$partition Default=YES MaxTime=INFINITE State=UP
EOF
    echo "wrote $CONF: $nodes node(s) ($partition), $cpus CPUs each"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# Whether pid file $1 names a running process of program $2 (not another process that reuses the pid).
running_as() { running "$1" && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]; }

# A daemon ($1) exited at start: show the end of its log ($2), then stop with one line naming it.
failed() {
    tail -n 20 "$2" >&2 2>/dev/null || true
    die "$1 did not start; the end of its log ($2) is above"
}

# Start the slurmd of node $1 (on this machine for a one-node cluster; in its namespace otherwise).
start_slurmd() {
    local node=$1
    running "$STATE/slurmd-$node.pid" && return 0
    mkdir -p "$STATE/d/$node"
    if [ "$node" = "$(hostname -s)" ]; then
        slurmd -N "$node"
    else
        "$NODES_SH" exec "$node" slurmd -N "$node"
    fi
}

start() {
    need_root start
    local nodes=1 node
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes=${2:-}; shift 2 || die "--nodes needs a number" ;;
            --nodes=*) nodes=${1#--nodes=}; shift ;;
            *) die "start: unknown option '$1' (expected --nodes N)" ;;
        esac
    done
    [[ $nodes =~ ^[0-9]+$ ]] && ((nodes >= 1 && nodes <= 64)) || die "--nodes must be from 1 to 64, got '$nodes'"
    command -v slurmctld >/dev/null || die "slurmctld not found; run (as root): $0 install"
    if running "$STATE/slurmctld.pid" && [ "$(node_names | wc -l)" != "$nodes" ]; then
        die "a cluster of $(node_names | wc -l) node(s) is running; run (as root): $0 stop"
    fi
    ((nodes == 1)) || "$NODES_SH" up "$nodes" >/dev/null || die "could not make the $nodes node namespaces"
    write_conf "$nodes"
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        [ -f /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- /usr/sbin/munged --force
        for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
        munge -n | unmunge >/dev/null || die "munged does not answer"
        cp /run/munge/munged.pid "$STATE/munged.pid"  # ours to stop; a munged found running is left alone
    fi
    running "$STATE/slurmctld.pid" || slurmctld || failed slurmctld "$LOGS/slurmctld.log"
    for node in $(node_names); do start_slurmd "$node" || failed "slurmd of $node" "$LOGS/slurmd-$node.log"; done
    wait_idle 60
}

# Wait up to $1 seconds until every node is idle (or busy with jobs), resuming nodes that come back down.
wait_idle() {
    local names states
    names=$(node_names | paste -sd, -)
    for _ in $(seq "$1"); do
        states=$(sinfo --noheader --Node --nodes="$names" --format="%N %T" 2>/dev/null || true)
        if [ -n "$states" ] && ! grep -qvE " (idle|mixed|allocated|completing)$" <<<"$states"; then
            echo "SLURM is up: $(node_names | wc -l) node(s) ($names)"
            sinfo
            return 0
        fi
        # (grep finds no such node on most passes: under pipefail its status would end the script silently)
        { grep -E " (down|drain)" <<<"$states" || true; } | while read -r node _; do
            scontrol update nodename="$node" state=resume 2>/dev/null || true
        done
        sleep 1
    done
    tail -n 20 "$LOGS/slurmctld.log" "$LOGS"/slurmd-*.log >&2 || true
    die "not every node became idle within $1 s (logs above)"
}

# Stop the daemons this script started, by the pids they recorded (munged only if `start` started it):
# SIGTERM, then SIGKILL for what still runs after 30 s. Processes it did not start are left alone.
stop() {
    need_root stop
    local pid_file pid_files program alive
    pid_files=("$STATE"/slurmd-*.pid "$STATE/slurmctld.pid" "$STATE/munged.pid")
    program_of() { case "$(basename "$1")" in slurmd-*) echo slurmd ;; *) basename "$1" .pid ;; esac; }
    for signal in TERM KILL; do
        for pid_file in "${pid_files[@]}"; do
            program=$(program_of "$pid_file")
            running_as "$pid_file" "$program" && kill -s "$signal" "$(cat "$pid_file")"
        done
        for _ in $(seq 30); do
            alive=0
            for pid_file in "${pid_files[@]}"; do running_as "$pid_file" "$(program_of "$pid_file")" && alive=1; done
            ((alive)) || break
            sleep 1
        done
        ((alive)) || break
    done
    rm -f "$STATE/munged.pid"
    [ -d "/run/dist_train_nodes/$LOCAL_NODES_NAME" ] && "$NODES_SH" down >/dev/null
    echo "SLURM stopped"
}

case "${1:-}" in
    install) install_packages ;;
    start) shift; start "$@" ;;
    stop) stop ;;
    status) sinfo ;;
    slurmd)  # (re)start the slurmd of one node, e.g. after a test killed it, and wait until it is idle
        need_root slurmd
        [ -n "${2:-}" ] || die "usage: $0 slurmd NODE"
        start_slurmd "$2" && wait_idle 60 ;;
    *) echo "usage: $0 install | start [--nodes N] | stop | status | slurmd NODE" >&2; exit 2 ;;
esac
