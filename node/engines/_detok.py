"""Incremental detokenisation under the counting rule (docs/protocol.md §6).

The text of a completion is always ``decode(all ids so far)``; deltas are the new suffix of
that full decode. A delta is held back while the decode ends in an incomplete UTF-8
character (U+FFFD) or while its tail could still be the start of a stop string, so no text
is ever sent that a later id would have to take back.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Detokenizer"]

_REPLACEMENT = "\ufffd"


class Detokenizer:
    """Turns a growing list of completion ids into text deltas, cutting at stop strings."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()) -> None:
        self._decode = decode
        self._stop = stop
        self._ids: list[int] = []
        self._sent = ""
        self.stopped = False  # a stop string matched; the text is final

    @property
    def text(self) -> str:
        """The text emitted so far."""
        return self._sent

    def push(self, ids: list[int]) -> str:
        """Add generated ids; return the text that can safely be sent now."""
        self._ids.extend(ids)
        full = self._decode(self._ids)
        cut = self._stop_at(full)
        if cut is not None:
            self.stopped = True
            return self._advance(full[:cut])
        return self._advance(full[: self._safe_end(full)])

    def flush(self) -> str:
        """Generation ended: return all text not sent yet (up to a matched stop string)."""
        if self.stopped:
            return ""
        return self._advance(self._decode(self._ids))

    def _stop_at(self, full: str) -> int | None:
        hits = [i for i in (full.find(s) for s in self._stop) if i >= 0]
        return min(hits) if hits else None

    def _safe_end(self, full: str) -> int:
        end = len(full)
        while end > 0 and full[end - 1] == _REPLACEMENT:
            end -= 1
        return end - self._stop_prefix_len(full[:end])

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def _advance(self, target: str) -> str:
        # Byte-level decodes only ever grow once U+FFFD tails are held back; if a decoder
        # ever rewrote sent text, hold everything until the decode agrees again.
        if len(target) <= len(self._sent) or not target.startswith(self._sent):
            return ""
        delta = target[len(self._sent) :]
        self._sent = target
        return delta
