#!/usr/bin/env bash
# Set up (once) and run `hibachi bench`, writing its results document to benchmarks/results/
# (<date>-<time>-<machine>-<preset>.md, with its JSON and PNG beside it).
# Usage: bash scripts/bench.sh [--quick] [--no-results] [bench args...]
#   --no-results   write no results document (the JSON and PNG go to bench-out/)
#   --results DIR  write it to DIR instead
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
results=(--results benchmarks/results)
args=()
for arg in "$@"; do
    if [[ "$arg" == "--no-results" ]]; then
        results=()
    else
        args+=("$arg")
    fi
done
exec .venv/bin/hibachi bench ${results[@]+"${results[@]}"} ${args[@]+"${args[@]}"}
