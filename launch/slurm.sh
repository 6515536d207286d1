#!/usr/bin/env bash
# Run the CTRL trainer (or SFT) on several GPU nodes of a SLURM allocation: one process per GPU (default) or
# one per node, started by `srun`, joined by jax.distributed into one global mesh. See docs/launch.md.
#
#   sbatch --nodes=2 --gpus-per-node=8 launch/slurm.sh --config configs/ctrl_hh_harmless.py \
#       --workdir /shared/runs/hh1 [-- --config.beta=0.1 ...]          # submitted from the checkout's root
#   salloc --nodes=2 --gpus-per-node=8 bash launch/slurm.sh --dry-run --config ... --workdir ...
#
# Options: --cli train|sft (default train), --per gpu|node (default gpu), --gpus-per-node G (default: what the
# allocation says, SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE), --port P (coordinator port), --cuda 12|13,
# --srun-opt OPT (extra srun option, repeatable, e.g. --srun-opt=--cpus-per-task=16), --dry-run.
#
# What it does, on the node it runs on (inside the allocation):
#   1. `launch/local.sh setup` plus, once, the CUDA build of the pinned jaxlib (as launch/gpu.sh): the checkout,
#      its .venv and the workdir must be on a filesystem every node sees, with the same paths;
#   2. `srun --nodes=N --ntasks-per-node=G|1 --gpu-bind=none ...` runs on every task
#      `python -m infalign_jax.<cli> --distributed --config FILE --workdir DIR [--config.mesh.data=0]`.
# How jax.distributed.initialize() (called by --distributed) finds its settings: the coordinator is set
# explicitly, JAX_COORDINATOR_ADDRESS = the allocation's first node : port (default 61440 + job id % 4096,
# the port JAX's own SLURM detection picks), so --dry-run shows it and --port can move it. The number of
# processes and each process's id come from JAX's SLURM detection (SLURM_NTASKS, SLURM_PROCID of each task),
# which also restricts a process to GPU number SLURM_LOCALID of its node: right for --per gpu, given that srun
# does not bind GPUs to tasks (--gpu-bind=none: every task sees all GPUs of its node). With --per node the
# launcher sets JAX_LOCAL_DEVICE_IDS=0,...,G-1 so that the one process of a node uses all its GPUs.
# For train, --config.mesh.data=0: the mesh spans every GPU of every node (a multi-process run refuses a
# smaller one; anything after `--` comes later and overrides it). The workdir is resumed by a rerun: requeued
# or preempted jobs continue from the last checkpoint (SIGTERM saves one). The data, train_rm and calibrate
# steps of the HH pipeline run in one process: launch/gpu.sh on one node (docs/launch.md).
# --dry-run prints the setup, the coordinator, the environment, the srun command and the per-process command,
# and runs nothing. Bad arguments: one error line, exit 2.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# sbatch runs a copy of this script from its spool directory: then the checkout is the submission directory.
if [ ! -f "$ROOT/launch/lib.sh" ] && [ -n "${SLURM_SUBMIT_DIR:-}" ]; then ROOT=$SLURM_SUBMIT_DIR; fi
if [ ! -f "$ROOT/launch/lib.sh" ]; then
  echo "error: cannot find the checkout (run launch/slurm.sh from it, or sbatch it from its root)" >&2
  exit 2
fi
# shellcheck source=launch/lib.sh
source "$ROOT/launch/lib.sh"

DRY=0 CLI=train PER=gpu GPUS=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}} PORT= CUDA=12 CONFIG= WORKDIR=
GPUS=${GPUS##*:}  # SLURM_GPUS_PER_NODE may name the type (a100:8)
SRUN_OPTS=() EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --srun-opt=*) SRUN_OPTS+=("${1#--srun-opt=}"); shift ;;
    --cli|--per|--gpus-per-node|--port|--cuda|--config|--workdir|--srun-opt)
      [ $# -ge 2 ] || die "$1 needs a value (see the header of $0)"
      case "$1" in
        --cli) CLI=$2 ;; --per) PER=$2 ;; --gpus-per-node) GPUS=$2 ;; --port) PORT=$2 ;; --cuda) CUDA=$2 ;;
        --config) CONFIG=$2 ;; --workdir) WORKDIR=$2 ;; --srun-opt) SRUN_OPTS+=("$2") ;;
      esac
      shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
