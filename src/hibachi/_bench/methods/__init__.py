"""The ways of serving that the workloads compare: hibachi's and the usual alternatives.

`generate` (transformers' ``generate()`` and ``generate_batch``) and `streams`
(hibachi's batchers) serve the generation requests and return an `Outcome`;
`embed` and `embed_callers` embed texts; `per_token` and `per_item` time the
batching machinery alone, next to asyncio's floor and the peer libraries.
"""
