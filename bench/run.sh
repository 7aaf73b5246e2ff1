#!/usr/bin/env bash
# The benchmark suite, run by `make bench` (after `make build`).
#
# First it measures the CPU's vector peaks on one core (examples/vector_peak.rs: f32 FMA and
# AVX512-BF16's bf16 dot product), which bound what bf16 can gain over f32 on that path. Then
# for each workload it measures the sgemm-bound limit (examples/sgemm_limit.rs) for one rank
# with 2 threads and for two ranks with 1 thread each, then trains BENCH_REPS times in each
# layout (alternating, so a change in machine load hits both alike), and finally prints one
# table (examples/bench_report.rs). Raw files go to bench/results/STAMP/, the results as JSON
# Lines to bench/results/STAMP.jsonl and the table to bench/results/STAMP.md.
#
# Knobs (environment):
#   BENCH_REPS=5            training runs per workload and layout
#   BENCH_WORKLOADS="W1 W2 W3"  which workloads (W4 needs BENCH_W4=1 as well)
#   BENCH_W4=1              also run W4: generates a 6.3 GB file in bench/cache (once)
#   BENCH_QUICK=1           tiny sizes to check the harness (numbers mean nothing)
#   BENCH_ARGS="..."        extra nn-train flags for every run (e.g. "--shuffle local")
#   BENCH_TIMEOUT=1800      seconds before one run is killed
#   BENCH_CORETYPE=1        W1 and W3 also with the BLAS kernels forced three ways: a CPU that
#                           OpenBLAS does not recognise (simulated: it "detects" Prescott and
#                           nn-train chooses), the best core set by hand (BENCH_BEST_CORE,
#                           default: the core nn-train runs as is), and Prescott by hand
#   BENCH_PEERS=1           also PyTorch (float32 and bf16 autocast) on the same workloads, in
#                           the same layouts, BENCH_PEER_REPS times (default 3): "vs best peer"
#                           is then measured in this run (`make bench-peers` sets this; the
#                           Python environment is built under target/ by bench/peers/env.sh)
#
# Speed is the training steps of the LAST epochs: every run trains 2 epochs or more and the
# first is the warm-up. Data sets are generated with `nn-data gen` and cached in bench/cache/.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release
REPS=${BENCH_REPS:-5}
WORKLOADS=${BENCH_WORKLOADS:-W1 W2 W3}
QUICK=${BENCH_QUICK:-0}
CORETYPE_RUNS=${BENCH_CORETYPE:-0}
PEERS=${BENCH_PEERS:-0}
PEER_REPS=${BENCH_PEER_REPS:-3}
EXTRA=${BENCH_ARGS:-}
TIMEOUT=${BENCH_TIMEOUT:-1800}
SEED=1
CACHE=bench/cache
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=bench/results/$STAMP
MANIFEST=$OUT/manifest.jsonl
FAILED=0

if [[ ${BENCH_W4:-0} == 1 && " $WORKLOADS " != *" W4 "* ]]; then
    WORKLOADS="$WORKLOADS W4"
