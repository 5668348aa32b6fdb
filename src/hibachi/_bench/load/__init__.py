"""The serving workload's load: streaming clients, when they send, and what they measured.

`client`: one streamed chat completion, over HTTP (any OpenAI-compatible
server) or through an in-process batcher, as a `Record` of when its chunks
came; `schedule`: a fixed number of concurrent clients, or Poisson arrivals
at a rate; `metrics`: a run's figures as ``vllm bench serve`` defines them.
"""
