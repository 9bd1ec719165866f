#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CARGOHOLD_SKIP_INSTALL:-}" ]; then
  bash scripts/install-deps.sh
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q -e '.[test]'
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