fi
if [[ ${BENCH_W4:-0} != 1 && " $WORKLOADS " == *" W4 "* ]]; then
    WORKLOADS=${WORKLOADS//W4/}
fi
[[ $REPS =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_REPS must be a positive integer, got '$REPS'" >&2; exit 2; }

# Open MPI as root (the Makefile exports these too, for running this script by hand).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The Makefile makes waiting ranks yield for oversubscribed tests; the benchmark places one
# rank per core, where Open MPI's default (busy-polling) is what a user gets.
unset OMPI_MCA_mpi_yield_when_idle
# nn-train sets the BLAS threads itself (--threads); no inherited setting should interfere.
unset OPENBLAS_NUM_THREADS OMP_NUM_THREADS

for exe in nn-train nn-data examples/sgemm_limit examples/vector_peak examples/bench_report; do
    [[ -x $BIN/$exe ]] || { echo "bench: $BIN/$exe is missing; run 'make bench' (it builds them)" >&2; exit 1; }
done
mkdir -p "$OUT" "$CACHE"
PEER_PY=""
if [[ $PEERS == 1 ]]; then
    PEER_PY=$(./bench/peers/env.sh)
fi

# json KEY VALUE ...: one JSON object of strings; a value written =V goes in as raw JSON (V).
json() {
    local out="{" sep="" v
    while (($#)); do
        v=$2
        if [[ $v == =* ]]; then v=${v:1}; else v="\"${v//\"/\\\"}\""; fi
        out+="$sep\"$1\":$v"
        sep=","
        shift 2
    done
    echo "$out}"
}

note() {
    echo "bench: $*"
    json kind note text "$*" >>"$MANIFEST"
}

# The workloads. Sets: ROWS FEATURES CLASSES LAYERS BATCH EPOCHS WREPS DATA VAL.
define() {
    VAL="" CLASSES=10 WREPS=$REPS EPOCHS=2
    case $1 in
        W1) ROWS=200000 FEATURES=10 LAYERS=64:relu,64:relu,10:softmax BATCH=32 ;;
        W2) ROWS=0 FEATURES=64 LAYERS=128:relu,128:relu,10:softmax BATCH=32 EPOCHS=50
            DATA=data/digits/train.h5 VAL=data/digits/test.h5 ;;
        W3) ROWS=60000 FEATURES=784 LAYERS=1024:relu,1024:relu,10:softmax BATCH=256 ;;
        # W4 is about memory: one run per layout is enough.
        W4) ROWS=2000000 FEATURES=784 LAYERS=1024:relu,1024:relu,10:softmax BATCH=256 WREPS=1 ;;
        *) echo "bench: unknown workload '$1' (W1 W2 W3 W4)" >&2; exit 2 ;;
    esac
    if [[ $QUICK == 1 ]]; then
        case $1 in
            W1 | W3) ROWS=$((ROWS / 20)) ;;
            W2) EPOCHS=4 ;;
            W4) ROWS=$((ROWS / 200)) ;;
        esac
    fi
    if ((ROWS > 0)); then
        DATA=$CACHE/gen-rows$ROWS-features$FEATURES-classes$CLASSES-seed$SEED.h5
    fi
}

# Generates DATA once; a partly written file never takes the cached name.
generate() {
    [[ -f $DATA ]] && return 0
    local size_mb=$((ROWS * (FEATURES + 2) * 4 / 1000000 + 1)) free_mb
    free_mb=$(df -Pm "$CACHE" | awk 'NR==2 {print $4}')
    if ((free_mb < size_mb + 1000)); then
        echo "bench: $DATA needs about $size_mb MB (and 1 GB to spare) but $CACHE has $free_mb MB free" >&2
        exit 1
    fi
    echo "bench: generating $DATA (about $size_mb MB, cached for later runs)"
    local tmp=$DATA.tmp-$$
    "$BIN/nn-data" gen --rows "$ROWS" --features "$FEATURES" --classes "$CLASSES" --seed "$SEED" --out "$tmp"
    mv "$tmp" "$DATA"
}

# CPU seconds used since boot: BUSY by the whole machine (user, nice, system, irq, softirq
# and steal of every core, from /proc/stat), MINE by the runs this script has waited for (the
# `times` builtin, which must run in this shell, not a subshell). BUSY - MINE over a run is
# what other processes took: the noise the table's "others" column reports.
cpu_marks() {
    BUSY=$(awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz}' /proc/stat)
    times >"$OUT/.times"
    MINE=$(awk 'NR == 2 {for (i = 1; i <= 2; i++) {split($i, t, /[ms]/); s += t[1] * 60 + t[2]} printf "%.2f", s}' "$OUT/.times")
}

# others_cpu BUSY0 MINE0: CPU seconds other processes used since those marks.
others_cpu() {
    local busy0=$1 mine0=$2
    cpu_marks
    awk "BEGIN {v = ($BUSY - $busy0) - ($MINE - $mine0); printf \"%.2f\", v < 0 ? 0 : v}"
}

