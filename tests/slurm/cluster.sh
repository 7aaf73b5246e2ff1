#!/usr/bin/env bash
# A private Slurm cluster on this one machine (munged, slurmctld, and one slurmd per
# simulated node) for the job-script tests.
#
#   tests/slurm/cluster.sh start DIR [NODES [CPUS]]  start the daemons; all state lives in DIR
#   tests/slurm/cluster.sh stop DIR                  stop the daemons started in DIR (by PID)
#
# NODES nodes (default 2) named n1, n2, ..., each advertising CPUS CPUs (default 8), in one
# partition `test`. After `start`, DIR/env holds what client commands need (SLURM_CONF); source it.
#
# Everything (config, munge key and socket, spool, state, logs, job temporary files) stays
# inside DIR; the daemons listen on free ports of their own and number jobs from a range of
# their own; `stop` cancels this cluster's jobs, then kills the daemons by the PIDs recorded
# in DIR and what is left of the jobs (processes holding files in DIR open, or whose
# environment names DIR's slurm.conf). So this cluster cannot collide with another Slurm or
# munge on the machine, nor with a second test cluster started at the same time.
#
# Why these settings: test machines have no systemd and no cgroups, so processes are tracked
# through /proc (proctrack/linuxproc) and not confined (task/none); nodes advertise CPUS CPUs
# whatever the machine has (config_overrides) so that a 4-rank job with 2 threads per rank
# fits on a 2-core machine; the scheduler runs every 2 s, and a requeued job may start again
# after cred_expire seconds (default 120, here 5), so the tests do not wait on Slurm's
# defaults. Several slurmd share one host through `slurmd -N NAME` with a port, spool and
# TmpFS per node (%n).
set -euo pipefail

usage() { echo "usage: $0 start DIR [NODES [CPUS]] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")
nodes=${3:-2}
cpus=${4:-8}
taken=" "

# A TCP port nobody listens on (and not handed out before), tried at random so that two
# clusters started at the same moment are unlikely to pick the same one.
free_port() {
    local p
    for _ in $(seq 1 500); do
        p=$((20000 + RANDOM % 30000))
        if [[ $taken != *" $p "* ]] && ! ss -Htan "( sport = :$p )" | grep -q .; then
            taken+="$p "
            echo "$p"
            return
        fi
    done
    echo "cluster.sh: no free TCP port found" >&2
    exit 1
}

# Starts a daemon that stays in the foreground (-D/-F) in a session of its own, so that it
# outlives the caller and its process group; records its PID.
launch() {
    local name=$1
    shift
    setsid "$@" >"$dir/log/$name.out" 2>&1 </dev/null &
    echo $! >"$dir/pids/$name"
}

# Processes of this cluster that are not in DIR/pids: the slurmstepd of each job step (they
# keep the slurmd log in DIR open) and the jobs' own processes (batch scripts, ranks: their
# environment names this cluster's SLURM_CONF and a job).
strays() {
    local p env
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        if [ "$p" = $$ ] || [ "$p" = "$BASHPID" ]; then continue; fi
        if find "/proc/$p/fd" -maxdepth 1 -lname "$dir/*" 2>/dev/null | grep -q .; then
            echo "$p"
            continue
        fi
        { env=$(tr '\0' '\n' <"/proc/$p/environ"); } 2>/dev/null || continue
        if grep -qxF "SLURM_CONF=$dir/etc/slurm.conf" <<<"$env" && grep -q "^SLURM_JOB_ID=" <<<"$env"; then
            echo "$p"
        fi
    done
}

