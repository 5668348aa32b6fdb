"""`TextAssembler`: a request's token ids turned into text, piece by piece.

Plain code, no I/O: each token id goes in, the text that is now certain comes
out. Decoding is incremental (as vLLM and TGI do it): each token decodes a
window of a few ids, never the whole sequence, and the window starts in the
prompt's last tokens so the first piece gets its leading space right. Text is
held back while it ends in an unfinished character (a byte-level tokenizer's
partial UTF-8) or might still be the start of a stop string.

Each token costs a bounded amount of work: two decodes of a few ids, and a
stop search over the last ``longest stop + new text`` characters (the
request limits bound the stop strings' count and length).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["TextAssembler"]

_PARTIAL = "\ufffd"
CONTEXT = 5  # prompt tokens decoded with the first generated ones


def decoder_of(tokenizer: Any) -> Callable[[list[int]], str]:
    """``ids → text`` without special tokens; the Rust decoder itself when there is one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda ids: str(backend.decode(ids, skip_special_tokens=True))
    return lambda ids: str(
        tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    )


class TextAssembler:
    """Decode ``token ids → text`` incrementally, cut at the first stop string."""

    def __init__(
        self, tokenizer: Any, stop: Sequence[str] = (), context: Sequence[int] = ()
    ) -> None:
        self._decode = decoder_of(tokenizer)
        self._stop = tuple(s for s in stop if s)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._ids = list(context[-CONTEXT:])
        self._prefix = 0  # the window: ids[_prefix:_read] are decoded already
        self._read = len(self._ids)
        self._decoded = ""  # the text of every generated id decoded so far
        self._released = 0  # how much of it has been released
        self.stopped = False  # a stop string was found: the text ends before it

    @property
    def text(self) -> str:
        """What has been released."""
        return self._decoded[: self._released]

    def add(self, token_id: int) -> str:
        """Take one more token; return the text it releases ("" when nothing is certain yet)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        window = self._ids[self._prefix :]
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(window)
        if len(after) > len(before) and not after.endswith(_PARTIAL):
            self._decoded += after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The text still held back, once no token will follow."""
        if self.stopped:
            return ""
        rest = self._decode(self._ids[self._prefix :])
        before = self._decode(self._ids[self._prefix : self._read])
        self._decoded += rest[len(before) :].rstrip(_PARTIAL)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        decoded = self._decoded
        cut = self._find_stop(decoded)
        if cut is not None:
            self.stopped = True
            end = cut
        else:
            end = len(decoded) if final else len(decoded) - self._held_back(decoded)
        if end <= self._released:
            return ""
        piece = decoded[self._released : end]
        self._released = end
        return piece

    def _find_stop(self, decoded: str) -> int | None:
        start = max(0, self._released - self._longest_stop)
        found = [i for i in (decoded.find(s, start) for s in self._stop) if i >= 0]
        return min(found) if found else None

    def _held_back(self, decoded: str) -> int:
        """How many trailing characters might begin a stop string: the longest tail of
        ``decoded`` that some stop string starts with."""
        held = 0
        for stop in self._stop:
            tail = decoded[len(decoded) - min(len(stop) - 1, len(decoded)) :]
            at = tail.find(stop[0])
            while at >= 0 and len(tail) - at > held:
                if stop.startswith(tail[at:]):
                    held = len(tail) - at
                    break
                at = tail.find(stop[0], at + 1)
        return held
