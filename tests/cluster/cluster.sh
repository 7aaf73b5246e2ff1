#!/usr/bin/env bash
# A simulated cluster on one machine: K "nodes", each a network namespace with its own
# address (10.77.0.i) and host name (<id>-n<i>), joined by veth pairs to a bridge that lives
# in a "switch" namespace of its own. Nothing is added to the host's network namespace, so
# several clusters (each with its own <id>) can exist at once, even with the same subnet.
# Open MPI launches ranks into the nodes through this script's `rsh` command, which plays
# ssh: it maps a host name to `ip netns exec <namespace>` and gives the process the node's
# host name (a UTS namespace). Everything crosses the nodes' links over TCP.
#
#   cluster.sh up ID K [RATE]       make nodes ID-n1..ID-nK (K = 1..8); RATE caps each link
#   cluster.sh shape ID RATE|off    cap every node's link (both directions) with tc tbf
#   cluster.sh mpirun ID [-N PER_NODE] [mpirun args...]
#                                   run mpirun on node 1 with PER_NODE ranks (default 1) on
#                                   each of the K nodes (-n K*PER_NODE), TCP only
#   cluster.sh exec ID I CMD...     run CMD on node I (its namespace and host name)
#   cluster.sh pids ID I [NAME]     PIDs in node I (only processes called NAME, if given)
#   cluster.sh bytes ID I           bytes sent and received on node I's link: "TX RX"
#   cluster.sh down ID              kill what runs in ID's namespaces, remove all ID made
#   cluster.sh list                 clusters that exist, with the PID that made them
#   cluster.sh gc                   `down` every cluster whose maker is no longer running
#                                   (left behind by a test run that was killed)
#   cluster.sh rsh HOST CMD...      the Open MPI rsh agent (plm_rsh_agent)
#
# ID: 2-16 lower-case letters and digits, starting with a letter (e.g. nnt<pid>). RATE: a tc
# rate, e.g. 1gbit, 10gbit, 25gbit. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2.
# State (node list, host files) is kept in $NNT_CLUSTER_RUN/ID (default /run/nn-train-cluster).
#
# Link shaping: tc tbf on the node side (eth0, what a node sends) and on the switch side
# (p<i>, what it receives), i.e. a full-duplex link of RATE each way. Burst = 1 ms at RATE
# (at least 64 KiB, so a TSO segment fits), queue = 20 ms at RATE. netem is not in this
# kernel, so latency cannot be added: the links have veth latency (microseconds).

set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
RUN_DIR=${NNT_CLUSTER_RUN:-/run/nn-train-cluster}
SUBNET=10.77.0
MAX_NODES=8

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

check_id() {
    [[ ${1:-} =~ ^[a-z][a-z0-9]{1,15}$ ]] || die "bad cluster id '${1:-}' (2-16 lower-case letters/digits, starting with a letter)"
}

# The nodes of cluster $1, one namespace name a line (fails when the cluster does not exist).
nodes() {
    [[ -f $RUN_DIR/$1/nodes ]] || die "no cluster '$1' (no $RUN_DIR/$1/nodes)"
    cat "$RUN_DIR/$1/nodes"
}

node_count() {
    nodes "$1" | wc -l
}

# tbf on one device in one namespace. $1 namespace, $2 device, $3 rate or "off".
shape_dev() {
    local ns=$1 dev=$2 rate=$3
    if [[ $rate == off ]]; then
        ip -n "$ns" link show "$dev" >/dev/null
        tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
        return
    fi
    local bits
    bits=$(tc_rate_bits "$rate")
    local burst=$((bits / 8 / 1000)) limit=$((bits / 8 / 50))
    ((burst < 65536)) && burst=65536
    ((limit < 4 * burst)) && limit=$((4 * burst))
    tc -n "$ns" qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" limit "$limit"
}

# A tc rate ("10gbit", "500mbit", "1000000bit") in bits/s.
tc_rate_bits() {
    local r=${1,,}
    [[ $r =~ ^([0-9]+)(bit|kbit|mbit|gbit)$ ]] || die "bad rate '$1' (e.g. 1gbit, 10gbit, 500mbit)"
    local n=${BASH_REMATCH[1]}
    case ${BASH_REMATCH[2]} in
        bit) echo "$n" ;;
        kbit) echo $((n * 1000)) ;;
        mbit) echo $((n * 1000000)) ;;
        gbit) echo $((n * 1000000000)) ;;
    esac
}

