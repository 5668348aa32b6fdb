"""Chat prompts for the real model: questions a user might ask, each asking for a long answer.

Long answers keep output lengths fixed in practice: a greedy instruct model
asked to explain or to write rarely ends before a budget of a few dozen
tokens, so every way of serving generates about as many tokens for each
request (the tables say how many each one did).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .requests import LlmRequest

__all__ = ["QUESTIONS", "chat_prompt", "chat_requests", "questions"]

QUESTIONS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how photosynthesis works, step by step.",
    "Describe the water cycle to a ten-year-old.",
    "Write a letter to a friend about your summer holiday in the mountains.",
    "Explain the difference between weather and climate, with examples.",
    "Describe how a bill becomes a law in a parliamentary democracy.",
    "Write a poem about the sea at night.",
    "Explain how vaccines train the immune system.",
    "Give me a detailed recipe for a vegetable soup.",
    "Describe the life cycle of a butterfly.",
    "Explain why the sky is blue and sunsets are red.",
    "Write a product description for a waterproof hiking backpack.",
    "Explain how a computer stores numbers in binary.",
    "Tell me about the history of the printing press.",
    "Describe a busy market in a small town on a Saturday morning.",
    "Explain how to plant and care for a tomato plant.",
    "Write a short speech for a school graduation.",
    "Explain how airplanes stay in the air.",
    "Describe the main causes of the French Revolution.",
    "Write a story about a robot that learns to paint.",
    "Explain how the heart pumps blood through the body.",
    "Give ten tips for studying well before an exam.",
    "Describe how bread is made, from wheat to loaf.",
    "Explain what a black hole is and how it forms.",
    "Write a diary entry of an astronaut on the Moon.",
    "Explain the rules of chess for a beginner.",
    "Describe the benefits of regular exercise for health.",
    "Explain how rainbows form.",
    "Write a fairy tale about a dragon who is afraid of fire.",
    "Explain how the internet sends a message from one computer to another.",
    "Describe a walk through a forest in autumn.",
    "Explain how recycling plastic works and why it matters.",
    "Write a short mystery story set on a train.",
    "Explain how volcanoes erupt.",
    "Describe the planets of the solar system one by one.",
    "Explain how to make a good cup of tea.",
    "Write an email asking a manager for a day off, politely.",
    "Explain how electricity gets from a power plant to a home.",
    "Describe the daily life of a medieval farmer.",
    "Explain what inflation is and how it affects prices.",
    "Write a story about two friends who get lost in a big city.",
    "Explain how bees make honey.",
    "Describe how to change a flat tyre on a bicycle.",
    "Explain the theory of evolution in simple words.",
    "Write a review of an imaginary restaurant by the river.",
    "Explain how the Moon causes the tides.",
    "Describe the steps to write a good essay.",
    "Explain how a refrigerator keeps food cold.",
)


def questions(count: int, seed: int) -> list[str]:
    """``count`` questions, shuffled by ``seed``; cycled when more than there are."""
    order = np.random.default_rng(seed).permutation(len(QUESTIONS))
    return [QUESTIONS[int(order[i % len(order)])] for i in range(count)]


def chat_prompt(tokenizer: Any, question: str) -> list[int]:
    """``question`` as the user's turn through the tokenizer's chat template, ready for the
    assistant's answer (as a server renders a chat completion request)."""
    messages = [{"role": "user", "content": question}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding in recent transformers
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def chat_requests(
    tokenizer: Any, count: int, budgets: tuple[int, int], seed: int
) -> list[LlmRequest]:
    """``count`` chat requests, budgets drawn uniformly from ``budgets``."""
    rng = np.random.default_rng(seed)
    return [
        LlmRequest(chat_prompt(tokenizer, q), int(rng.integers(budgets[0], budgets[1] + 1)))
        for q in questions(count, seed)
    ]
