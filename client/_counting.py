"""The client's own count of a chat prompt, fast: the counting rule of §6 without re-encoding.

A chat request resends the whole conversation, so counting it from scratch costs O(length) per
request and O(turns²) per conversation; encoding ~1,000 tokens is ~1.5 ms on one core, most of
the client's verification. For byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM: no
normalizer, a ``ByteLevel`` pre-tokenizer, plain added tokens) the tokenizer first cuts the text
at its added tokens (``<|im_start|>``, ...) and encodes each piece on its own, so the ids of a
prompt are the ids of its pieces joined: earlier messages' pieces come from a cache, and only
new text is encoded (without offsets, which the count does not need). Other tokenizers, and any
bundle whose first prompt does not count the same both ways, use the protocol's whole-text count.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from tallystick.protocol import TokenCounter
from tokenizers import Tokenizer

__all__ = ["PromptCounter"]

log = logging.getLogger(__name__)

CACHE_PIECES = 4096  # distinct message pieces remembered per bundle (a few conversations' worth)


class PromptCounter:
    """``chat_prompt_ids`` by cached pieces when the bundle allows it; else the protocol's."""

    def __init__(self, counter: TokenCounter, cache_pieces: int = CACHE_PIECES) -> None:
        self.counter = counter
        # The protocol loaded the same JSON already (a bundle that does not load never gets here).
        self._tokenizer = Tokenizer.from_str(counter.bundle.tokenizer_json)
        self._split, self._added = _splitter(self._tokenizer)
        self._pieces: OrderedDict[str, list[int]] = OrderedDict()
        self._cache_pieces = cache_pieces
        self._checked = False  # the first prompt is counted both ways
        self._lock = threading.Lock()

    @property
    def by_pieces(self) -> bool:
        return self._split is not None

    def chat_prompt_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The same ids as ``TokenCounter.chat_prompt_ids(messages)``."""
        if self._split is None:
            return self.counter.chat_prompt_ids(messages)
        ids = self._by_pieces(self.counter.render_chat(messages))
        if not self._checked:
            self._checked = True
            whole = self.counter.chat_prompt_ids(messages)
            if whole != ids:
                log.warning("this tokenizer does not encode piece by piece; counting whole prompts")
                self._split = None
                return whole
        return ids

    def _by_pieces(self, text: str) -> list[int]:
        assert self._split is not None
        pieces = [p for p in self._split.split(text) if p]
        with self._lock:
            known = {p: self._pieces.get(p) for p in pieces if p not in self._added}
            for p, ids in known.items():
                if ids is not None:
                    self._pieces.move_to_end(p)
        misses = [p for p, ids in known.items() if ids is None]
        if misses:
            fresh = self._tokenizer.encode_batch_fast(misses, add_special_tokens=False)
            new = {p: list(e.ids) for p, e in zip(misses, fresh, strict=True)}
            known.update(new)
            self._remember(new)
        out: list[int] = []
        for p in pieces:
            added = self._added.get(p)
            if added is not None:
                out.append(added)
            else:
                out += known[p] or []
        return out

    def _remember(self, new: dict[str, list[int]]) -> None:
        with self._lock:
            self._pieces.update(new)
            while len(self._pieces) > self._cache_pieces:
                self._pieces.popitem(last=False)


def _splitter(tokenizer: Tokenizer) -> tuple[re.Pattern[str] | None, dict[str, int]]:
    """A regex cutting text at the added tokens, or None when pieces are not independent."""
    added = tokenizer.get_added_tokens_decoder()
    plain = all(not (t.lstrip or t.rstrip or t.single_word or t.normalized) for t in added.values())
    if not added or not plain or tokenizer.normalizer is not None or not _byte_level(tokenizer):
        return None, {}
    ids = {str(t.content): int(i) for i, t in added.items()}
    # Longest first: at the leftmost match the longest token wins, as in tokenizers.
    alternatives = "|".join(re.escape(t) for t in sorted(ids, key=len, reverse=True))
    return re.compile(f"({alternatives})"), ids


def _byte_level(tokenizer: Tokenizer) -> bool:
    if tokenizer.pre_tokenizer is None:
        return False
    pre = json.loads(tokenizer.pre_tokenizer.__getstate__())  # a few hundred bytes
    kinds = [p.get("type") for p in pre.get("pretokenizers", [pre])]
    return "ByteLevel" in kinds and set(kinds) <= {"ByteLevel", "Split", "Digits"}
