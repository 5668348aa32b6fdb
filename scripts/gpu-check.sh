#!/usr/bin/env bash
# The checks that need a CUDA GPU, in under 8 minutes on one:
#   1. the zoo on CUDA: every served architecture through causal_lm_batcher gives
#      generate()'s greedy tokens, every refused one is refused
#      (tests/integrations/transformers/test_zoo.py with HIBACHI_TEST_DEVICE=cuda);
#   2. SmolLM2-135M-Instruct on CUDA: chat prompts streamed together get the tokens
#      generate() gives each alone (tests/integrations/transformers/test_smollm2.py);
#   3. hibachi bench --quick --device cuda, its results document in benchmarks/results/.
# Without CUDA (or with --cpu) it says so and runs its CPU fallback: the same three,
# smaller (a few architectures, the generation workload on the random Llama), on the CPU.
# Usage: bash scripts/gpu-check.sh [--cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv

pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider)
batcher_tests="served_architectures or refused_architectures or sliding_window or eos_none"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

if [[ "${1:-}" != "--cpu" ]] && .venv/bin/python -c \
    'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    device=cuda
    echo "gpu-check: on $(.venv/bin/python -c 'import torch; print(torch.cuda.get_device_name(0))')"
    zoo=(-k "$batcher_tests")
    bench=(.venv/bin/hibachi bench --quick --device cuda --results benchmarks/results)
else
    device=cpu
    echo "gpu-check: no CUDA device here: the CPU fallback (the same checks, smaller, on the CPU)"
    zoo=(-k "served_architectures and (llama or mistral or qwen2-)")
    bench=(.venv/bin/hibachi bench --quick --workloads generation --model tiny
        --json "$scratch/bench.json" --plot "$scratch/bench.png")
fi
export HIBACHI_TEST_DEVICE=$device

step() {  # step TITLE SECONDS COMMAND...: run it within SECONDS, say how long it took
    local title=$1 limit=$2 start=$SECONDS
    shift 2
    echo
    echo "== $title"
    timeout "$limit" "$@"
    echo "   ($((SECONDS - start)) s)"
}

step "the zoo on $device" 240 "${pytest[@]}" tests/integrations/transformers/test_zoo.py "${zoo[@]}"
step "SmolLM2-135M-Instruct on $device: tokens equal generate()" 180 \
    "${pytest[@]}" tests/integrations/transformers/test_smollm2.py
step "hibachi bench on $device" 240 "${bench[@]}"
echo
echo "gpu-check: passed on $device in $SECONDS s"
