#!/usr/bin/env bash
# Launch a CTRL training run on a Cloud TPU VM pod slice (every worker runs the same command; JAX's
# multi-controller runtime forms one global mesh over all chips). See docs/launch.md (also: launch/gpu.sh,
# launch/slurm.sh).
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project PROJECT] \
#       --config configs/ctrl_hh_harmless.py --workdir /mnt/shared/runs/hh1 [-- --config.beta=0.1 ...]
#
# What it does, on all workers (gcloud ... ssh --worker=all):
#   1. copies this checkout to ~/infalign_jax (rsync-free: a tarball through `gcloud compute tpus tpu-vm scp`),
#   2. `launch/local.sh setup` (the same pinned venv as on a laptop) plus the TPU build of jaxlib,
#   3. runs `python -m infalign_jax.train --distributed --config.mesh.data=0`, which calls
#      jax.distributed.initialize() (TPU pods auto-detect the coordinator) before touching devices; the mesh
#      spans every chip of the slice (a multi-process run refuses a smaller one; override after `--`).
# The workdir must be a filesystem path every worker sees (e.g. a gcsfuse or Filestore mount): Orbax writes
# one checkpoint per step collectively, and reruns with the same workdir resume. SIGTERM on preemption
# saves a checkpoint before exit. Models and data must already be on that path (nothing is downloaded).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

TPU= ZONE= PROJECT= CONFIG= WORKDIR= EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu|--zone|--project|--config|--workdir)
      [ $# -ge 2 ] || { echo "error: $1 needs a value (see the header of $0)" >&2; exit 2; }
      case "$1" in
        --tpu) TPU=$2 ;; --zone) ZONE=$2 ;; --project) PROJECT=$2 ;; --config) CONFIG=$2 ;; --workdir) WORKDIR=$2 ;;
      esac
      shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "error: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
for v in TPU ZONE CONFIG WORKDIR; do
  [ -n "${!v}" ] || { echo "error: --$(echo "$v" | tr 'A-Z' 'a-z') is required" >&2; exit 2; }
done
[ -f "$CONFIG" ] || { echo "error: config file $CONFIG does not exist" >&2; exit 2; }
# The workers get the checkout unpacked in ~/infalign_jax and run from there: the config is passed as its
# path inside the checkout (given relative to the current directory, or absolute).
CONFIG_ABS=$(cd "$(dirname "$CONFIG")" && pwd -P)/$(basename "$CONFIG")
ROOT_REAL=$(cd "$ROOT" && pwd -P)
case "$CONFIG_ABS" in
  "$ROOT_REAL"/*) CONFIG=${CONFIG_ABS#"$ROOT_REAL"/} ;;
  *) echo "error: config file $CONFIG is outside this checkout ($ROOT), so the workers would not get it" >&2
     exit 2 ;;
esac
cd "$ROOT"
# Only git-tracked files are shipped to the workers (git ls-files below): the config must be one of them.
git ls-files --error-unmatch -- "$CONFIG" >/dev/null 2>&1 || {
  echo "error: config file $CONFIG is not tracked by git, so the workers would not get it (git add it)" >&2
  exit 2
}
command -v gcloud >/dev/null || { echo "error: gcloud is not installed" >&2; exit 2; }

GC=(gcloud compute tpus tpu-vm --zone "$ZONE" ${PROJECT:+--project "$PROJECT"})
TARBALL=$(mktemp -t infalign_jax.XXXXXX.tar.gz)
trap 'rm -f "$TARBALL"' EXIT
git ls-files -z | tar --null -czf "$TARBALL" -T -

"${GC[@]}" scp "$TARBALL" "$TPU:~/infalign_jax.tar.gz" --worker=all
EXTRA_Q=""  # printf with no arguments would print one empty argument ('')
if [ ${#EXTRA[@]} -gt 0 ]; then EXTRA_Q=$(printf ' %q' "${EXTRA[@]}"); fi
"${GC[@]}" ssh "$TPU" --worker=all --command "
  set -e
  mkdir -p ~/infalign_jax && tar -xzf ~/infalign_jax.tar.gz -C ~/infalign_jax && cd ~/infalign_jax
  bash launch/local.sh setup
  .venv/bin/pip install -q 'jax[tpu]==0.10.2'
  .venv/bin/python -m infalign_jax.train --distributed --config $(printf %q "$CONFIG") \
      --workdir $(printf %q "$WORKDIR") --config.mesh.data=0$EXTRA_Q
"
