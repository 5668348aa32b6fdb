"""The feedforward batcher: dynamic batching of single calls, with padding,
length picking and per-item errors, around the synchronous `core`.

Entry module: `batcher` (`FeedforwardBatcher`).
"""
