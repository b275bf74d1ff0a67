#!/usr/bin/env bash
# Set up ptycho_fast from a fresh clone: a virtual environment in .venv with torch, the
# build and test dependencies, and the compiled extension (pip install -e .).
#
#   bash scripts/bootstrap.sh            # CPU torch 2.13.0 (a CUDA torch on a GPU machine)
#   PTYCHO_FAST_TORCH="torch==2.14.1" bash scripts/bootstrap.sh   # choose torch yourself
#   PTYCHO_FAST_VENV=/path/to/venv bash scripts/bootstrap.sh        # another venv location
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${PTYCHO_FAST_VENV:-.venv}
if [ -z "${PTYCHO_FAST_TORCH:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    PTYCHO_FAST_TORCH="torch==2.14.1"   # CUDA 13.0 build
  else
    PTYCHO_FAST_TORCH="torch==2.13.0"   # the CPU build (from local disk on our machines)
  fi
fi

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  step "creating virtual environment $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
step "installing $PTYCHO_FAST_TORCH and the dev requirements"
# (The grep drops pip's notes about local index folders that lack a package.)
"$py" -m pip install -q --disable-pip-version-check "$PTYCHO_FAST_TORCH" -r requirements-dev.txt 2>&1 |
  { grep -v "is ignored: it is neither a file nor a directory" || true; }
# torch must already be installed: build isolation would fetch a second (multi-GB) one.
step "building ptycho_fast (pip install -e . --no-build-isolation)"
MAX_JOBS=${MAX_JOBS:-2} "$py" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
"$py" -c "import ptycho_fast.ops as o; assert o.HAVE_EXTENSION, 'the compiled extension did not build'; print('ptycho_fast built:', o.__file__)"