case " $DISTRIBUTED_CLIS " in *" $CLI "*) ;; *)
  case " $CLIS " in *" $CLI "*) die "--cli $CLI runs in one process: use launch/gpu.sh on one node (docs/launch.md)" ;; esac
  one_of "$CLI" "$DISTRIBUTED_CLIS" --cli ;;
esac
one_of "$PER" "gpu node" --per
one_of "$CUDA" "12 13" --cuda
[ -n "$CONFIG" ] || die "--config is required"
[ -n "$WORKDIR" ] || die "--workdir is required (a directory every node sees)"
[ -f "$CONFIG" ] || die "config file $CONFIG does not exist"
[ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ] ||
  die "not inside a SLURM allocation (no SLURM_JOB_ID / SLURM_JOB_NODELIST): submit it with sbatch or run it under salloc"
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] ||
  die "GPUs per node unknown or invalid ('$GPUS'): allocate with --gpus-per-node or pass --gpus-per-node G"
[ -z "$PORT" ] || { [[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ]; } ||
  die "--port must be an integer in [1, 65535], got '$PORT'"
NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "SLURM_JOB_NUM_NODES is unset or invalid ('$NODES')"
command -v scontrol >/dev/null || die "scontrol is not installed (needed to name the allocation's first node)"
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
[ -n "$HEAD" ] || die "scontrol found no host in SLURM_JOB_NODELIST='$SLURM_JOB_NODELIST'"
COORDINATOR=$HEAD:${PORT:-$((61440 + SLURM_JOB_ID % 4096))}

TASKS_PER_NODE=$GPUS
ENV=(
  JAX_PLATFORMS=cuda
  "JAX_COORDINATOR_ADDRESS=$COORDINATOR"
  "JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$ROOT/.jax_cache}"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
)
if [ "$PER" = node ]; then
  TASKS_PER_NODE=1
  ENV+=("JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((GPUS - 1)))")
fi
SRUN=(srun "--nodes=$NODES" "--ntasks=$((NODES * TASKS_PER_NODE))" "--ntasks-per-node=$TASKS_PER_NODE")
SRUN+=("--gres=gpu:$GPUS" --gpu-bind=none --kill-on-bad-exit=1 "--chdir=$ROOT")
SRUN+=(${SRUN_OPTS[@]+"${SRUN_OPTS[@]}"})
CMD=("$VENV/bin/python" -m "infalign_jax.$CLI" --distributed --config "$(in_checkout "$CONFIG")")
CMD+=(--workdir "$(in_checkout "$WORKDIR")")
[ "$CLI" != train ] || CMD+=(--config.mesh.data=0)
CMD+=(${EXTRA[@]+"${EXTRA[@]}"})

if [ "$DRY" = 1 ]; then
  echo "setup: $(cuda_setup_text "$CUDA")"
  echo "coordinator: $COORDINATOR"
  echo "processes: $NODES node(s) x $TASKS_PER_NODE = $((NODES * TASKS_PER_NODE)) (one per $PER, $GPUS GPU(s) per node)"
  echo "environment: $(quote "${ENV[@]}")"
  echo "srun: $(quote "${SRUN[@]}")"
  echo "process: $(quote "${CMD[@]}")"
  exit 0
fi
command -v srun >/dev/null || die "srun is not installed"
cuda_setup "$CUDA"
cd "$ROOT"
export "${ENV[@]}"
exec "${SRUN[@]}" "${CMD[@]}"
