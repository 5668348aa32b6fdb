# Shared by scripts/test.sh and scripts/bench.sh: make .venv and install hibachi
# with every extra the tests and the bench use, pinned by constraints.txt.
ensure_venv() {
    local stamp=".venv/.installed"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
            -e ".[test,torch,jax,transformers,bench,peers,serve,ray]"
        touch "$stamp"
    fi
}
