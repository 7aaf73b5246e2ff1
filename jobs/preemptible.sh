#!/bin/bash
# Preemptible, time-limited training that checkpoints, requeues itself and resumes with
# nothing lost. Submit from the repository root (paths below are relative to it):
#
#     sbatch jobs/preemptible.sh                      # ranks started by srun (Slurm's PMIx)
#     NN_LAUNCHER=mpirun sbatch jobs/preemptible.sh   # ranks started by Open MPI's mpirun
#
# How a run ends, and what happens next:
# - Time limit: --signal=B:USR1@180 has Slurm send SIGUSR1 to this script about 3 minutes
#   before the limit (up to a minute earlier: Slurm looks every 30 s or so). The script passes
#   it on to nn-train: all ranks stop at the next step boundary, rank 0 writes the checkpoint,
#   every rank exits with code 75 ("checkpointed, please requeue"), and the script then
#   requeues the job (scontrol requeue).
# - Preemption, `scontrol requeue`, `scancel`: Slurm sends SIGTERM to all of the job's
#   processes, waits KillWait seconds (30 by default), then kills them; after a preemption or
#   a requeue it queues the job again by itself. nn-train drops the step under way, checkpoints
#   the last complete one and exits 75 well within that time; the script does NOT requeue a
#   second time.
# - Under mpirun, Slurm's SIGTERM also reaches mpirun itself, which then stops the ranks on its
#   own clock: SIGTERM after odls_base_sigkill_timeout seconds, SIGKILL as long again later
#   (1 s by default, too short for a large model's checkpoint: set below from NN_KILL_GRACE,
#   10 s, so that 2 x 10 s fits in Slurm's default KillWait of 30 s and this script still
#   logs how the run ended; keep 2 x NN_KILL_GRACE below your site's KillWait, `scontrol show
#   config | grep KillWait`). A signalled mpirun exits 1
#   whatever the ranks did (Open MPI's rule); the ranks' own lines in the log say that they
#   checkpointed. SIGUSR1 is passed on by mpirun at once and without killing, so the
#   time-limit path below works as under srun.
# - Every run, the first and each rerun, executes the same command with --resume: it continues
#   from the checkpoint when there is one and starts fresh when there is none. The log (opened
#   in append mode) has a "resumed from ... at epoch E step S" line for each rerun.
# - A run that finishes exits 0 and the job is COMPLETED. Any other failure ends it FAILED,
#   never requeued, so a broken job does not loop.
#
# Edit: the resources, the time limit (keep the --signal lead time longer than a training step
# plus a checkpoint write), and the nn-train command below. The output folder must stay the
# same for every run of the job: out/<job name>-<job id>/ does (requeueing keeps the job id).
# Settings can also be given at submission, e.g.  NN_EPOCHS=500 sbatch jobs/preemptible.sh
#
#SBATCH --job-name=nn-preemptible
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=2
#SBATCH --time=00:30:00
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
##SBATCH --partition=...
##SBATCH --account=...

set -uo pipefail

# nn-train: $NN_TRAIN, else the release build in the submit folder, else the one on PATH.
NN_TRAIN=${NN_TRAIN:-$(command -v ./target/release/nn-train || command -v nn-train || echo nn-train)}
read -ra extra <<<"${NN_ARGS:-}" # extra nn-train flags, split at spaces
OUT=${NN_OUT:-out/$SLURM_JOB_NAME-$SLURM_JOB_ID}
mkdir -p "$OUT" || exit 1
log() { echo "[$(date +%T)] job $SLURM_JOB_ID run $((${SLURM_RESTART_COUNT:-0} + 1)): $*"; }

# Slurm signals this shell (SIGUSR1 from --signal=B:..., SIGTERM on requeue, preemption or
# cancel). Bash runs a trap only between commands, so nn-train runs in the background while
# the shell waits. Both signals are passed on to the launcher as SIGUSR1, which srun and
# mpirun forward to every rank as it is (both answer SIGTERM by killing the ranks, mpirun
# after a delay); nn-train treats both alike.
got=""
terminated=false
# shellcheck disable=SC2317 # called by the traps
forward() {
    got=$1
    [ "$1" = TERM ] && terminated=true
    log "SIG$1 received; asking nn-train to checkpoint at once and exit 75"
    kill -s USR1 "$pid" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

case ${NN_LAUNCHER:-srun} in
    # Slurm 22.05 to 23.02 do not apply the job's --cpus-per-task to srun: pass it on.
    srun) launch=(srun --mpi=pmix --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}") ;;
    # Nodes and task counts come from Slurm; --bind-to none keeps a rank's BLAS threads on
    # their own cores (see multi-node.sh). The kill delay: see the top of this file.
    mpirun) launch=(mpirun --bind-to none --mca odls_base_sigkill_timeout "${NN_KILL_GRACE:-10}") ;;
    *) echo "NN_LAUNCHER must be srun or mpirun, not '$NN_LAUNCHER'" >&2; exit 2 ;;
esac

log "starting on $SLURM_JOB_NODELIST: $SLURM_NTASKS ranks x ${SLURM_CPUS_PER_TASK:-1} threads, started by ${launch[0]}"
"${launch[@]}" "$NN_TRAIN" \
    --data "${NN_DATA:-data/digits/train.h5}" --val "${NN_VAL:-data/digits/test.h5}" \
    --layers 128:relu,128:relu,10:softmax --epochs "${NN_EPOCHS:-200}" --batch-size 32 \
    --lr 0.001 --seed 1 --checkpoint "$OUT/model.h5" --metrics "$OUT/metrics.jsonl" \
    --resume "${extra[@]}" &
pid=$!

# `wait` returns early (status > 128) when a trapped signal arrives: wait again until srun has
# exited. Status 127: the previous wait had already collected the launcher's status.
code=0
while :; do
    got=""
    wait "$pid"
    status=$?
    [ "$status" -ne 127 ] && code=$status
    [ -z "$got" ] && break
done

# Where the checkpoint stands, from the checkpoint itself (under mpirun the ranks' own lines
# about it can be lost: a signalled mpirun stops passing their output on).
NN_DATA_TOOL=${NN_DATA_TOOL:-$(command -v "$(dirname "$NN_TRAIN")/nn-data" || command -v nn-data || true)}
if [ -f "$OUT/model.h5" ] && [ -n "$NN_DATA_TOOL" ]; then
    log "the checkpoint is at $("$NN_DATA_TOOL" info "$OUT/model.h5" 2>&1 | sed -n 's/^checkpoint: //p')"
fi

if [ "$code" -eq 75 ] && ! $terminated; then
    # The time-limit signal (or a SIGUSR1 sent to the ranks themselves): queue the job again.
    # Requeueing sends this shell SIGTERM, which is of no use any more.
    trap '' TERM
    log "nn-train checkpointed (exit 75); requeueing the job"
    scontrol requeue "$SLURM_JOB_ID" || log "scontrol requeue failed: submit this script again to continue"
elif [ "$code" -eq 75 ]; then
    log "nn-train checkpointed (exit 75); Slurm requeues, preempts or cancels the job"
elif $terminated && [ "${launch[0]}" = mpirun ]; then
    log "mpirun exited with code $code after SIGTERM (a signalled mpirun always fails; the ranks' lines above say whether they checkpointed); Slurm requeues, preempts or cancels the job"
else
    log "nn-train exited with code $code"
fi
exit "$code"
