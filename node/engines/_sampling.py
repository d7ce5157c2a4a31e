"""Per-sequence sampling.

``SeededSampler`` is the auditable sampler of docs/protocol.md §10.2: the id at completion
position ``i`` is ``argmax(logits + T * gumbel_noise(seed, i))`` over the nucleus (greedy at
temperature 0), so anyone holding the weights and the record can recompute it. It also keeps
each chosen id's logit, the per-token proof the record commits to.

``sample`` with ``make_generator`` is the earlier torch-multinomial sampler, kept only as the
baseline the fidelity bench measures the seeded sampler's overhead against.
"""

from __future__ import annotations

import secrets

import torch
from tallystick.protocol._fidelity import gumbel_noise, nucleus, params_units

from ._base import SamplingParams

__all__ = ["SeededSampler", "make_generator", "sample", "token_logprob"]


class SeededSampler:
    """Picks one request's ids from (seed, position); remembers each chosen id's logit."""

    def __init__(self, params: SamplingParams) -> None:
        if params.seed is None:
            raise ValueError("the seeded sampler needs a seed (the node picks one if absent)")
        self.seed = params.seed
        # The record carries millionths: sample with exactly the value it will state.
        self.temperature = params_units(params.temperature) / 1e6
        self.top_p = params_units(params.top_p) / 1e6
        self.position = 0
        self.logits: list[float] = []

    def __call__(self, logits: torch.Tensor) -> int:
        """The next id from one row of logits (vocab,)."""
        row = logits.float()
        if self.temperature == 0:
            choice = int(torch.argmax(row))
        else:
            scores = row + self.temperature * gumbel_noise(self.seed, self.position, row.shape[0])
            if self.top_p < 1.0:
                scores = scores.masked_fill(~nucleus(row, self.temperature, self.top_p), -torch.inf)
            choice = int(torch.argmax(scores))
        self.position += 1
        self.logits.append(float(row[choice]))
        return choice


def make_generator(seed: int | None) -> torch.Generator:
    """A generator of its own per request, so a seeded request never depends on batch mates."""
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else secrets.randbits(63))
    return gen


def sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
    """The baseline (not auditable) sampler: pick the next id from one row of logits (vocab,)."""
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


def token_logprob(
    logits: torch.Tensor, chosen: int, top: int
) -> tuple[float, tuple[tuple[int, float], ...]]:
    """``chosen``'s logprob under the model (log-softmax of one row (vocab,)) and the ``top``
    most likely ids with theirs: OpenAI's ``logprobs``/``top_logprobs``."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (vocab,)
    best = torch.topk(logprobs, top) if top else None
    alternatives = (
        tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best else ()
    )
    return float(logprobs[chosen]), alternatives
