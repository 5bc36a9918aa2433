#!/usr/bin/env bash
# README command 2: set everything up, then run the whole test suite plus ruff (lint and format) and mypy.
# Extra arguments go to pytest (e.g. scripts/test.sh -k protocol).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
VENV="${RKLLMD_VENV:-$ROOT/.venv}"
cd "$ROOT"
"$VENV/bin/ruff" check rkllmd plugins tests benchmarks scripts
"$VENV/bin/ruff" format --check rkllmd plugins tests benchmarks scripts
"$VENV/bin/mypy"
"$VENV/bin/python" -m pytest "$@"
