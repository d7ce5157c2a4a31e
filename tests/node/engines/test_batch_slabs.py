"""The running batch's KV slabs: a decode step writes its column in place (no copy of the
cache), and the logits equal DynamicCache's through prefills, merges and dropped rows."""

from __future__ import annotations

import torch
from tallystick.node.engines._batch import Batch, _SlabLayer
from tallystick.node.engines._loading import LoadedModel

PROMPTS = ([5, 9, 14, 3], [7, 7, 2], [11, 4, 6, 8, 10, 12])


def _run(model: torch.nn.Module, preallocate: bool) -> tuple[list[torch.Tensor], list[int]]:
    """Two prompts, 5 steps, a third joins, 40 steps, the first leaves, 40 steps."""
    batch, out, moves = Batch(preallocate=preallocate), [], []
    with torch.inference_mode():
        out.append(batch.prefill(model, list(PROMPTS[:2])))
        last = out[-1].argmax(-1).tolist()
        for step in range(85):
            if step == 5:
                out.append(batch.prefill(model, [PROMPTS[2]]))
                last = [*last, int(out[-1].argmax(-1))]
            if step == 45:
                batch.keep([1, 2])
                last = last[1:]
            slab = getattr(batch.cache.layers[0], "slab_k", None) if batch.cache else None
            out.append(batch.decode(model, last))
            last = out[-1].argmax(-1).tolist()
            moves.append(int(batch.cache.layers[0].slab_k is not slab) if preallocate else 0)
    return out, moves


def test_slabs_give_dynamic_cache_logits_and_grow_rarely(tiny_model: LoadedModel) -> None:
    model = tiny_model.model
    plain, _ = _run(model, preallocate=False)
    slab, moves = _run(model, preallocate=True)
    assert len(plain) == len(slab)
    for a, b in zip(plain, slab, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    batch = Batch()
    with torch.inference_mode():
        batch.prefill(model, [PROMPTS[0]])
    assert isinstance(batch.cache.layers[0], _SlabLayer)
    # A new slab after the first prefill, the merge, the dropped row and a few times as the
    # sequences grow (by a quarter of their length at least 32): not every step.
    assert 3 <= sum(moves) <= 8, moves
