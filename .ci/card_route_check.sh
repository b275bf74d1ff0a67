#!/usr/bin/env bash
# Proves the design card's install route on a fresh venv, with nothing but what the
# package itself declares:
#
#   pip install torch==2.13.0
#   pip install -e . --no-build-isolation
#   ptycho-fast infer            # the bundled sample, into ./ptycho_fast_out/
#
# No dev requirements are installed: pip must resolve [project].dependencies itself.
# The build runs in a copy of the checkout (its tracked and untracked, not ignored,
# files), so the repo's own in-place build (ptycho_fast/_C*.so, build/) is never touched.
# Everything lives in one temporary directory, removed afterwards.
#
#   bash .ci/card_route_check.sh
#
# Environment: MAX_JOBS (default 2), PYTHON (the interpreter that creates the venv,
# default python3), PTYCHO_CARD_DIR (a directory to use and keep instead of a temporary one).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_SPEC="torch==2.13.0"   # the card's torch (the CPU build, from local disk on our machines)
start=$(date +%s)
unset PYTHONPATH              # nothing from the caller's environment may help

if [ -n "${PTYCHO_CARD_DIR:-}" ]; then
  WORK=$PTYCHO_CARD_DIR
  rm -rf "$WORK/src" "$WORK/.venv-card" "$WORK/run"
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/ptycho_fast_card.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
WORK=$(cd "$WORK" && pwd)
SRC=$WORK/src VENV=$WORK/.venv-card RUN=$WORK/run
PY=$VENV/bin/python
mkdir -p "$SRC" "$RUN"

# pip's notes about local index folders that lack a package are noise here.
quiet_pip() {
  "$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1 |
    { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

# --- a copy of the checkout, as a user's clone would be -----------------------------
while IFS= read -r -d '' f; do
  [ -e "$ROOT/$f" ] && printf '%s\0' "$f"
done < <(git -C "$ROOT" ls-files -z --cached --others --exclude-standard) |
  tar -C "$ROOT" --null -T - -cf - | tar -C "$SRC" -xf -

# --- the fresh venv -------------------------------------------------------------------
"${PYTHON:-python3}" -m venv "$VENV"
# As `source .venv-card/bin/activate` would (the build runs `ninja` from PATH).
export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
echo "card_route_check: fresh venv $VENV has: $("$PY" -m pip list --format=freeze \
  --disable-pip-version-check 2>/dev/null | tr '\n' ' ')"

# Part of the card route: --no-build-isolation builds with whatever the venv has, so the
# build requirements of pyproject.toml's [build-system].requires (setuptools, wheel, ninja;
# torch is installed separately, next) must be installed first. They are read from
# pyproject.toml, not repeated here.
mapfile -t BUILD_REQS < <("$PY" - "$SRC/pyproject.toml" <<'PYEOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
PYEOF
)
echo "card_route_check: pip install ${BUILD_REQS[*]}   (pyproject.toml [build-system].requires)"
quiet_pip "${BUILD_REQS[@]}"

echo "card_route_check: pip install $TORCH_SPEC"
quiet_pip "$TORCH_SPEC"

echo "card_route_check: pip install -e . --no-build-isolation   (MAX_JOBS=${MAX_JOBS:-2})"
build_start=$(date +%s)
(cd "$SRC" && MAX_JOBS=${MAX_JOBS:-2} quiet_pip -e . --no-build-isolation)
build_s=$(( $(date +%s) - build_start ))

"$PY" -m pip check --disable-pip-version-check
"$PY" -c "import ptycho_fast.ops as o; assert o.HAVE_EXTENSION, 'the compiled extension did not build'"

# --- the card's first command, in an empty directory ----------------------------------
echo "card_route_check: ptycho-fast infer   (in an empty directory)"
(cd "$RUN" && "$VENV/bin/ptycho-fast" infer)
missing=0
for f in object.npz amplitude.png summary.json; do
  if [ ! -s "$RUN/ptycho_fast_out/$f" ]; then
    echo "FAIL: ptycho-fast infer did not write ptycho_fast_out/$f" >&2
    missing=1
  fi
done
[ "$missing" -eq 0 ] || { ls -la "$RUN" "$RUN/ptycho_fast_out" >&2 || true; exit 1; }
echo "card_route_check: OK in $(( $(date +%s) - start )) s (build ${build_s} s)"
