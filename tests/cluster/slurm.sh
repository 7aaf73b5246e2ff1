#!/usr/bin/env bash
# Slurm on a simulated cluster (cluster.sh): one munged and slurmctld on node 1, one slurmd on
# every node, each in its node's network namespace with the node's host name, so a job
# spanning nodes crosses the nodes' links. All state lives in the cluster's state folder, and
# the daemons run inside its namespaces: `cluster.sh down ID` ends them and removes it all.
#
#   slurm.sh up ID            start the daemons on cluster ID (made with cluster.sh up)
#   slurm.sh run ID CMD...    a Slurm command (sbatch, srun, squeue, ...) on node 1, with this
#                             cluster's SLURM_CONF
#
# Why the daemons are not started with `ip netns exec`: it remounts /sys, and slurmd 22.05
# fails without /sys/fs/cgroup ("Unable to initialize cgroup plugin"). They are started with
# nsenter --net (only the network namespace changes) plus their own UTS namespace (host name)
# and mount namespace, in which a per-node folder is bound over /tmp: every node has its own
# /tmp, as real nodes do (Slurm's PMIx plugin makes the same /tmp/spmix_appdir_* folder on
# every node of a step and fails on a shared /tmp). Jobs see /tmp of their node, so give them
# files elsewhere (a shared file system: /work, the build folder). A repository that itself
# lives under /tmp (a CI checkout) stays visible: it is bound into each node's /tmp first.

set -euo pipefail

CLUSTER=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/cluster.sh
REPO=$(readlink -f "$(dirname "$CLUSTER")/../..")
RUN_DIR=${NNT_CLUSTER_RUN:-/run/nn-train-cluster}

die() {
    echo "slurm.sh: $*" >&2
    exit 1
}

state() {
    [[ ${1:-} =~ ^[a-z][a-z0-9]{1,15}$ ]] || die "bad cluster id '${1:-}'"
    [[ -f $RUN_DIR/$1/nodes ]] || die "no cluster '$1' (make it with cluster.sh up)"
    echo "$RUN_DIR/$1/slurm"
}

# Starts "$@" in the background in node namespace $1 with its host name and its own /tmp.
daemon() {
    local ns=$1 log=$2
    shift 2
    local keep=""
    [[ $REPO == /tmp/* ]] && keep=${REPO#/tmp/}
    setsid nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private \
        sh -c 'hostname "$0" &&
               if [ -n "$2" ]; then mkdir -p "$1/$2" && mount --bind "/tmp/$2" "$1/$2"; fi &&
               mount --rbind "$1" /tmp && shift 2 && exec "$@"' "$ns" "$S/tmp-$ns" "$keep" "$@" \
        >"$log" 2>&1 </dev/null &
}

cmd_up() {
    local id=${1:-}
    S=$(state "$id")
    [[ ! -e $S ]] || die "Slurm is already up on cluster '$id'"
    for exe in munged mungekey slurmctld slurmd sinfo nsenter; do
        command -v "$exe" >/dev/null || die "$exe is not installed (Debian: slurm-wlm, munge)"
    done
    local nodes
    mapfile -t nodes <"$RUN_DIR/$id/nodes"
    mkdir -p "$S/munge" "$S/state" "$S/log"
    chmod 700 "$S/munge"
    for ns in "${nodes[@]}"; do
        mkdir -p "$S/spool-$ns" "$S/tmp-$ns"
        chmod 1777 "$S/tmp-$ns"
    done
    mungekey --create --keyfile="$S/munge/munge.key"

    {
        echo "ClusterName=$id"
        echo "SlurmctldHost=${nodes[0]}(10.77.0.1)"
        echo "AuthType=auth/munge"
        echo "AuthInfo=socket=$S/munge/munge.socket"
        echo "CredType=cred/munge"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "StateSaveLocation=$S/state"
        echo "SlurmdSpoolDir=$S/spool-%n"
        echo "SlurmctldPidFile=$S/slurmctld.pid"
        echo "SlurmdPidFile=$S/slurmd-%n.pid"
        echo "SlurmctldLogFile=$S/log/slurmctld.log"
        echo "SlurmdLogFile=$S/log/slurmd-%n.log"
        # No cgroups: the host's cgroup tree is not this test's to change.
        echo "ProctrackType=proctrack/pgid"
        echo "TaskPlugin=task/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core"
        echo "MpiDefault=none"
        echo "ReturnToService=2"
        echo "SchedulerType=sched/builtin"
        local i=0
        for ns in "${nodes[@]}"; do
            i=$((i + 1))
            # Every simulated node shares this machine's cores.
            echo "NodeName=$ns NodeAddr=10.77.0.$i CPUs=$(nproc) State=UNKNOWN"
        done
        echo "PartitionName=sim Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    } >"$S/slurm.conf"

    # munged's socket is a file: every node reaches it whatever its network namespace.
    daemon "${nodes[0]}" "$S/log/munged.out" munged --foreground --force --socket="$S/munge/munge.socket" \
        --key-file="$S/munge/munge.key" --pid-file="$S/munge/munged.pid" --seed-file="$S/munge/munged.seed" \
        --log-file="$S/log/munged.log"
    local t
    for ((t = 0; t < 100; t++)); do
        [[ -S $S/munge/munge.socket ]] && break
        sleep 0.1
    done
    [[ -S $S/munge/munge.socket ]] || die "munged did not start: $(tail -3 "$S/log/munged.log" 2>/dev/null)"
    daemon "${nodes[0]}" "$S/log/slurmctld.out" env SLURM_CONF="$S/slurm.conf" slurmctld -D -i
    for ns in "${nodes[@]}"; do
        daemon "$ns" "$S/log/slurmd-$ns.out" env SLURM_CONF="$S/slurm.conf" slurmd -D
    done
    # Up when every node is idle.
    local idle=0
    for ((t = 0; t < 300; t++)); do
        idle=$(cmd_run "$id" sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l || true)
        ((idle == ${#nodes[@]})) && break
        sleep 0.1
    done
    ((idle == ${#nodes[@]})) || die "only $idle of ${#nodes[@]} nodes came up; logs in $S/log: $(tail -2 "$S"/log/*.out)"
    echo "Slurm on cluster $id: slurmctld on ${nodes[0]}, slurmd on ${nodes[*]}; SLURM_CONF=$S/slurm.conf"
}

cmd_run() {
    local id=${1:-}
    S=$(state "$id")
    shift
    [[ $# -gt 0 ]] || die "run: give a command"
    [[ -f $S/slurm.conf ]] || die "Slurm is not up on cluster '$id'"
    SLURM_CONF=$S/slurm.conf "$CLUSTER" exec "$id" 1 "$@"
}

case ${1:-} in
    up) shift && cmd_up "$@" ;;
    run) shift && cmd_run "$@" ;;
    *) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2 && exit 2 ;;
esac
