#!/bin/bash
# A hyperparameter sweep as a job array: one task per (learning rate, width) pair, each an
# ordinary multi-rank training run with its own checkpoint and metrics file. Submit from the
# repository root (paths below are relative to it):
#
#     sbatch jobs/array.sh
#
# Edit: LRS and WIDTHS below, and --array to match: it must run 0 .. (#LRS x #WIDTHS - 1).
# "%2" after the range (--array=0-5%2) would run at most 2 tasks at a time. Results go to
# out/<job name>-<array job id>/lr<LR>-w<WIDTH>.{h5,jsonl}; compare them with e.g.
#     tail -qn1 out/nn-sweep-*/*.jsonl
#
#SBATCH --job-name=nn-sweep
#SBATCH --array=0-5
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --output=%x-%A_%a.out
##SBATCH --partition=...
##SBATCH --account=...

set -euo pipefail

LRS=(0.01 0.003 0.001)
WIDTHS=(64 128)

i=$SLURM_ARRAY_TASK_ID
if [ "$i" -ge $((${#LRS[@]} * ${#WIDTHS[@]})) ]; then
    echo "array task $i has no (lr, width) pair: --array must end at $((${#LRS[@]} * ${#WIDTHS[@]} - 1))" >&2
    exit 2
fi
lr=${LRS[i % ${#LRS[@]}]}
width=${WIDTHS[i / ${#LRS[@]}]}

# nn-train: $NN_TRAIN, else the release build in the submit folder, else the one on PATH.
NN_TRAIN=${NN_TRAIN:-$(command -v ./target/release/nn-train || command -v nn-train || echo nn-train)}
read -ra extra <<<"${NN_ARGS:-}" # extra nn-train flags, split at spaces
OUT=${NN_OUT:-out/$SLURM_JOB_NAME-$SLURM_ARRAY_JOB_ID}
mkdir -p "$OUT"
name=$OUT/lr$lr-w$width
echo "array task $i: lr $lr, width $width -> $name.h5, $name.jsonl"

srun --mpi=pmix --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "$NN_TRAIN" \
    --data "${NN_DATA:-data/digits/train.h5}" --val "${NN_VAL:-data/digits/test.h5}" \
    --layers "$width:relu,$width:relu,10:softmax" --lr "$lr" --epochs "${NN_EPOCHS:-20}" \
    --batch-size 32 --seed 1 --checkpoint "$name.h5" --metrics "$name.jsonl" "${extra[@]}"
