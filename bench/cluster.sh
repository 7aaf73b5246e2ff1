#!/usr/bin/env bash
# `make bench-cluster`: W3 (784-1024-1024-10, global batch 256) on 1, 2 and 4
# simulated nodes (tests/cluster/cluster.sh: network namespaces, Open MPI over TCP only), one
# rank per node with one BLAS thread, the links capped with tc tbf at each of BENCH_RATES,
# and the allreduce overlapped with backward (--overlap on) or not (off).
#
# Runs, each fastest of BENCH_REPS, speed from the epochs after the first (warm-up):
#   compute  1 node, per-rank batch 256, 128, 64: the compute time of a step vs batch
#   probe    P nodes, global batch P (one row per rank), overlap off: a step is then almost
#            only the gradient allreduce (7.45 MB): its time per rate, and the bandwidth it
#            achieved, which checks the cap; with Open MPI's default allreduce algorithm,
#            the ring (coll_tuned_allreduce_algorithm 4) the scaling model assumes, and the
#            default with two TCP connections per rank pair (btl_tcp_links 2)
#   train    P nodes, global batch 256, overlap on and off
# On a 2-core machine the nodes share the cores: 4 one-thread ranks get half a core each, so
# compare per-step communication time and overlap, not raw speedup.
#
# Knobs (environment): BENCH_RATES="1gbit 10gbit off" ("off": the bare veth, probes only),
# BENCH_NODES="2 4", BENCH_REPS=2, BENCH_ROWS=8192, BENCH_EPOCHS=3.
# Output: bench/results/cluster-STAMP/{results.csv,table.md,*.log,*.jsonl}, and the table
# and the fitted scaling model (bench/scaling-model.sh) on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=$PWD/target/release
CLUSTER=$PWD/tests/cluster/cluster.sh
RATES=${BENCH_RATES:-1gbit 10gbit off}
NODES=${BENCH_NODES:-2 4}
REPS=${BENCH_REPS:-2}
ROWS=${BENCH_ROWS:-8192}
EPOCHS=${BENCH_EPOCHS:-3}
LAYERS=1024:relu,1024:relu,10:softmax
BATCH=256
PROBE_ROWS=128
OUT=bench/results/cluster-$(date -u +%Y%m%dT%H%M%SZ)
CSV=$OUT/results.csv
CACHE=bench/cache
DATA=$CACHE/cluster-w3-$ROWS.h5
PROBE_DATA=$CACHE/cluster-w3-$PROBE_ROWS.h5

for exe in nn-train nn-data; do
    [[ -x $BIN/$exe ]] || { echo "bench-cluster: $BIN/$exe is missing; run 'make bench-cluster'" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "bench-cluster: needs root (network namespaces)" >&2; exit 1; }
# nn-train sets its BLAS threads from --threads; nothing inherited should interfere.
unset OPENBLAS_NUM_THREADS OMP_NUM_THREADS
mkdir -p "$OUT" "$CACHE"

for f in "$DATA:$ROWS" "$PROBE_DATA:$PROBE_ROWS"; do
    [[ -f ${f%%:*} ]] || "$BIN/nn-data" gen --rows "${f##*:}" --features 784 --classes 10 --seed 1 --out "${f%%:*}" >/dev/null
done

# One cluster per node count, all removed on exit (whatever happens).
IDS=()
cleanup() {
    for id in "${IDS[@]}"; do "$CLUSTER" down "$id" || true; done
}
trap cleanup EXIT
# Sets ID to the cluster of $1 nodes, made on first use.
use_cluster() {
    ID=nntb$$n$1
    if [[ ! -d /run/nn-train-cluster/$ID ]]; then
        IDS+=("$ID")
        "$CLUSTER" up "$ID" "$1" >/dev/null
    fi
}

