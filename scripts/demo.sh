#!/usr/bin/env bash
# The README's main command: cargohold's job end to end on the embedded store (no daemon).
# Starts a throw-away local registry, pushes sample images built by cargohold (several small
# ones, a critical one, a big one), then plans and bakes a cache spec under a disk budget into
# a scratch embedded store, shows disk use, and creates a container from a fetched-only image
# to show its first-start penalty.
#   KEEP=1        keep the temp dir (store, spec, registry storage) and say how to explore it
#   PORT=5055     run the registry on this loopback port (default: a free one)
#   BUDGET=600MB  the spec's budget (default 250MB); BIG_SIZE=BYTES the big image's size
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CARGOHOLD_SKIP_INSTALL:-}" ]; then
  echo "installing what the demo needs (Debian packages, cargohold in ./.venv; about a minute the first time)" >&2
  bash scripts/install-deps.sh
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q -e .
fi
PY=.venv/bin/python
CH=".venv/bin/cargohold"
WORK=$(mktemp -d /tmp/cargohold-demo.XXXXXX)
cleanup() {
  $PY -m cargohold.devtools stop-registry "$WORK/registry" 2>/dev/null || true
  if [ -z "${KEEP:-}" ]; then
    rm -rf "$WORK"
  else
    cat >&2 <<EOT

kept $WORK (the registry is stopped). To explore it:
  $PY -m cargohold.devtools registry $WORK/registry    # restart the registry (same port, same images)
  export CARGOHOLD_ROOT=$WORK/store
  $CH du; $CH plan --plain-http $WORK/cache.toml
  $PY -m cargohold.devtools stop-registry $WORK/registry; rm -rf $WORK    # when done
EOT
  fi
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "start a local registry (Debian's docker-registry) on loopback"
REG=$($PY -m cargohold.devtools registry "$WORK/registry" ${PORT:+--port "$PORT"})
echo "registry at $REG" >&2

step "build sample images with cargohold's image builder and push them"
$PY -m cargohold.devtools push-samples "$REG" --big-size "${BIG_SIZE:-300000000}" | tee "$WORK/refs.tsv"
mapfile -t REFS < <(cut -f1 "$WORK/refs.tsv")

export CARGOHOLD_ROOT="$WORK/store"
ref_of() { grep "/samples/$1:" "$WORK/refs.tsv" | cut -f1; }
entry() {  # name, then extra TOML lines; skipped when the sample was not built
  local ref; ref=$(ref_of "$1") || return 0
  printf '\n[[image]]\nref = "%s"\n' "$ref"; shift
  for line in "$@"; do printf '%s\n' "$line"; done
}
SPEC="$WORK/cache.toml"
{
  echo '# The demo node image: what to cache and how much disk it may take.'
  echo "budget = \"${BUDGET:-250MB}\"   # compressed content + unpacked snapshots"
  echo 'reserve = "256MB"'
  entry critical 'critical = true          # boot-critical: always pulled'
  entry busybox 'priority = 8'
  entry app-a 'priority = 4'
  entry app-b 'priority = 2'
  entry app-docker 'priority = 2'
  entry deleter
  entry tiny
  entry big 'priority = 1               # a few hundred MB unpacked'
} >"$SPEC"
step "the cache spec ($SPEC)"
cat "$SPEC" >&2

step "measure this disk's unpack throughput (the planner's penalty model)"
$CH calibrate

step "plan: pull, fetch or skip each image under the budget (manifests and configs only)"
$CH plan --plain-http "$SPEC"

step "bake: fetch everything, unpack what the plan pulls, record, verify, report"
$CH bake --plain-http "$SPEC" --report "$WORK/bake-report.json"

step "bake again: idempotent, nothing to do"
$CH bake --plain-http "$SPEC"

step "disk use: compressed content vs unpacked snapshots, shared bytes once"
$CH du

step "first container of a fetched-only image: the lazy unpack penalty"
$CH create "$(ref_of big)" demo-big-1
step "the second container of that image starts from the unpacked layers"
$CH create "$(ref_of big)" demo-big-2
$CH containers ls

if grep -q "/samples/busybox:" "$WORK/refs.tsv"; then
  step "run a container (runc) from the busybox sample, pulled by the bake"
  $CH run --rm "$(ref_of busybox)" -- echo "hello from a cargohold container"
fi

step "on the node: each image's tier, and what evict would demote first under disk pressure"
$CH status
$CH evict --free 1MB --dry-run

step "remove the containers; what gc would remove"
$CH containers rm demo-big-1 demo-big-2
$CH gc --dry-run
