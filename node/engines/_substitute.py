"""Test-only weight substitutions: what a cheating provider would serve instead of the listing.

Used by the fidelity bench and tests, and by ``tallystick-node serve
--test-only-perturb-weights`` (the demo's cheating node). Nothing here runs in normal serving.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SUBSTITUTIONS", "substitute"]

SUBSTITUTIONS = ("round4", "perturb", "drop_layer", "random_init")


def substitute(model: Any, kind: str, size: float = 0.01, seed: int = 0) -> Any:
    """Change ``model``'s weights in place as ``kind`` says; returns the model.

    - ``round4``: every matrix rounded to 4 bits (symmetric, one absmax scale per row);
    - ``perturb``: Gaussian noise of ``size`` times each tensor's own standard deviation;
    - ``drop_layer``: the middle decoder layer removed (same tokenizer, a smaller model);
    - ``random_init``: every weight re-drawn with the model's own initialiser.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if kind == "round4":
            for p in _matrices(model):
                scale = p.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 7  # (rows, 1)
                p.copy_(torch.round(p / scale).clamp(-8, 7) * scale)
        elif kind == "perturb":
            for p in model.parameters():
                if p.numel() > 1:
                    noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                    p.add_(noise * (size * float(p.std())))
        elif kind == "drop_layer":
            layers = model.model.layers
            del layers[len(layers) // 2]
            model.config.num_hidden_layers = len(layers)
            for i, layer in enumerate(layers):  # the KV cache indexes layers by this
                layer.self_attn.layer_idx = i
        elif kind == "random_init":
            torch.manual_seed(seed)
            model.apply(model._init_weights)
            model.tie_weights()
        else:
            raise ValueError(f"unknown substitution {kind!r}; one of {', '.join(SUBSTITUTIONS)}")
    return model


def _matrices(model: Any) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for p in model.parameters():
        if p.dim() == 2 and id(p) not in seen:  # tied embeddings once
            seen.add(id(p))
            out.append(p)
    return out