# layout RANKS: sets the mpirun placement and BLAS threads of that layout (2 cores).
layout() {
    if (($1 == 1)); then
        PLACE=(mpirun -n 1 --bind-to none) THREADS=2
    else
        PLACE=(mpirun -n "$1" --bind-to core) THREADS=1
    fi
}

# field FILE NAME FORMAT: a number of a one-line JSON file, formatted, or "-" where null.
field() {
    grep -o "\"$2\":[-0-9.e]*" "$1" | cut -d: -f2 | awk -v f="$3" 'NF {printf f, $1; ok = 1} END {if (!ok) printf "-"}'
}

# The f32 FMA and bf16 dot-product peaks of one core (one thread, not pinned: see the example).
vector_peak() {
    local file=$OUT/vector-peak.json code=0
    timeout "$TIMEOUT" "$BIN/examples/vector_peak" >"$file" 2>"$file.err" || code=$?
    json kind vector_peak exit "=$code" file "$file" >>"$MANIFEST"
    if ((code == 0)); then
        echo "bench: vector peaks, one core: f32 FMA ($(field "$file" fp32_fma_width %d)-bit)" \
            "$(field "$file" fp32_fma_gflops %.1f) GFLOP/s; bf16 dot product (VDPBF16PS)" \
            "$(field "$file" bf16_dot_gflops %.1f) GFLOP/s; bf16 / f32 peak $(field "$file" bf16_to_fp32 %.2f)"
    else
        FAILED=$((FAILED + 1))
        echo "bench: vector_peak failed ($code):" >&2
        tail -5 "$file.err" >&2
    fi
}

sgemm() { # workload ranks
    layout "$2"
    local dims per_rank=$(((BATCH + $2 - 1) / $2))
    # shellcheck disable=SC2001 # a pattern replacement needs extglob
    dims=$FEATURES,$(sed 's/:[a-z]*//g' <<<"$LAYERS") # 64:relu,10:softmax -> 64,10
    local file=$OUT/sgemm-$1-$2x$THREADS.jsonl code=0 start end busy0 mine0 others
    cpu_marks
    busy0=$BUSY mine0=$MINE start=$(date +%s.%N)
    timeout "$TIMEOUT" "${PLACE[@]}" "$BIN/examples/sgemm_limit" --dims "$dims" --batch "$per_rank" \
        --threads "$THREADS" >"$file" 2>"$file.err" || code=$?
    end=$(date +%s.%N)
    others_cpu "$busy0" "$mine0" >"$OUT/.others"
    others=$(<"$OUT/.others")
    json kind sgemm workload "$1" ranks "=$2" threads "=$THREADS" exit "=$code" file "$file" \
        wall_s "=$(awk "BEGIN {printf \"%.3f\", $end - $start}")" others_cpu_s "=$others" >>"$MANIFEST"
    if ((code == 0)); then
        # What a rank measured and which kernels ran (every rank runs the same ones).
        echo "bench: $1 sgemm limit $2x$THREADS: $(grep -o '"gflops_best":[0-9.]*' "$file" | cut -d: -f2 |
            awk '{s += $1} END {printf "%.1f", s}') GFLOP/s; $(grep -o '"blas":"[^"]*"' "$file" | head -1 | cut -d'"' -f4)"
    else
        FAILED=$((FAILED + 1))
        echo "bench: sgemm_limit failed ($code):" >&2
        tail -5 "$file.err" >&2
    fi
}

# variant NAME: sets VENV (environment assignments) and VFLAGS (extra nn-train flags) of an
# nn-train variant; "" is nn-train as is.
variant() {
    VENV=() VFLAGS=()
    case $1 in
        "") ;;
        # A CPU that OpenBLAS does not recognise, reproduced on any CPU: the library is made to
        # pick Prescott and nn-train is told to take that as the library's own detection.
        blas-unrecognised) VENV=(OPENBLAS_CORETYPE=Prescott NN_TRAIN_TEST_CORETYPE_AS_DETECTED=1) ;;
        blas-hand) VENV=("OPENBLAS_CORETYPE=$BEST_CORE") ;;
        blas-prescott) VENV=(OPENBLAS_CORETYPE=Prescott) ;;
        # Mixed precision (W3, both layouts): bf16 products on AMX or AVX512-BF16.
        bf16) VFLAGS=(--precision bf16) ;;
        # The same on a CPU with AVX512-BF16 but no AMX (Cooper Lake, Zen 4), measured on one
        # with AMX: oneDNN is capped below its AMX kernels.
        bf16-avx512) VENV=(NN_TRAIN_HIDE_AMX=1) VFLAGS=(--precision bf16) ;;
        *) echo "bench: unknown variant '$1'" >&2; exit 2 ;;
    esac
}

