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


def greedy_agreement(
    model: Path, reference: Any, prompt_ids: list[list[int]], max_tokens: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    from tallystick.node.engines import LlamaCppEngine, Prompt, SamplingParams, find_llama_server
    from tallystick.node.engines._errors import UpstreamUnavailable

    engine = LlamaCppEngine(str(model), binary=find_llama_server(), parallel=1, threads=1)

    async def run() -> list[list[int]]:
        await engine.start()
        try:
            out = []
            for k, ids in enumerate(prompt_ids):
                try:
                    out.append(await one(ids))
                except UpstreamUnavailable as exc:  # llama-server closed a kept-alive socket
                    progress(f"completion {k}: {exc}; once more")
                    out.append(await one(ids))
            return out
        finally:
            await engine.stop()

    async def one(ids: list[int]) -> list[int]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=1)
        text = engine.counter.decode(ids)
        out: list[int] = []
        async for event in engine.generate(Prompt(ids=ids, text=text), params):
            out.extend(event.token_ids)
        return out

    completions = asyncio.run(run())
    progress(f"llama-server: {len(completions)} greedy completions")
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
