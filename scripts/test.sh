#!/usr/bin/env bash
# Set up (once) and run hibachi's checks: ruff, mypy --strict, pytest.
# Usage: bash scripts/test.sh [pytest args...]   (the fast lane: bash scripts/test.sh -m "not slow")
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