# variants WORKLOAD: the nn-train variants run for a workload, besides nn-train as is.
variants() {
    local v=()
    if [[ $CORETYPE_RUNS == 1 && ($1 == W1 || $1 == W3) ]]; then
        v+=(blas-unrecognised blas-hand blas-prescott)
    fi
    # --precision bf16 rows for W3 where the CPU has a bf16 unit (nn-train's own check says).
    if [[ $1 == W3 ]]; then
        if "$BIN/nn-train" --data "$DATA" --layers 10:softmax --epochs 0 --precision bf16 >"$OUT/.bf16" 2>&1; then
            v+=(bf16)
            if grep -q 'products on AMX' "$OUT/.bf16"; then
                v+=(bf16-avx512)
            fi
        else
            note "W3 bf16 rows skipped: $(grep -m1 error "$OUT/.bf16")" >&2
        fi
    fi
    echo "${v[@]}"
}

train() { # workload ranks rep [variant]
    layout "$2"
    local variant=${4:-}
    variant "$variant"
    local name=$OUT/$1${variant:+-$variant}-$2x$THREADS-rep$3 code=0 start end busy0 mine0 others
    local args=(--data "$DATA" --layers "$LAYERS" --batch-size "$BATCH" --epochs "$EPOCHS"
        --loss crossentropy --optimizer adam --lr 0.001 --epsilon 1e-7 --seed "$SEED"
        --threads "$THREADS" --profile --metrics "$name.jsonl")
    [[ -n $VAL ]] && args+=(--val "$VAL")
    # shellcheck disable=SC2206 # BENCH_ARGS is a list of flags, split on spaces
    args+=($EXTRA "${VFLAGS[@]}")
    cpu_marks
    busy0=$BUSY mine0=$MINE start=$(date +%s.%N)
    timeout "$TIMEOUT" env "${VENV[@]}" "${PLACE[@]}" "$BIN/nn-train" "${args[@]}" >"$name.log" 2>&1 || code=$?
    end=$(date +%s.%N)
    others_cpu "$busy0" "$mine0" >"$OUT/.others"
    others=$(<"$OUT/.others")
    json kind train workload "$1" variant "$variant" env "${VENV[*]}" ranks "=$2" threads "=$THREADS" rep "=$3" \
        exit "=$code" wall_s "=$(awk "BEGIN {printf \"%.3f\", $end - $start}")" others_cpu_s "=$others" \
        metrics "$name.jsonl" log "$name.log" >>"$MANIFEST"
    if ((code == 0)); then
        echo "bench: $1${variant:+ $variant} $2x$THREADS rep $3: $(grep -E '^epoch ' "$name.log" | tail -1)" \
            "[other processes: $(awk "BEGIN {printf \"%.0f\", 100 * $others / (($end - $start) * $(nproc))}")% CPU]"
    else
        FAILED=$((FAILED + 1))
        echo "bench: $1${variant:+ $variant} $2x$THREADS rep $3 FAILED (exit $code); from $name.log:" >&2
        grep -m 3 'error' "$name.log" >&2 || tail -5 "$name.log" >&2
    fi
}

