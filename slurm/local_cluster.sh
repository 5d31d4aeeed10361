#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try (and test) the SLURM flow without a real cluster.
#
#   sudo slurm/local_cluster.sh install   # Debian/Ubuntu: apt-get install slurm-wlm munge
#   sudo slurm/local_cluster.sh start     # write slurm.conf, start munged, slurmctld, slurmd; wait for an idle node
#   slurm/local_cluster.sh status         # sinfo
#   sudo slurm/local_cluster.sh stop      # stop the daemons (the config and job state stay)
#
# The node is this machine (its hostname, CPU count and memory); the daemons talk over 127.0.0.1, so the
# hostname need not resolve. One partition, `debug`, is the default. A requeued or cancelled job gets
# SIGTERM, then SIGKILL 2 s later (KillWait; submitit ignores SIGTERM, so a requeued run stops within 2 s).
# Jobs run as the user who submits them. start refuses to overwrite a slurm.conf this script did not write.
set -euo pipefail

CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
CONF=$CONF_DIR/slurm.conf
STATE=${SLURM_STATE_DIR:-/var/spool/dist_train_slurm}
LOGS=${SLURM_LOG_DIR:-/var/log/slurm}
MARKER="# written by dist_train slurm/local_cluster.sh"

die() { echo "local_cluster.sh: error: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (run it with sudo)"; }

install_packages() {
    need_root install
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc --all)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # leave 1 GiB to the system
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching it"
    fi
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS"
    cat >"$CONF" <<EOF
$MARKER
ClusterName=dist-train-local
SlurmctldHost=$host(127.0.0.1)
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
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    echo "wrote $CONF: node $host, $cpus CPUs, $mem_mb MB"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    need_root start
    command -v slurmctld >/dev/null || die "slurmctld not found; run: sudo $0 install"
    write_conf
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        [ -f /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- /usr/sbin/munged --force
        for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
        munge -n | unmunge >/dev/null || die "munged does not answer"
    fi
    running "$STATE/slurmctld.pid" || slurmctld
    running "$STATE/slurmd.pid" || slurmd
    local host
    host=$(hostname -s)
    for _ in $(seq 60); do
        state=$(sinfo --noheader --nodes="$host" --format=%T 2>/dev/null || true)
        case "$state" in
            idle | mixed | allocated) echo "SLURM is up: node $host is $state"; sinfo; return 0 ;;
            down* | drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
        esac
        sleep 1
    done
    tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
    die "the node did not become idle within 60 s (logs above)"
}

stop() {
    need_root stop
    local pid_file
    for pid_file in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
        if running "$pid_file"; then
            kill "$(cat "$pid_file")"
        fi
    done
    for _ in $(seq 30); do
        running "$STATE/slurmd.pid" || running "$STATE/slurmctld.pid" || break
        sleep 1
    done
    pkill -KILL -x slurmd 2>/dev/null || true  # what did not stop in 30 s
    pkill -KILL -x slurmctld 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
    for _ in $(seq 30); do pgrep -x munged >/dev/null || break; sleep 0.5; done
    echo "SLURM stopped"
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
