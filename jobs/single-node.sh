#!/bin/bash
# Training on one node: N ranks (Slurm tasks), each running --cpus-per-task BLAS threads.
# Submit from the repository root (paths below are relative to it):
#
#     sbatch jobs/single-node.sh
#     NN_EPOCHS=50 sbatch --ntasks=8 --cpus-per-task=4 jobs/single-node.sh
#
# Edit: the resources, the partition/account lines if your site needs them, and the nn-train
# command at the bottom (data, model, epochs). Results go to out/<job name>-<job id>/.
#
#SBATCH --job-name=nn-single
#SBATCH --nodes=1
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=2
#SBATCH --time=00:30:00
#SBATCH --output=%x-%j.out
##SBATCH --partition=...
##SBATCH --account=...

set -euo pipefail

# nn-train: $NN_TRAIN, else the release build in the submit folder, else the one on PATH.
NN_TRAIN=${NN_TRAIN:-$(command -v ./target/release/nn-train || command -v nn-train || echo nn-train)}
read -ra extra <<<"${NN_ARGS:-}" # extra nn-train flags, split at spaces
OUT=${NN_OUT:-out/$SLURM_JOB_NAME-$SLURM_JOB_ID}
mkdir -p "$OUT"

# One rank per task. Slurm 22.05 to 23.02 do not apply the job's --cpus-per-task to srun (each
# task would get one CPU): pass it on. nn-train reads SLURM_CPUS_PER_TASK and runs that many
# BLAS threads per rank.
# (mpirun works as well: see multi-node.sh.)
srun --mpi=pmix --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "$NN_TRAIN" \
    --data "${NN_DATA:-data/digits/train.h5}" --val "${NN_VAL:-data/digits/test.h5}" \
    --layers 128:relu,128:relu,10:softmax --epochs "${NN_EPOCHS:-20}" --batch-size 32 \
    --lr 0.001 --checkpoint "$OUT/model.h5" --metrics "$OUT/metrics.jsonl" "${extra[@]}"