peer() { # workload ranks rep precision
    layout "$2"
    [[ -z $VAL ]] || return 0 # W2's digits: not measured by the peers (yet)
    local name=$OUT/$1-torch-$4-$2x$THREADS-rep$3 code=0 start end busy0 mine0 others
    cpu_marks
    busy0=$BUSY mine0=$MINE start=$(date +%s.%N)
    timeout "$TIMEOUT" "${PLACE[@]}" "$PEER_PY" bench/peers/torch_bench.py --data "$DATA" --layers "$LAYERS" \
        --batch-size "$BATCH" --epochs "$EPOCHS" --threads "$THREADS" --precision "$4" --seed "$SEED" \
        --out "$name.jsonl" >"$name.log" 2>&1 || code=$?
    end=$(date +%s.%N)
    others_cpu "$busy0" "$mine0" >"$OUT/.others"
    others=$(<"$OUT/.others")
    json kind peer workload "$1" peer "PyTorch $4" precision "$4" ranks "=$2" threads "=$THREADS" rep "=$3" \
        exit "=$code" wall_s "=$(awk "BEGIN {printf \"%.3f\", $end - $start}")" others_cpu_s "=$others" \
        file "$name.jsonl" log "$name.log" >>"$MANIFEST"
    if ((code == 0)); then
        echo "bench: $1 PyTorch $4 $2x$THREADS rep $3: $(grep -o '"samples_per_s": [0-9.]*' "$name.jsonl") samples/s"
    else
        FAILED=$((FAILED + 1))
        echo "bench: $1 PyTorch $4 $2x$THREADS rep $3 FAILED (exit $code); from $name.log:" >&2
        tail -5 "$name.log" >&2
    fi
}

json kind env date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" host "$(hostname)" \
    commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo +changes)" \
    reps "=$REPS" quick "=$QUICK" extra_args "$EXTRA" loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)" >"$MANIFEST"
echo "bench: $WORKLOADS; runs per workload and layout: $REPS; load average $(cut -d' ' -f1-3 /proc/loadavg); raw files in $OUT"
[[ $QUICK == 1 ]] && note "BENCH_QUICK=1: reduced sizes, for checking the harness only"
[[ -n $EXTRA ]] && note "extra nn-train flags: $EXTRA"
[[ $PEERS == 1 ]] && note "peers: $("$PEER_PY" -c 'import torch; print(f"PyTorch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")' 2>&1 | tail -1)"
[[ " $WORKLOADS " != *" W4 "* ]] && note "W4 skipped: BENCH_W4=1 make bench runs it (generates a 6.3 GB file in bench/cache once, in about 30 s; then about 13 minutes on 2 cores)"

vector_peak
for w in $WORKLOADS; do
    define "$w"
    [[ $ROWS -gt 0 ]] && generate
    json kind workload name "$w" data "$DATA" features "=$FEATURES" layers "$LAYERS" batch "=$BATCH" \
        epochs "=$EPOCHS" >>"$MANIFEST"
    sgemm "$w" 1
    sgemm "$w" 2
    # The best core by hand: the one nn-train runs as is (what sgemm_limit just reported).
    BEST_CORE=${BENCH_BEST_CORE:-$(grep -o '"openblas_core":"[^"]*"' "$OUT/sgemm-$w-1x2.jsonl" | head -1 | cut -d'"' -f4)}
    [[ $CORETYPE_RUNS == 1 ]] && note "$w: best core by hand: OPENBLAS_CORETYPE=${BEST_CORE:-?}"
    read -r -a VARIANTS <<<"$(variants "$w")"
    for ((rep = 1; rep <= WREPS; rep++)); do
        for v in "" "${VARIANTS[@]}"; do
            train "$w" 1 "$rep" "$v"
            train "$w" 2 "$rep" "$v"
        done
        if [[ $PEERS == 1 ]] && ((rep <= PEER_REPS)); then
            for precision in float32 bf16; do
                peer "$w" 1 "$rep" "$precision"
                peer "$w" 2 "$rep" "$precision"
            done
        fi
    done
done

json kind env_end loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)" date_end "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$MANIFEST"
"$BIN/examples/bench_report" "$MANIFEST" --jsonl "bench/results/$STAMP.jsonl" --table "bench/results/$STAMP.md"
if ((FAILED > 0)); then
    echo "bench: $FAILED run(s) failed; their logs are in $OUT" >&2
    exit 1
fi
