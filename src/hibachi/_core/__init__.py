"""What both batchers share: the work queue, the lifecycle, the engine thread,
the model runner, delivery to callers, time limits, and callers' values in messages.

Nothing here imports `_autoregressive` or `_feedforward`; the entry module is `engine_thread`.
"""
