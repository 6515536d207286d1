#!/usr/bin/env bash
# Builds each peer's OWN virtual environment for benchmarks/peers (never the project's .venv):
#   benchmarks/peers/.venvs/tunix  google-tunix==0.1.7 (JAX; pins safetensors<0.8 and an older transformers)
#   benchmarks/peers/.venvs/trl    trl==1.16.0 + torch==2.13.0 (CPU wheel) + transformers (also runs `generate`)
# First build: pip resolves the pinned top-level packages and `pip freeze` is written to
# benchmarks/peers/requirements-{tunix,trl}.txt; when that lock file exists, installs are taken from it.
# Idempotent: a venv whose `pip freeze` already equals its lock file is left alone.
#   bash benchmarks/peers/setup.sh [tunix] [trl]      (default: both)
# PYTHON picks the interpreter (default python3, >= 3.11); PEERS_VENVS the venvs' folder (default
# benchmarks/peers/.venvs, which run.py reads; another folder is for checking a fresh build from the locks).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
VENVS="${PEERS_VENVS:-$HERE/.venvs}"

pip_quiet() {  # pip install, without the warnings this machine's pip config prints for every package
  "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

top_level() {  # the pinned top-level requirements of a peer
  case "$1" in
    tunix) echo "google-tunix==0.1.7" ;;
    # torch first and pinned so pip takes the local CPU wheel and never a CUDA build.
    trl) echo "torch==2.13.0 trl==1.16.0 transformers==5.24.0" ;;
    *) echo "error: unknown peer '$1' (expected tunix or trl)" >&2; exit 2 ;;
  esac
}

frozen() { "$1/bin/python" -m pip freeze --all --exclude pip --exclude setuptools --exclude wheel | LC_ALL=C sort; }

build() {
  local peer="$1" venv="$VENVS/$1" lock="$HERE/requirements-$1.txt" reqs
  reqs="$(top_level "$peer")"
  if [[ -x "$venv/bin/python" && -f "$lock" ]] && diff -q <(frozen "$venv") <(grep -v '^#' "$lock" | LC_ALL=C sort) >/dev/null; then
    echo "[$peer] $venv matches $lock: nothing to do"
    return
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "[$peer] creating $venv with $($PYTHON --version)"
    "$PYTHON" -m venv "$venv"
  fi
  if [[ -f "$lock" ]]; then
    echo "[$peer] installing the locked versions from $lock"
    pip_quiet "$venv/bin/python" -m pip install --quiet -r "$lock"
  else
    echo "[$peer] resolving $reqs (no lock file yet)"
    # shellcheck disable=SC2086
    pip_quiet "$venv/bin/python" -m pip install --quiet $reqs
    {
      echo "# pip freeze of benchmarks/peers/.venvs/$peer, written by setup.sh from: $reqs"
      frozen "$venv"
    } >"$lock"
    echo "[$peer] wrote $lock ($(grep -vc '^#' "$lock") packages)"
  fi
  echo "[$peer] ready: $("$venv/bin/python" -m pip freeze | grep -iE '^(google-tunix|trl|torch|transformers|jax|flax)==' | tr '\n' ' ')"
}

peers=("$@")
[[ ${#peers[@]} -eq 0 ]] && peers=(tunix trl)
mkdir -p "$VENVS"
for peer in "${peers[@]}"; do
  top_level "$peer" >/dev/null
  build "$peer"
done
