"""Per-sequence sampling: greedy, temperature and nucleus (top-p), with a private generator."""

from __future__ import annotations

import secrets

import torch

from ._base import SamplingParams

__all__ = ["make_generator", "sample"]


def make_generator(seed: int | None) -> torch.Generator:
    """A generator of its own per request, so a seeded request never depends on batch mates."""
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else secrets.randbits(63))
    return gen


def sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
    """Pick the next id from one row of logits (vocab,)."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)  # (vocab,)
    if params.top_p < 1.0:
        return _sample_top_p(probs, params.top_p, gen)
    return int(torch.multinomial(probs, 1, generator=gen))


def _sample_top_p(probs: torch.Tensor, top_p: float, gen: torch.Generator) -> int:
    sorted_probs, order = torch.sort(probs, descending=True)
    # Keep the smallest prefix whose mass reaches top_p (always at least the top id).
    keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < top_p
    kept = sorted_probs * keep
    choice = torch.multinomial(kept / kept.sum(), 1, generator=gen)
    return int(order[choice])
