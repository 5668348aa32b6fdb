"""`TextAssembler`: a request's token ids turned into text, piece by piece.

Plain code, no I/O: each token id goes in, the text that is now certain comes
out. Text is held back while it might still be the start of a stop string, or
ends in an unfinished character (a byte-level tokenizer's partial UTF-8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["TextAssembler"]

_PARTIAL = "\ufffd"


class TextAssembler:
    """Decode ``token ids → text`` incrementally, cut at the first stop string."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self.text = ""  # what has been released so far
        self.stopped = False  # a stop string was found: the text ends before it

    def add(self, token_id: int) -> str:
        """Take one more token; return the text it releases ("" when nothing is certain yet)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        decoded = self._decode()
        cut = self._find_stop(decoded)
        if cut is not None:
            self.stopped = True
            return self._release(decoded[:cut])
        return self._release(decoded[: len(decoded) - self._held_back(decoded)])

    def finish(self) -> str:
        """The text still held back, once no token will follow."""
        if self.stopped:
            return ""
        decoded = self._decode()
        cut = self._find_stop(decoded)
        if cut is not None:
            self.stopped = True
            decoded = decoded[:cut]
        return self._release(decoded.rstrip(_PARTIAL))

    def _decode(self) -> str:
        text: str = self._tokenizer.decode(
            self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text

    def _find_stop(self, decoded: str) -> int | None:
        start = max(0, len(self.text) - max((len(s) for s in self._stop), default=0))
        found = [i for i in (decoded.find(s, start) for s in self._stop) if i >= 0]
        return min(found) if found else None

    def _held_back(self, decoded: str) -> int:
        """How many trailing characters might still change or begin a stop string."""
        held = len(decoded) - len(decoded.rstrip(_PARTIAL))
        body = decoded[: len(decoded) - held]
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(body)), 0, -1):
                if body.endswith(stop[:size]):
                    held = max(held, len(decoded) - len(body) + size)
                    break
        return held

    def _release(self, upto: str) -> str:
        """What ``upto`` adds to the text released; nothing if decoding went back on it."""
        if len(upto) <= len(self.text) or not upto.startswith(self.text):
            return ""
        piece = upto[len(self.text) :]
        self.text = upto
        return piece
