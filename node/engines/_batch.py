"""The running batch of a TransformersEngine: sequences sharing one left-padded KV cache.

Sequences are prefilled together (left-padded), then merged into the running batch at a step
boundary by left-padding the shorter cache; finished ones are dropped with an index select,
and columns that are padding for every remaining sequence are trimmed off the left.
Positions are per sequence (count of its real tokens), so padding never shifts RoPE.

The KV tensors of each layer live in a slab with room to grow (``_SlabLayer``): a decode step
writes its new column in place instead of concatenating the whole cache (``DynamicCache``'s
``torch.cat`` of every layer's keys and values copied the cache twice per step: 15% of a
batch-8 step here, growing with the length). Admitting or dropping sequences replaces the
tensors (rare); the next step moves them into a fresh slab.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

__all__ = ["Batch"]


class _SlabLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of a larger slab (batch, heads,
    capacity, dim): ``update`` writes the new columns in place while they fit. Whatever
    replaces ``keys``/``values`` from outside (the batch's merge and keep) is moved into a
    new slab at the next update."""

    slab_k: torch.Tensor | None = None
    slab_v: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys, self.values
        if not self.is_initialized or keys is None or values is None or keys.numel() == 0:
            return self._move(key_states, value_states)
        length, added = keys.shape[-2], key_states.shape[-2]
        slab_k, slab_v = self.slab_k, self.slab_v
        if (
            slab_k is None
            or slab_v is None
            or keys.data_ptr() != slab_k.data_ptr()
            or values.data_ptr() != slab_v.data_ptr()
            or keys.shape[0] != slab_k.shape[0]
            or length + added > slab_k.shape[2]
        ):
            self._move(keys, values, length + added)
            slab_k, slab_v = self.slab_k, self.slab_v
            assert slab_k is not None and slab_v is not None
        slab_k[:, :, length : length + added] = key_states
        slab_v[:, :, length : length + added] = value_states
        self.keys = keys = slab_k[:, :, : length + added]
        self.values = values = slab_v[:, :, : length + added]
        return keys, values

    def _move(
        self, keys: torch.Tensor, values: torch.Tensor, need: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy ``keys``/``values`` into a new slab with room for ``need`` columns and more."""
        length = keys.shape[-2]
        need = max(need, length)
        capacity = need + max(32, need // 4)  # a new slab every ~need/4 steps
        shape = (keys.shape[0], keys.shape[1], capacity, keys.shape[3])
        self.slab_k = keys.new_empty(shape)
        self.slab_v = values.new_empty((*shape[:3], values.shape[3]))
        self.slab_k[:, :, :length] = keys
        self.slab_v[:, :, :length] = values
        self.keys = moved_k = self.slab_k[:, :, :length]
        self.values = moved_v = self.slab_v[:, :, :length]
        self.device, self.is_initialized = keys.device, True
        return moved_k, moved_v


def _slab_cache(preallocate: bool) -> DynamicCache:
    cache = DynamicCache()
    if preallocate:
        cache.layer_class_to_replicate = _SlabLayer
    return cache


class Batch:
    """KV cache, attention mask and next inputs of the sequences decoding together."""

    def __init__(self, preallocate: bool = True) -> None:
        self.preallocate = preallocate  # KV in growable slabs (False: DynamicCache's cat)
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)  # (batch, cached_len), 1 = real token
        self.lengths = torch.zeros(0, dtype=torch.long)  # (batch,) real tokens in the cache

    def clear(self) -> None:
        self.cache = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.lengths = torch.zeros(0, dtype=torch.long)

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])

    def prefill(self, model: Any, prompts: Sequence[list[int]]) -> torch.Tensor:
        """Run the prompts (left-padded) and merge them in; returns their last logits (n, vocab)."""
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)  # (n, width)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (n, width)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (n, width)
        cache = _slab_cache(self.preallocate)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._merge(cache, mask)
        return out.logits[:, -1, :]  # (n, vocab)

    def prefill_after(
        self, model: Any, prefix: list[tuple[torch.Tensor, torch.Tensor]], suffix: list[int]
    ) -> torch.Tensor:
        """Run one prompt whose first ids' KV is ``prefix`` (a PrefixCache hit): only the
        ``suffix`` is computed. Merges it in; returns its last logits (1, vocab)."""
        start = int(prefix[0][0].shape[2])
        cache = _slab_cache(self.preallocate)
        for layer, (keys, values) in enumerate(prefix):
            cache.update(keys, values, layer)
        ids = torch.tensor([suffix], dtype=torch.long)  # (1, suffix)
        mask = torch.ones((1, start + len(suffix)), dtype=torch.long)  # (1, prefix + suffix)
        positions = torch.arange(start, start + len(suffix), dtype=torch.long).unsqueeze(0)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._merge(cache, mask)
        return out.logits[:, -1, :]  # (1, vocab)

    def row_kv(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of ``row``'s KV without its padding: per layer (1, heads, length, dim)."""
        length = int(self.lengths[row])
        start = int(self.mask.shape[1]) - length
        return [
            (
                layer.keys[row : row + 1, :, start:].clone(),
                layer.values[row : row + 1, :, start:].clone(),
            )
            for layer in self._layers(self.cache)
        ]

    def decode(self, model: Any, last_ids: Sequence[int]) -> torch.Tensor:
        """One step for every sequence, fed its last id; returns next logits (batch, vocab)."""
        ids = torch.tensor(last_ids, dtype=torch.long).unsqueeze(1)  # (batch, 1)
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)  # (batch, len + 1)
        positions = self.lengths.unsqueeze(1)  # (batch, 1)
        out = model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.lengths = self.lengths + 1
        return out.logits[:, -1, :]  # (batch, vocab)

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in this order); trim columns that became padding for all."""
        if len(rows) == self.size:
            return
        if not rows:
            self.clear()
            return
        index = torch.tensor(rows, dtype=torch.long)
        self.mask = self.mask[index]
        self.lengths = self.lengths[index]
        start = int(self.mask.shape[1] - self.lengths.max())
        self.mask = self.mask[:, start:]
        for layer in self._layers(self.cache):
            layer.keys = layer.keys[index, :, start:, :]
            layer.values = layer.values[index, :, start:, :]

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        if self.cache is None or self.size == 0:
            self.cache, self.mask, self.lengths = cache, mask, mask.sum(-1)
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self._layers(self.cache), self._layers(cache), strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width), _pad_left(new.keys, width)])
            old.values = torch.cat([_pad_left(old.values, width), _pad_left(new.values, width)])
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)])
        self.lengths = torch.cat([self.lengths, mask.sum(-1)])

    @staticmethod
    def _layers(cache: DynamicCache | None) -> list[Any]:
        return [] if cache is None else list(cache.layers)


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence axis of a mask (batch, len) or a KV tensor (batch, heads, len, dim)."""
    axis = 1 if t.dim() == 2 else 2
    missing = width - t.shape[axis]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], dim=axis)
