#!/bin/bash
# Training across nodes: --nodes x --ntasks-per-node ranks, each running --cpus-per-task BLAS
# threads. Submit from the repository root (paths below are relative to it):
#
#     sbatch jobs/multi-node.sh                       # ranks started by srun (Slurm's PMIx)
#     NN_LAUNCHER=mpirun sbatch jobs/multi-node.sh    # ranks started by Open MPI's mpirun
#
# Edit: the resources, the partition/account lines if your site needs them, and the nn-train
# command at the bottom. Results go to out/<job name>-<job id>/.
#
#SBATCH --job-name=nn-multi
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
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

case ${NN_LAUNCHER:-srun} in
    # One rank per task on every node, wired up by Slurm's PMIx (Debian's Open MPI speaks no
    # PMI2). Slurm 22.05 to 23.02 do not apply the job's --cpus-per-task to srun: pass it on.
    srun) launch=(srun --mpi=pmix --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}") ;;
    # Inside an allocation mpirun reads the nodes and task counts from Slurm: no -n, no
    # hostfile. --bind-to none: its default binding (one core per rank) would squeeze a rank's
    # BLAS threads onto one core. Ranks inherit SLURM_CPUS_PER_TASK from this script.
    mpirun) launch=(mpirun --bind-to none) ;;
    *) echo "NN_LAUNCHER must be srun or mpirun, not '$NN_LAUNCHER'" >&2; exit 2 ;;
esac
echo "$SLURM_JOB_NUM_NODES nodes ($SLURM_JOB_NODELIST) with $SLURM_TASKS_PER_NODE tasks per node, started by ${launch[0]}"

"${launch[@]}" "$NN_TRAIN" \
    --data "${NN_DATA:-data/digits/train.h5}" --val "${NN_VAL:-data/digits/test.h5}" \
    --layers 128:relu,128:relu,10:softmax --epochs "${NN_EPOCHS:-20}" --batch-size 64 \
    --lr 0.001 --checkpoint "$OUT/model.h5" --metrics "$OUT/metrics.jsonl" "${extra[@]}"
