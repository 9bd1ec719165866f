#!/usr/bin/env bash
# The README's main command: cargohold's job end to end on the embedded store (no daemon).
# Starts a throw-away local registry, pushes sample images built by cargohold, fetches them
# compressed into a scratch store, and shows what is stored. KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CARGOHOLD_SKIP_INSTALL:-}" ]; then
  bash scripts/install-deps.sh
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q -e .
fi
PY=.venv/bin/python
CH=".venv/bin/cargohold"
WORK=$(mktemp -d /tmp/cargohold-demo.XXXXXX)
cleanup() {
  $PY -m cargohold.devtools stop-registry "$WORK/registry" 2>/dev/null || true
  if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "start a local registry (Debian's docker-registry) on loopback"
REG=$($PY -m cargohold.devtools registry "$WORK/registry")
echo "registry at $REG" >&2

step "build sample images with cargohold's image builder and push them"
$PY -m cargohold.devtools push-samples "$REG" --big-size "${BIG_SIZE:-300000000}" | tee "$WORK/refs.tsv"
mapfile -t REFS < <(cut -f1 "$WORK/refs.tsv")

export CARGOHOLD_ROOT="$WORK/store"
step "fetch them, compressed only, into an embedded store at $CARGOHOLD_ROOT"
$CH fetch --plain-http "${REFS[@]}"

step "the image records"
$CH images ls

step "fetching again transfers nothing"
$CH fetch --plain-http "${REFS[@]}"

ref_of() { grep "/samples/$1:" "$WORK/refs.tsv" | cut -f1; }
step "pull the critical image (fetch + unpack now: no first-start penalty)"
$CH pull --plain-http "$(ref_of critical)"

step "disk use: compressed content vs unpacked snapshots"
$CH du

step "first container of a fetched-only image: the lazy unpack penalty"
$CH create "$(ref_of big)" demo-big-1
step "the second container of that image starts from the unpacked layers"
$CH create "$(ref_of big)" demo-big-2
$CH containers ls

if grep -q "/samples/busybox:" "$WORK/refs.tsv"; then
  step "run a container (runc) from the busybox sample"
  $CH run --rm "$(ref_of busybox)" -- echo "hello from a cargohold container"
fi

step "verify every blob, then what gc would remove"
$CH containers rm demo-big-1 demo-big-2
$CH verify
$CH gc --dry-run
