"""PrefixCache: the KV cache of finished sequences, reused by a later prompt that starts with
the same ids (a multi-turn chat re-sends its whole history every turn).

Entries are kept per scope (the node passes the channel id, so one client's prompts never
warm another's and no timing reveals what someone else sent), least recently used first
out, within a byte budget. An entry is the KV of a sequence's real tokens only (no padding),
one ``(keys, values)`` pair per layer, each ``(1, kv_heads, length, head_dim)``, and the ids
they stand for. Billing does not change: a reused prefix is still part of the prompt
(docs/protocol.md §6); only the work of recomputing it is saved.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["PrefixCache", "PrefixHit"]

Layers = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class PrefixHit:
    """The first ``length`` ids of a prompt, with their KV (sliced to ``length``)."""

    length: int
    layers: Layers


@dataclass(frozen=True)
class _Entry:
    ids: tuple[int, ...]
    layers: Layers
    nbytes: int


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """Finished sequences' KV by (scope, ids), LRU within ``max_bytes``."""

    def __init__(self, max_bytes: int, min_tokens: int = 64) -> None:
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self._entries: OrderedDict[tuple[Hashable, tuple[int, ...]], _Entry] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, scope: Hashable, ids: Sequence[int], layers: Layers) -> None:
        """Keep ``layers`` (the KV of ``ids``); an entry it extends is dropped."""
        if self.max_bytes <= 0 or len(ids) < self.min_tokens:
            return
        key = tuple(ids)
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        if nbytes > self.max_bytes:
            return
        for old_key in [k for k in self._entries if k[0] == scope]:
            old = old_key[1]
            if len(old) <= len(key) and key[: len(old)] == old:
                self._drop(old_key)  # superseded: the new entry holds all of it
        self._drop((scope, key))
        self._entries[(scope, key)] = _Entry(key, layers, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def match(self, scope: Hashable, prompt: Sequence[int]) -> PrefixHit | None:
        """The longest cached prefix of ``prompt`` in ``scope`` (one id at least is left to
        compute, so the model still gives the next token's logits)."""
        best: tuple[int, tuple[Hashable, tuple[int, ...]]] | None = None
        for key, entry in self._entries.items():
            if key[0] != scope:
                continue
            n = min(_common(entry.ids, prompt), len(prompt) - 1)
            if n >= self.min_tokens and (best is None or n > best[0]):
                best = (n, key)
        if best is None:
            return None
        length, key = best
        self._entries.move_to_end(key)
        entry = self._entries[key]
        self.hits += 1
        self.reused_tokens += length
        layers = [(k[:, :, :length], v[:, :, :length]) for k, v in entry.layers]
        return PrefixHit(length, layers)

    def _drop(self, key: tuple[Hashable, tuple[int, ...]]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