cmd_up() {
    local id=${1:-} k=${2:-} rate=${3:-}
    check_id "$id"
    [[ $k =~ ^[0-9]+$ ]] && ((k >= 1 && k <= MAX_NODES)) || die "bad node count '$k' (1..$MAX_NODES)"
    [[ -z $rate ]] || tc_rate_bits "$rate" >/dev/null
    command -v ip >/dev/null && command -v tc >/dev/null || die "iproute2 (ip, tc) is not installed"
    mkdir -p "$RUN_DIR"
    # mkdir is the lock: a second `up` of the same id fails here and touches nothing.
    mkdir "$RUN_DIR/$id" 2>/dev/null || die "cluster '$id' exists already ($RUN_DIR/$id)"
    if [[ -n $(ip netns list | grep "^$id-" || true) ]]; then
        rmdir "$RUN_DIR/$id"
        die "namespaces named $id-* exist already"
    fi
    # From here on, a failure removes what was made.
    # shellcheck disable=SC2064 # $id is expanded now: the trap runs after this function ends.
    trap "if [[ \$? -ne 0 ]]; then echo 'cluster.sh: up $id failed; removing it' >&2; cmd_down '$id'; fi" EXIT
    # Remembered outside this cluster's state: another cluster may be the last one out.
    if [[ ! -d /etc/netns ]]; then
        mkdir /etc/netns
        touch "$RUN_DIR/made-etc-netns"
    fi
    local sw=$id-sw
    echo "$sw" >"$RUN_DIR/$id/switch"
    : >"$RUN_DIR/$id/nodes"
    echo $PPID >"$RUN_DIR/$id/owner"
    ip netns add "$sw"
    ip -n "$sw" link set lo up
    ip -n "$sw" link add br0 type bridge
    # Bridged frames must not meet the host's iptables (br_netfilter): this bridge is a switch.
    ip -n "$sw" link set br0 type bridge nf_call_iptables 0 nf_call_ip6tables 0 2>/dev/null || true
    ip -n "$sw" link set br0 up
    local hosts="127.0.0.1 localhost"$'\n'
    for ((i = 1; i <= k; i++)); do
        hosts+="$SUBNET.$i $id-n$i"$'\n'
    done
    for ((i = 1; i <= k; i++)); do
        local ns=$id-n$i
        echo "$ns" >>"$RUN_DIR/$id/nodes"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$sw" link add "p$i" type veth peer name eth0 netns "$ns"
        ip -n "$sw" link set "p$i" master br0 up
        ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        # `ip netns exec` bind-mounts these over /etc/hosts and /etc/hostname in the node.
        mkdir -p "/etc/netns/$ns"
        printf '%s' "$hosts" >"/etc/netns/$ns/hosts"
        echo "$ns" >"/etc/netns/$ns/hostname"
    done
    if [[ -n $rate ]]; then
        cmd_shape "$id" "$rate"
    fi
    trap - EXIT
    echo "cluster $id: $k node(s) $id-n1..$id-n$k at $SUBNET.1..$SUBNET.$k/24${rate:+, links capped at $rate}"
}

cmd_shape() {
    local id=${1:-} rate=${2:-}
    check_id "$id"
    [[ -n $rate ]] || die "shape: give a rate (e.g. 1gbit) or off"
    local sw i=0
    sw=$(cat "$RUN_DIR/$id/switch")
    for ns in $(nodes "$id"); do
        i=$((i + 1))
        shape_dev "$ns" eth0 "$rate"
        shape_dev "$sw" "p$i" "$rate"
    done
    echo "$rate" >"$RUN_DIR/$id/rate"
}

cmd_down() {
    local id=${1:-}
    check_id "$id"
    local d=$RUN_DIR/$id
    local all=()
    [[ -f $d/nodes ]] && mapfile -t all <"$d/nodes"
    [[ -f $d/switch ]] && all+=("$(cat "$d/switch")")
    # Only namespaces this cluster recorded, plus (after a crash mid-`up`) ones with its prefix.
    while read -r ns _; do
        [[ $ns == "$id"-* ]] && all+=("$ns")
    done < <(ip netns list 2>/dev/null)
    local ns pid
    for ns in $(printf '%s\n' "${all[@]}" | sort -u); do
        if [[ -e /run/netns/$ns ]]; then
            # Processes still in the node (ranks, daemons) would keep its network alive.
            for pid in $(ip netns pids "$ns" 2>/dev/null); do
                kill -KILL "$pid" 2>/dev/null || true
            done
            ip netns del "$ns" 2>/dev/null || true
        fi
        [[ $ns == *-sw ]] || rm -rf "/etc/netns/$ns"
    done
    # Only when one of these clusters made it, and only once nothing is left in it.
    if [[ -f $RUN_DIR/made-etc-netns ]] && rmdir /etc/netns 2>/dev/null; then
        rm -f "$RUN_DIR/made-etc-netns"
    fi
    rm -rf "$d"
}

