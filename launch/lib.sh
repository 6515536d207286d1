# Helpers shared by launch/gpu.sh and launch/slurm.sh (sourced, not run). The caller sets ROOT (the checkout).
#   die MSG          -> "error: MSG" on stderr, exit 2 (bad arguments: nothing has run)
#   quote ARGS...    -> the arguments as one shell-quoted line (what --dry-run prints can be pasted into a shell)
#   in_checkout PATH -> PATH as the processes (which run in $ROOT) must name it: relative inside the checkout,
#                       else absolute; normalized without resolving symlinks (a shared mount stays as given)
#   cuda_setup N     -> `launch/local.sh setup` (the pinned venv) plus, once, the CUDA N build of the pinned
#                       jaxlib ('jax[cudaN]==<the jax pin of requirements.txt>', jax's own extra)
# VENV is the venv local.sh manages ($INFALIGN_VENV, default $ROOT/.venv); JAX_VERSION the jax pin.

VENV=${INFALIGN_VENV:-$ROOT/.venv}
JAX_VERSION=$(sed -n 's/^jax==\([^ ]*\).*/\1/p' "$ROOT/requirements.txt")
# The CLIs that take --config and --workdir; DISTRIBUTED_CLIS also take --distributed (multi-process).
CLIS="train sft train_rm calibrate"
DISTRIBUTED_CLIS="train sft"

die() {
  echo "error: $*" >&2
  exit 2
}

quote() {
  local out="" a
  for a in "$@"; do out+=" $(printf %q "$a")"; done
  echo "${out# }"
}

in_checkout() {
  local p
  p=$(realpath -m -s -- "$1")
  case "$p" in "$ROOT"/*) p=${p#"$ROOT"/} ;; esac
  echo "$p"
}

# "$1" must be one of the words of "$2" (else: error naming the flag $3).
one_of() {
  case " $2 " in *" $1 "*) return 0 ;; esac
  die "$3 must be one of: $2 (got '$1')"
}

cuda_setup() {
  bash "$ROOT/launch/local.sh" setup
  # Reinstalled when the CUDA version or local.sh's own install (its stamp) changed.
  local stamp="$VENV/.infalign_cuda_stamp" want
  want="cuda$1 jax==$JAX_VERSION $(cat "$VENV/.infalign_stamp")"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "$(basename "$0"): installing jax[cuda$1]==$JAX_VERSION (the CUDA build of jaxlib, a few minutes) ..." >&2
    "$VENV/bin/python" -m pip install -q "jax[cuda$1]==$JAX_VERSION"
    echo "$want" >"$stamp"
    echo "$(basename "$0"): done" >&2
  fi
}

# The setup line --dry-run prints (what cuda_setup runs when the venv is not up to date).
cuda_setup_text() {
  echo "bash launch/local.sh setup && $(quote "$VENV/bin/python" -m pip install -q "jax[cuda$1]==$JAX_VERSION")" \
    "(each only when not done yet)"
}
