#!/usr/bin/env bash
# Proves that the CUDA half of ptycho_fast compiles, links and registers, on a machine
# without a GPU: builds the extension with FORCE_CUDA=1 against a CUDA build of torch,
# in its own venv and build directory (the repo's in-place CPU build is never touched),
# then checks that every op has both a CPU and a CUDA kernel.
#
#   bash .ci/cuda_build_check.sh [VENV]      VENV defaults to <repo>/.venv-cuda
#
# Environment: CUDA_HOME (default /usr/local/cuda, else found from nvcc),
# TORCH_CUDA_ARCH_LIST (default 9.0: one arch keeps CI fast; setup.py's default list
# is "8.0;8.6;9.0"), MAX_JOBS (default 2), PTYCHO_CUDA_BUILD_DIR (default: a temporary
# directory, removed afterwards; name one to keep it for incremental rebuilds),
# PYTHON (the interpreter that creates the venv, default python3).
# Exits 0 with "SKIP: nvcc not found" where there is no CUDA toolkit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_VERSION=2.14.1
start=$(date +%s)

# --- the toolkit -------------------------------------------------------------------
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  if ! command -v nvcc >/dev/null 2>&1; then
    echo "SKIP: nvcc not found (no CUDA toolkit at $CUDA_HOME or on PATH); CUDA build not checked"
    exit 0
  fi
  # nvcc may be a wrapper script (as /usr/local/bin/nvcc is here): ask it where it lives.
  top=$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1 || true)
  CUDA_HOME=$(cd "${top:-$(dirname "$(command -v nvcc)")/..}" && pwd)
  if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
    echo "FAIL: nvcc is on PATH but its toolkit root could not be found; set CUDA_HOME" >&2
    exit 1
  fi
fi
echo "cuda_build_check: $("$CUDA_HOME/bin/nvcc" --version | grep release || true) at $CUDA_HOME"

# --- the venv with a CUDA torch ----------------------------------------------------
VENV=${1:-$ROOT/.venv-cuda}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac  # the build runs in another directory
PY="$VENV/bin/python"
have_venv() {
  [ -x "$PY" ] && "$PY" - "$TORCH_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys
import numpy, ninja, setuptools, wheel, torch  # noqa: F401
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] and torch.version.cuda else 1)
PYEOF
}
if have_venv; then
  echo "cuda_build_check: reusing $VENV"
else
  echo "cuda_build_check: creating $VENV (torch==$TORCH_VERSION, a CUDA build)"
  "${PYTHON:-python3}" -m venv "$VENV"
  # (The grep drops pip's notes about local index folders that lack a package.)
  "$PY" -m pip install -q torch==$TORCH_VERSION numpy ninja setuptools wheel 2>&1 |
    { grep -v "is ignored: it is neither a file nor a directory" || true; }
  have_venv || { echo "FAIL: $VENV has no CUDA torch $TORCH_VERSION after pip install" >&2; exit 1; }
fi
"$PY" -c 'import torch; print(f"cuda_build_check: torch {torch.__version__} (CUDA {torch.version.cuda})")'

# --- the build, in a copy of the sources -------------------------------------------
if [ -n "${PTYCHO_CUDA_BUILD_DIR:-}" ]; then
  BUILD=$PTYCHO_CUDA_BUILD_DIR
  mkdir -p "$BUILD"
else
  BUILD=$(mktemp -d "${TMPDIR:-/tmp}/ptycho_fast_cuda.XXXXXX")
  trap 'rm -rf "$BUILD"' EXIT
fi
# cp -a keeps modification times, so a kept build directory rebuilds incrementally.
rm -rf "$BUILD/csrc" "$BUILD/ptycho_fast"
cp -a "$ROOT/csrc" "$ROOT/ptycho_fast" "$ROOT/setup.py" "$ROOT/pyproject.toml" "$BUILD/"
if [ -f "$ROOT/README.md" ]; then cp -a "$ROOT/README.md" "$BUILD/"; fi
# The repo's in-place CPU build must not be what gets imported (or overwritten).
rm -f "$BUILD"/ptycho_fast/_C*.so
find "$BUILD/ptycho_fast" -name __pycache__ -prune -exec rm -rf {} +

export CUDA_HOME FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-2}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
echo "cuda_build_check: building in $BUILD (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
build_start=$(date +%s)
log="$BUILD/build.log"
if ! (cd "$BUILD" && "$PY" setup.py build_ext --inplace >"$log" 2>&1); then
  tail -n 60 "$log" >&2
  echo "FAIL: the CUDA build failed (log above)" >&2
  exit 1
fi
build_s=$(( $(date +%s) - build_start ))
# Warnings from our own sources (torch's headers are not ours to fix).
if grep -E "csrc/.*(warning|error)" "$log" >&2; then
  echo "cuda_build_check: the build warned about our sources (above)" >&2
fi

# --- registration ------------------------------------------------------------------
(cd "$BUILD" && PYTHONPATH="$BUILD" "$PY" "$ROOT/.ci/check_cuda_registration.py" "$BUILD")
echo "cuda_build_check: OK in $(( $(date +%s) - start )) s (build ${build_s} s)"
