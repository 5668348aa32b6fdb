"""The servers the serving workload drives: child processes on 127.0.0.1, or given by URL.

`process`: one server in a child process, started, awaited and always
stopped; `commands`: the command lines of ``hibachi serve`` and
``transformers serve --continuous-batching`` over the same model folder.
"""