stop() {
    local f pid
    # Jobs still running end first, at once (SIGKILL to every step and the batch script).
    if [ -f "$dir/etc/slurm.conf" ] && [ -f "$dir/pids/slurmctld" ]; then
        export SLURM_CONF=$dir/etc/slurm.conf
        local jobs
        mapfile -t jobs < <(timeout 10 squeue -h -o %A 2>/dev/null || true)
        if [ ${#jobs[@]} -gt 0 ]; then
            timeout 10 scancel --full --signal=KILL "${jobs[@]}" 2>/dev/null || true
            timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
        fi
    fi
    # The daemons: SIGTERM to all, then SIGKILL to any still there after 2 s (their state is
    # thrown away anyway).
    local pids=()
    for f in "$dir"/pids/*; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
        rm -f "$f"
    done
    for _ in $(seq 1 20); do
        kill -0 "${pids[@]}" 2>/dev/null || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    # Whatever is left of the jobs (slurmstepd ignores SIGTERM).
    for pid in $(strays); do
        kill -KILL "$pid" 2>/dev/null || true
    done
}

fail() {
    echo "cluster.sh: $1; logs in $dir/log" >&2
    tail -n 20 "$dir"/log/* >&2 || true
    stop
    exit 1
}

wait_for() { # seconds, description, command...
    local secs=$1 what=$2
    shift 2
    for _ in $(seq 1 $((secs * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    fail "timed out after ${secs}s waiting for $what"
}

all_idle() {
    [ "$(sinfo -h -p test -o '%t %D')" = "idle $nodes" ]
}

start() {
    local b
    for b in munged slurmctld slurmd sbatch scontrol sinfo ss setsid; do
        command -v "$b" >/dev/null || { echo "cluster.sh: $b not found (Debian packages: slurm-wlm munge iproute2)" >&2; exit 3; }
    done
    [ ! -e "$dir/etc/slurm.conf" ] || { echo "cluster.sh: $dir already holds a cluster" >&2; exit 2; }
    mkdir -p "$dir"/{etc,pids,log,spool/ctld,munge}
    # munged refuses a socket folder others can write to and a key others can read.
    chmod 0755 "$dir" "$dir/munge"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$dir/munge/munge.key"
    local socket=$dir/munge/munge.socket
    launch munged munged -F --force --socket="$socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed"
    wait_for 10 "munged's socket" test -S "$socket"

    local host ctld_port conf=$dir/etc/slurm.conf i
    host=$(hostname -s)
    ctld_port=$(free_port)
    cat >"$conf" <<CONF
# Written by tests/slurm/cluster.sh: a private test cluster in $dir.
ClusterName=nntest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$socket,cred_expire=5
StateSaveLocation=$dir/spool/ctld
SlurmctldPidFile=$dir/spool/slurmctld.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdSpoolDir=$dir/spool/%n
SlurmdPidFile=$dir/spool/slurmd.%n.pid
SlurmdLogFile=$dir/log/slurmd.%n.log
# PMIx keeps its per-step folders here; one per node, as nodes share this host.
TmpFS=$dir/tmp/%n
# Job ids of their own (PMIx and Open MPI name temporary files after them).
FirstJobId=$((ctld_port * 100))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2,batch_sched_delay=0
# No slurmdbd, so no sacct: finished jobs stay visible to scontrol for MinJobAge seconds,
# and every finished run is logged in the job-completion file.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
MinJobAge=600
KillWait=15
InactiveLimit=0
MailProg=/bin/true
CONF
    local names=()
    for i in $(seq 1 "$nodes"); do
        names+=("n$i")
        mkdir -p "$dir/spool/n$i" "$dir/tmp/n$i"
        echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$(free_port) CPUs=$cpus State=UNKNOWN" >>"$conf"
    done
    local list
    list=$(IFS=,; echo "${names[*]}")
    echo "PartitionName=test Nodes=$list Default=YES MaxTime=INFINITE State=UP" >>"$conf"
    echo "export SLURM_CONF=$conf" >"$dir/env"
    export SLURM_CONF=$conf
    launch slurmctld slurmctld -D -f "$conf"
    for i in $(seq 1 "$nodes"); do
        launch "slurmd.n$i" slurmd -D -f "$conf" -N "n$i"
    done
    wait_for 30 "$nodes idle nodes" all_idle
    echo "cluster.sh: Slurm up in $dir (slurmctld on port $ctld_port; nodes $list with $cpus CPUs each)"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
