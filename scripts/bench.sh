#!/usr/bin/env bash
# Set up (once) and run `hibachi bench`. Usage: bash scripts/bench.sh [--quick] [bench args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
exec .venv/bin/hibachi bench "$@"