# Run "$@" in node namespace $1 with the node's host name.
in_node() {
    local ns=$1
    shift
    # unshare --uts: the host name is the node's, as gethostname() sees it (Open MPI does).
    exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$ns" "$@"
}

node_ns() {
    local id=$1 i=$2
    [[ $i =~ ^[0-9]+$ ]] && ((i >= 1 && i <= $(node_count "$id"))) || die "cluster '$id' has no node $i"
    echo "$id-n$i"
}

cmd_exec() {
    local id=${1:-} i=${2:-}
    check_id "$id"
    local ns
    ns=$(node_ns "$id" "$i")
    shift 2
    [[ $# -gt 0 ]] || die "exec: give a command"
    in_node "$ns" "$@"
}

cmd_pids() {
    local id=${1:-} i=${2:-} name=${3:-}
    check_id "$id"
    local ns pid
    ns=$(node_ns "$id" "$i")
    for pid in $(ip netns pids "$ns"); do
        if [[ -z $name || $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
            echo "$pid"
        fi
    done
}

cmd_bytes() {
    local id=${1:-} i=${2:-}
    check_id "$id"
    local ns
    ns=$(node_ns "$id" "$i")
    ip netns exec "$ns" sh -c 'echo "$(cat /sys/class/net/eth0/statistics/tx_bytes) $(cat /sys/class/net/eth0/statistics/rx_bytes)"'
}

cmd_mpirun() {
    local id=${1:-}
    check_id "$id"
    shift
    local per_node=1
    if [[ ${1:-} == -N ]]; then
        per_node=${2:-}
        shift 2
    fi
    [[ $per_node =~ ^[1-9][0-9]*$ ]] || die "bad -N '$per_node'"
    local k hostfile
    k=$(node_count "$id")
    hostfile=$RUN_DIR/$id/hostfile.$per_node
    nodes "$id" | sed "s/\$/ slots=$per_node/" >"$hostfile"
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    # The nodes share this machine's cores: a rank waiting for a message must yield its core
    # (measured: 25 ms instead of 0.4 ms per digits step on 4 ranks without it).
    export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
    # mpirun runs on node 1, as a batch script does on the first node of an allocation.
    # Only this cluster's subnet carries Open MPI's out-of-band and MPI traffic, and the MPI
    # traffic is TCP only (no shared memory, which would bypass the network between nodes
    # that share this machine). No tree spawn: every daemon is started from node 1.
    in_node "$id-n1" mpirun \
        --hostfile "$hostfile" -n $((k * per_node)) --bind-to none \
        --mca plm_rsh_agent "$SELF rsh" --mca plm_rsh_no_tree_spawn 1 \
        --mca oob_tcp_if_include "$SUBNET.0/24" --mca btl_tcp_if_include "$SUBNET.0/24" \
        --mca btl tcp,self \
        "$@"
}

# The rsh agent: Open MPI runs `<agent> HOST orted args...` and, as for ssh, the words after
# HOST are one command line for a shell on HOST.
cmd_rsh() {
    local host=${1:-}
    shift || true
    [[ $host =~ ^([a-z][a-z0-9]{1,15})-n[0-9]+$ ]] || die "rsh: '$host' is not a simulated node"
    local id=${BASH_REMATCH[1]}
    [[ -n $(nodes "$id" | grep -x "$host" || true) ]] || die "rsh: cluster '$id' has no node '$host'"
    [[ $# -gt 0 ]] || die "rsh: no command for $host"
    in_node "$host" sh -c "$*"
}

cmd_list() {
    local d id owner
    for d in "$RUN_DIR"/*/; do
        [[ -f $d/nodes ]] || continue
        id=$(basename "$d")
        owner=$(cat "$d/owner" 2>/dev/null || echo "?")
        printf '%s %s node(s), made by PID %s (%s)\n' "$id" "$(node_count "$id")" "$owner" \
            "$(kill -0 "$owner" 2>/dev/null && echo running || echo gone)"
    done
}

cmd_gc() {
    local d id owner
    for d in "$RUN_DIR"/*/; do
        [[ -f $d/owner ]] || continue
        id=$(basename "$d")
        owner=$(cat "$d/owner")
        if ! kill -0 "$owner" 2>/dev/null; then
            echo "removing cluster $id (its maker, PID $owner, is gone)"
            cmd_down "$id"
        fi
    done
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        shape) cmd_shape "$@" ;;
        mpirun) cmd_mpirun "$@" ;;
        exec) cmd_exec "$@" ;;
        pids) cmd_pids "$@" ;;
        bytes) cmd_bytes "$@" ;;
        rsh) cmd_rsh "$@" ;;
        list) cmd_list ;;
        gc) cmd_gc ;;
        *) sed -n '2,/^$/s/^# \{0,1\}//p' "$SELF" >&2; exit 2 ;;
    esac
}

main "$@"
