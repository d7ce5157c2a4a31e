"""Does a greedy audit hold in front of llama.cpp? (docs/protocol.md §10.5)

llama-server (``make llama``'s build) serves the listed Q4_1 GGUF at temperature 0 through the
node's own ``LlamaCppEngine`` (native ``/completion``, llama.cpp's own token ids); the
auditor's reference is the same GGUF dequantised into transformers (float32). llama.cpp
computes in quantised kernels (Q4_1 weights against Q8 activations), so its logits differ
from the reference's: this measures by how much, as the audit sees it. Per completion
position: does llama.cpp's id equal the reference's argmax, and the margin
``ref[id] - max(ref)`` (0 when it is the argmax; how far below the best otherwise).
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any


def greedy_section(h: Any, n: int, per_kind: int, max_tokens: int,
                   progress: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """llama.cpp's honest greedy agreement, sequential (1 slot) and 4 at once (4 slots), and
    what the greedy check sees of substituted weights served greedily (the in-process engine:
    llama.cpp cannot load them); ``caught`` counts completions the tolerance fails."""
    from tallystick.client._audit import GREEDY_TOLERANCE

    from bench.fidelity import prompts

    out: dict[str, Any] = {"tolerance": GREEDY_TOLERANCE, "max_tokens": max_tokens}
    # prompts() has 120 distinct texts: the two settings get different ones (n <= 60).
    for k, slots in enumerate((1, 4)):
        ids = prompts(h.counter, n, k * n)
        out[f"llamacpp_{slots}_slots"] = greedy_agreement(
            h.model, h.reference, ids, max_tokens, progress, slots
        )
    for kind in ("round4", "perturb", "drop_layer", "random_init"):
        ids = prompts(h.counter, per_kind, 4000)
        gens = h.run(h.engine(kind), ids, 8, 1, 0.0, max_tokens)
        out[kind] = _compare(
            h.reference, [g.prompt_ids for g in gens], [g.completion_ids for g in gens]
        )
        progress(f"greedy {kind}: match {out[kind]['argmax_match_rate']}")
    for v in out.values():
        if isinstance(v, dict) and "worst_margin_per_completion" in v:
            worst = v["worst_margin_per_completion"]
            v["caught"] = sum(w < -GREEDY_TOLERANCE for w in worst)
    return out


def greedy_agreement(
    model: Path, reference: Any, prompt_ids: list[list[int]], max_tokens: int,
    progress: Callable[[str], None], slots: int = 1,
) -> dict[str, Any]:  # fmt: skip
    from tallystick.node.engines import LlamaCppEngine, Prompt, SamplingParams, find_llama_server

    engine = LlamaCppEngine(str(model), binary=find_llama_server(), parallel=slots, threads=1)
    gate = asyncio.Semaphore(slots)

    async def run() -> list[list[int]]:
        await engine.start()
        try:
            return list(await asyncio.gather(*(one(ids) for ids in prompt_ids)))
        finally:
            await engine.stop()

    async def one(ids: list[int]) -> list[int]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=1)
        text = engine.counter.decode(ids)
        out: list[int] = []
        async with gate:  # ``slots`` at once: llama.cpp batches them
            async for event in engine.generate(Prompt(ids=ids, text=text), params):
                out.extend(event.token_ids)
        return out

    completions = asyncio.run(run())
    progress(f"llama-server, {slots} slot(s): {len(completions)} greedy completions")
    return _compare(reference, prompt_ids, completions)


def _compare(reference: Any, prompts: list[list[int]], completions: list[list[int]]) -> dict:
    margins: list[float] = []
    worst: list[float] = []  # per completion: its lowest margin (what a greedy audit judges)
    first_miss: list[int] = []
    for ids, out in zip(prompts, completions, strict=True):
        if not out:
            continue
        logits = reference.logits(ids, out)  # (n, vocab)
        rows = [float(logits[i, t] - logits[i].max()) for i, t in enumerate(out)]
        margins += rows
        worst.append(min(rows))
        misses = [i for i, m in enumerate(rows) if m < 0]
        if misses:
            first_miss.append(misses[0])
    below = sorted(m for m in margins if m < 0)
    n = len(margins)
    return {
        "completions": len(completions),
        "tokens": n,
        "argmax_match_rate": round(1 - len(below) / n, 5) if n else None,
        "completions_all_matching": len(completions) - len(first_miss),
        "mismatches": len(below),
        "worst_margins": [round(m, 4) for m in below[:10]],
        "median_mismatch_margin": round(statistics.median(below), 4) if below else None,
        "margin_quantiles_of_mismatches": _quantiles(below),
        "worst_margin_per_completion": [round(w, 4) for w in worst],
    }


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if len(values) < 2:
        return None
    q = statistics.quantiles(values, n=10)
    return {"p10": round(q[0], 4), "p50": round(q[4], 4), "p90": round(q[8], 4)}
