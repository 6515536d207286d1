#!/usr/bin/env bash
# Run one of the project's CLIs on one host with all its NVIDIA GPUs (one process; JAX sees every local GPU and
# the mesh spans them). See docs/launch.md.
#
#   launch/gpu.sh [--dry-run] [--cli train|sft|train_rm|calibrate] [--cuda 12|13] \
#       --config configs/ctrl_hh_harmless.py [--workdir runs/hh1] [-- --config.beta=0.1 ...]
#
# What it does:
#   1. `launch/local.sh setup` (the pinned venv) and, once, the CUDA build of the pinned jaxlib into that venv
#      (`pip install 'jax[cuda12]==<jax pin>'`, jax's own extra; --cuda 13 for CUDA 13 drivers),
#   2. runs `python -m infalign_jax.<cli> --config FILE [--workdir DIR]` from the checkout, with
#      JAX_PLATFORMS=cuda (no silent fallback to the CPU), the persistent compilation cache in .jax_cache and
#      the Hugging Face libraries offline. For `train` it adds --config.mesh.data=0: the data axis spans every
#      GPU (the shipped configs say data=1; anything after `--` comes later and overrides it). `sft` always
#      shards its batch over all devices.
# --dry-run prints the setup, the environment and the command, and runs nothing. Bad arguments: one error
# line, exit 2. Config and workdir paths are taken relative to the current directory.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=launch/lib.sh
source "$ROOT/launch/lib.sh"

DRY=0 CLI=train CUDA=12 CONFIG= WORKDIR= EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --cli|--cuda|--config|--workdir)
      [ $# -ge 2 ] || die "$1 needs a value (see the header of $0)"
      case "$1" in
        --cli) CLI=$2 ;; --cuda) CUDA=$2 ;; --config) CONFIG=$2 ;; --workdir) WORKDIR=$2 ;;
      esac
      shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
one_of "$CLI" "$CLIS" --cli
one_of "$CUDA" "12 13" --cuda
[ -n "$CONFIG" ] || die "--config is required"
[ -f "$CONFIG" ] || die "config file $CONFIG does not exist"
[ -n "$WORKDIR" ] || [ "$CLI" != train ] || die "--workdir is required for --cli train"

CMD=("$VENV/bin/python" -m "infalign_jax.$CLI" --config "$(in_checkout "$CONFIG")")
[ -z "$WORKDIR" ] || CMD+=(--workdir "$(in_checkout "$WORKDIR")")
[ "$CLI" != train ] || CMD+=(--config.mesh.data=0)
CMD+=(${EXTRA[@]+"${EXTRA[@]}"})
ENV=(
  JAX_PLATFORMS=cuda
  "JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$ROOT/.jax_cache}"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
)

if [ "$DRY" = 1 ]; then
  echo "setup: $(cuda_setup_text "$CUDA")"
  echo "directory: $ROOT"
  echo "environment: $(quote "${ENV[@]}")"
  echo "process: $(quote "${CMD[@]}")"
  exit 0
fi
cuda_setup "$CUDA"
cd "$ROOT"
export "${ENV[@]}"
exec "${CMD[@]}"
