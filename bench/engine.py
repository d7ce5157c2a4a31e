"""Engine throughput and latency on the real model: the bare TransformersEngine at several
concurrency levels (same prompts, greedy, ``max_tokens`` fixed).

    python -m bench.engine [--model PATH] [--streams 1,4,8,16] [--max-tokens 64]
                           [--threads N] [--baseline] [--repeats 2]

Prints aggregate tokens/s, TTFT p50/p95, inter-token latency p50/p95 per level (the best of
``--repeats`` runs), and the 8-stream / 1-stream throughput ratio against the 5x target.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / ".models" / "SmolLM2-135M-Instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET_RATIO = 5.0
# Open-ended requests, so that every stream runs to max_tokens rather than stopping early.
QUESTIONS = (
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how a payment channel works.",
    "Describe a walk through a busy market, in detail.",
    "Write a long essay about the history of bread.",
    "Explain step by step how to plant a vegetable garden.",
    "Tell a long story about a dragon who learns to cook.",
    "Describe the water cycle in great detail.",
    "Write a detailed guide to learning a new language.",
)


@dataclass(frozen=True)
class LevelResult:
    streams: int
    tokens: int
    wall_s: float
    ttft_p50: float
    ttft_p95: float
    itl_p50: float
    itl_p95: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def _one(engine: Any, prompt: Any, params: Any) -> tuple[int, Any]:
    tokens, timing = 0, None
    async for event in engine.generate(prompt, params):
        tokens += len(event.token_ids)
        timing = event.timing or timing
    return tokens, timing


async def run_level(
    engine: Any, streams: int, max_tokens: int, questions: Sequence[str] = QUESTIONS
) -> LevelResult:
    """Run ``streams`` concurrent greedy requests once and measure them; stream ``i`` asks
    ``questions[i % len(questions)]`` as a one-message chat."""
    from tallystick.node.engines import Prompt, SamplingParams

    if not questions:
        raise ValueError("run_level needs at least one question")
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    prompts = []
    for i in range(streams):
        messages = [{"role": "user", "content": questions[i % len(questions)]}]
        prompts.append(Prompt(ids=engine.counter.chat_prompt_ids(messages), messages=messages))
    started = time.perf_counter()
    results = await asyncio.gather(*(_one(engine, p, params) for p in prompts))
    wall = time.perf_counter() - started
    ttfts = [t.ttft_s for _, t in results]
    itls = [gap for _, t in results for gap in t.inter_token_s]
    return LevelResult(
        streams=streams,
        tokens=sum(n for n, _ in results),
        wall_s=wall,
        ttft_p50=percentile(ttfts, 50),
        ttft_p95=percentile(ttfts, 95),
        itl_p50=percentile(itls, 50),
        itl_p95=percentile(itls, 95),
    )


async def best_of(
    engine: Any,
    streams: int,
    max_tokens: int,
    repeats: int,
    questions: Sequence[str] = QUESTIONS,
) -> LevelResult:
    """The fastest of ``repeats`` runs: on a shared machine, slower runs measure the neighbours."""
    runs = [await run_level(engine, streams, max_tokens, questions) for _ in range(max(1, repeats))]
    return max(runs, key=lambda r: r.tokens_per_s)


async def bench_engine_async(
    model: str = str(DEFAULT_MODEL),
    levels: tuple[int, ...] = (1, 4, 8, 16),
    max_tokens: int = 64,
    num_threads: int | None = None,
    baseline: bool = False,
    repeats: int = 2,
) -> list[LevelResult]:
    from tallystick.node.engines import TransformersEngine

    engine = TransformersEngine.load(model, max_batch=max(levels), num_threads=num_threads)
    await engine.start()
    try:
        await run_level(engine, 2, 8)  # warm-up: first calls allocate and pick kernels
        results = [await best_of(engine, n, max_tokens, repeats) for n in levels]
    finally:
        await engine.stop()
    if baseline:
        for n in (1, 8):
            rate = static_generate_baseline(engine, n, max_tokens)
            print(f"reference: plain generate(), static batch of {n}: {rate:.1f} tok/s")
    return results


def static_generate_baseline(engine: Any, streams: int, max_tokens: int) -> float:
    """tokens/s of plain ``model.generate`` on one static left-padded batch (a reference
    measured under the same machine load as the engine)."""
    import torch

    tokenizer_prompts = []
    for i in range(streams):
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        tokenizer_prompts.append(engine.counter.chat_prompt_ids(messages))
    width = max(len(p) for p in tokenizer_prompts)
    ids = torch.zeros((streams, width), dtype=torch.long)  # (batch, width)
    mask = torch.zeros((streams, width), dtype=torch.long)
    for row, prompt in enumerate(tokenizer_prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    model = engine._model
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return streams * max_tokens / (time.perf_counter() - started)


def bench_engine(
    model: str = str(DEFAULT_MODEL),
    levels: tuple[int, ...] = (1, 4, 8, 16),
    max_tokens: int = 64,
    num_threads: int | None = None,
    baseline: bool = False,
    repeats: int = 2,
) -> dict[str, Any]:
    """Run the engine bench, print its table and return the figures (for ``python -m bench``)."""
    results = asyncio.run(
        bench_engine_async(model, levels, max_tokens, num_threads, baseline, repeats)
    )
    report(results)
    by_streams = {r.streams: r for r in results}
    ratio = None
    if 1 in by_streams and 8 in by_streams:
        ratio = by_streams[8].tokens_per_s / by_streams[1].tokens_per_s
    return {
        "levels": [
            {"streams": r.streams, "tokens_per_s": r.tokens_per_s, "ttft_p50_s": r.ttft_p50,
             "ttft_p95_s": r.ttft_p95, "itl_p50_s": r.itl_p50, "itl_p95_s": r.itl_p95}
            for r in results
        ],
        "ratio_8_to_1": ratio,
        "target_ratio": TARGET_RATIO,
    }  # fmt: skip


def report(results: list[LevelResult]) -> None:
    print(f"{'streams':>7} {'tokens':>6} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p95':>9} "
          f"{'ITL p50':>8} {'ITL p95':>8}")  # fmt: skip
    for r in results:
        ttft = f"{r.ttft_p50 * 1e3:>7.0f}ms {r.ttft_p95 * 1e3:>7.0f}ms"
        itl = f"{r.itl_p50 * 1e3:>6.0f}ms {r.itl_p95 * 1e3:>6.0f}ms"
        print(f"{r.streams:>7} {r.tokens:>6} {r.tokens_per_s:>7.1f} {ttft} {itl}")
    by_streams = {r.streams: r for r in results}
    if 1 in by_streams and 8 in by_streams:
        ratio = by_streams[8].tokens_per_s / by_streams[1].tokens_per_s
        verdict = "meets" if ratio >= TARGET_RATIO else "below"
        print(f"8 streams / 1 stream: {ratio:.2f}x ({verdict} the {TARGET_RATIO:.0f}x target)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--streams", default="1,4,8,16")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--baseline", action="store_true", help="also time plain generate()")
    parser.add_argument("--repeats", type=int, default=2, help="runs per level; the best counts")
    args = parser.parse_args()
    levels = tuple(int(s) for s in args.streams.split(","))
    bench_engine(args.model, levels, args.max_tokens, args.threads, args.baseline, args.repeats)


if __name__ == "__main__":
    main()