# mean over epochs >= 2 of the --metrics lines: "samples_per_s data fwd bwd allreduce opt comm"
# in seconds per epoch (comm: the allreduces' whole time, hidden or not; 0 if not reported).
epoch_means() {
    awk '
        function num(key,   s) { s = $0; sub(".*\"" key "\":", "", s); sub("[,}].*", "", s); return s + 0 }
        num("epoch") >= 2 { n++; sps += num("samples_per_s"); d += num("data_s"); f += num("forward_s")
                            b += num("backward_s"); a += num("allreduce_s"); o += num("optimizer_s")
                            if (index($0, "\"comm_s\":")) c += num("comm_s") }
        END { if (n == 0) exit 1; printf "%.3f %.6f %.6f %.6f %.6f %.6f %.6f\n", sps/n, d/n, f/n, b/n, a/n, o/n, c/n }' "$1"
}

echo "kind,nodes,ranks,rate,allreduce,overlap,batch,steps,samples_per_s,step_ms,compute_ms,forward_ms,backward_ms,optimizer_ms,data_ms,allreduce_ms,comm_share,comm_ms" >"$CSV"

# Open MPI's allreduce: its default algorithm; the ring the scaling model assumes; or the
# default with two TCP connections per pair of ranks (with one, a pair that sends both ways
# at once gets half the link each way).
mpi_args() {
    case $1 in
        default) ;;
        ring) echo --mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 4 ;;
        links2) echo --mca btl_tcp_links 2 ;;
    esac
}

# run KIND NODES RATE ALLREDUCE OVERLAP BATCH DATA ROWS: REPS runs, the fastest goes into the CSV.
run() {
    local kind=$1 nodes=$2 rate=$3 alg=$4 overlap=$5 batch=$6 data=$7 rows=$8
    local steps=$((rows / batch)) best="" rep
    use_cluster "$nodes"
    "$CLUSTER" shape "$ID" "$rate"
    local flags=(--data "$PWD/$data" --layers "$LAYERS" --batch-size "$batch" --epochs "$EPOCHS" --threads 1 --seed 1 --overlap "$overlap")
    for ((rep = 1; rep <= REPS; rep++)); do
        local name=$kind-$nodes-$rate-$alg-$overlap-$batch-$rep
        # shellcheck disable=SC2046 # mpi_args is a list of words
        "$CLUSTER" mpirun "$ID" $(mpi_args "$alg") "$BIN/nn-train" "${flags[@]}" --metrics "$PWD/$OUT/$name.jsonl" >"$OUT/$name.log" 2>&1 \
            || { echo "bench-cluster: $name failed:"; tail -5 "$OUT/$name.log"; exit 1; }
        local m
        m=$(epoch_means "$OUT/$name.jsonl")
        # Keep the run with the most samples/s.
        if [[ -z $best ]] || awk -v a="${m%% *}" -v b="${best%% *}" 'BEGIN { exit !(a > b) }'; then best=$m; fi
    done
    echo "$best" | awk -v k="$kind" -v n="$nodes" -v r="$rate" -v al="$alg" -v o="$overlap" -v bs="$batch" -v st="$steps" '{
        ms = 1000 / st; d = $2 * ms; f = $3 * ms; b = $4 * ms; a = $5 * ms; o2 = $6 * ms; c = $7 * ms
        step = d + f + b + a + o2
        printf "%s,%d,%d,%s,%s,%s,%d,%d,%.1f,%.2f,%.2f,%.2f,%.2f,%.2f,%.2f,%.2f,%.3f,%.2f\n",
            k, n, n, r, al, o, bs, st, $1, step, d + f + b + o2, f, b, o2, d, a, a / step, c }' | tee -a "$CSV" >/dev/null
    echo "  $kind: $nodes node(s), links $rate, allreduce $alg, overlap $overlap, batch $batch: $(tail -1 "$CSV" | cut -d, -f9-10 | sed 's/,/ samples\/s, /') ms/step"
}

echo "bench-cluster: results in $OUT"
for b in 256 128 64; do
    run compute 1 off default off "$b" "$DATA" "$ROWS"
done
for rate in $RATES; do
    for n in $NODES; do
        for alg in default ring links2; do
            run probe "$n" "$rate" "$alg" off "$n" "$PROBE_DATA" "$PROBE_ROWS"
        done
        [[ $rate == off ]] && continue
        for o in on off; do
            run train "$n" "$rate" default "$o" "$BATCH" "$DATA" "$ROWS"
        done
    done
done

./bench/scaling-model.sh "$CSV" | tee "$OUT/table.md"
