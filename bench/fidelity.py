"""Fidelity: does the audit (docs/protocol.md §10) catch substituted models, and never an
honest one? Plus what the seeded sampler costs the provider and what an audit costs the client.

    python -m bench.fidelity [--quick]

- honest: generations through a real node process and SDK clients that audit every bill
  (bench/_fidelity_node.py): node torch threads 1/2, 1/4/8 requests at once (the engine's
  batch), streaming and not, temperature 0 and 0.7; false positives, and the largest honest
  proof error and smallest margin (what the tolerance is set from);
- detection: generations by the real TransformersEngine from substituted weights (4-bit
  rounding, Gaussian noise of 1% of each tensor's std, a dropped layer, a random
  initialisation) and from the listed weights at a temperature 0.3 above the one requested:
  the share of audits that fail;
- overhead: tokens/s at 8 streams, seeded sampler against the baseline multinomial sampler,
  the same engine, A/B rounds interleaved (ABBA) so load drift cancels; the median per-round
  ratio and its spread; verifier cost: audit time over generation time of 64 tokens.

Writes bench/results/fidelity.json (rewritten after each section, so a cut run keeps what it
measured). CPU-heavy: run it under ``nice -n 10`` on a shared box.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench._fidelity_node import QUICK_NODE, NodeRun, honest_node
from bench._fidelity_upstream import greedy_section

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / ".models" / "SmolLM2-135M-Instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
RESULTS = ROOT / "bench" / "results" / "fidelity.json"
CHAIN_ID, ESCROW = 31337, "0x" + "ee" * 20
PERTURB_SIZE = 0.01  # noise std as a fraction of each tensor's own std
TOPICS = (
    "a lighthouse keeper", "payment channels", "a busy market", "the history of bread",
    "planting a garden", "a dragon who cooks", "the water cycle", "learning a language",
    "a night train", "how bees talk", "an old clock", "the first bicycle", "rain in a city",
    "a chess club", "volcanoes", "a lost umbrella", "the moon landing", "baking sourdough",
    "a desert well", "paper money", "a violin maker", "coral reefs", "winter birds",
    "a small library", "glass blowing", "the printing press", "a fishing village",
    "solar panels", "a snow storm", "maps and sailors",
)  # fmt: skip
VERBS = ("Write a short story about", "Explain", "Describe", "Write a poem about")


@dataclass(frozen=True)
class Config:
    # Sized for the shared 2-core box: 320 honest generations through the node (NodeRun),
    # 20 audits per substitution, 8 interleaved overhead rounds.
    node: NodeRun = field(default_factory=NodeRun)
    detect_per_kind: int = 20
    max_tokens: int = 32
    temperatures: tuple[float, ...] = (0.0, 0.7)
    overhead_rounds: int = 8
    greedy_prompts: int = 60  # per llama.cpp slot setting (1 and 4)
    greedy_per_kind: int = 16


QUICK = Config(node=QUICK_NODE, detect_per_kind=8, overhead_rounds=2, greedy_prompts=8,
               greedy_per_kind=8)  # fmt: skip


@dataclass
class Generation:
    prompt_ids: list[int]
    completion_ids: list[int]
    logits: list[float]
    seed: int
    temperature: float
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


def prompts(counter: Any, n: int, offset: int = 0) -> list[list[int]]:
    out = []
    for i in range(offset, offset + n):
        text = f"{VERBS[i % len(VERBS)]} {TOPICS[(i // len(VERBS)) % len(TOPICS)]}."
        out.append(counter.chat_prompt_ids([{"role": "user", "content": text}]))
    return out


def generate(
    engine: Any,
    prompt_ids: Sequence[list[int]],
    *,
    seeds: Sequence[int],
    temperature: float,
    max_tokens: int,
) -> list[Generation]:
    """Run the prompts concurrently through ``engine`` (one running batch)."""
    from tallystick.node.engines import Prompt, SamplingParams

    async def one(ids: list[int], seed: int) -> Generation:
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
        started = time.perf_counter()
        out, logits = [], []
        async for event in engine.generate(Prompt(ids=ids), params):
            out.extend(event.token_ids)
            logits.extend(event.logits)
        took = time.perf_counter() - started
        return Generation(ids, out, logits, seed, temperature, took)

    async def all_() -> list[Generation]:
        await engine.start()
        try:
            return list(
                await asyncio.gather(*(one(p, s) for p, s in zip(prompt_ids, seeds, strict=True)))
            )
        finally:
            await engine.stop()

    return asyncio.run(all_())


def case_for(gen: Generation, account: Any, *, claimed_temperature: float | None = None) -> Any:
    """A signed record for ``gen`` as a node would sign it, claiming ``claimed_temperature``."""
    from tallystick.client import AuditCase
    from tallystick.protocol import (
        Domain,
        UsageRecord,
        encode_proof,
        hash_proof,
        hash_token_ids,
        params_units,
        sign_usage_record,
    )

    temperature = gen.temperature if claimed_temperature is None else claimed_temperature
    proof = encode_proof(gen.logits)
    record = UsageRecord(
        channel_id=b"\x01" * 32,
        seq=1,
        prompt_tokens=len(gen.prompt_ids),
        completion_tokens=len(gen.completion_ids),
        prompt_hash=hash_token_ids(gen.prompt_ids),
        completion_hash=hash_token_ids(gen.completion_ids),
        input_tokens=len(gen.prompt_ids),
        output_tokens=len(gen.completion_ids),
        prev_root=bytes(32),
        seed=gen.seed,
        temperature=params_units(temperature),
        top_p=1_000_000,
        model_hash=gen.meta["model_hash"],
        proof_hash=hash_proof(proof),
    )
    signed = sign_usage_record(account, Domain(CHAIN_ID, ESCROW), record)
    return AuditCase(
        model="SmolLM2-135M-Instruct",
        provider=account.address,
        chain_id=CHAIN_ID,
        escrow=ESCROW,
        signed=signed,
        prompt_ids=gen.prompt_ids,
        completion_ids=gen.completion_ids,
        proof=proof,
        seed=gen.seed,
        temperature=temperature,
    )


class Harness:
    """The reference weights, an engine per variant, and a signing key, loaded once."""

    def __init__(self, model: Path = MODEL) -> None:
        from eth_account import Account
        from tallystick.client import Reference
        from tallystick.node.engines import TransformersEngine, load_model

        self.model = model
        self.reference = Reference.load(model, threads=1)
        self.account = Account.from_key(b"\x42" * 32)
        self._loaded = load_model(str(model))
        self._engine_cls = TransformersEngine
        self.counter = TransformersEngine(self._loaded).counter

    def engine(self, substitution: str | None = None, *, threads: int = 1, seeded: bool = True):
        from tallystick.node.engines import LoadedModel
        from tallystick.node.engines._substitute import substitute

        loaded = self._loaded
        if substitution:
            model = substitute(copy.deepcopy(loaded.model), substitution, PERTURB_SIZE)
            loaded = LoadedModel(model, loaded.tokenizer, loaded.name, loaded.context_length,
                                 loaded.eos_ids)  # fmt: skip
        return self._engine_cls(
            loaded,
            num_threads=threads,
            max_batch=8,
            seeded=seeded,
            model_hash=self.reference.model_hash,  # a cheat claims the listed weights
        )

    def run(self, engine: Any, prompt_ids: list[list[int]], batch: int, seed0: int,
            temperature: float, max_tokens: int) -> list[Generation]:  # fmt: skip
        out: list[Generation] = []
        for start in range(0, len(prompt_ids), batch):
            chunk = prompt_ids[start : start + batch]
            seeds = [seed0 + start + i for i in range(len(chunk))]
            out += generate(engine, chunk, seeds=seeds, temperature=temperature,
                            max_tokens=max_tokens)  # fmt: skip
        for g in out:
            g.meta["model_hash"] = self.reference.model_hash
        return out

    def audit(self, gen: Generation, claimed_temperature: float | None = None) -> Any:
        from tallystick.client import audit

        return audit(case_for(gen, self.account, claimed_temperature=claimed_temperature),
                     self.reference)  # fmt: skip


def honest(h: Harness, cfg: Config) -> dict[str, Any]:
    return honest_node(h.model, cfg.node, h.reference, _progress)


def greedy(h: Harness, cfg: Config) -> dict[str, Any]:
    return greedy_section(h, cfg.greedy_prompts, cfg.greedy_per_kind, cfg.max_tokens, _progress)


def detection(h: Harness, cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kinds = [("round4", None), ("perturb", None), ("drop_layer", None), ("random_init", None),
             ("wrong_temperature", 0.3)]  # fmt: skip
    for kind, temp_shift in kinds:
        engine = h.engine(None if temp_shift else kind)
        caught = total = 0
        smallest_error = float("inf")  # how far the least-caught audit sat from tolerance
        half = cfg.detect_per_kind // 2
        for i, temperature in enumerate(cfg.temperatures):
            n = half if i == 0 else cfg.detect_per_kind - half
            ids = prompts(h.counter, n, 500 + 37 * i)
            served = temperature + (temp_shift or 0.0)
            gens = h.run(engine, ids, 8, 7000 + 100 * i, served, cfg.max_tokens)
            for g in gens:
                report = h.audit(g, claimed_temperature=temperature if temp_shift else None)
                total += 1
                caught += report.verdict == "fail"
                smallest_error = min(smallest_error, report.figures.get("max_proof_error", 0))
        out[kind] = {"audited": total, "caught": caught, "rate": caught / total,
                     "smallest_max_proof_error": smallest_error}  # fmt: skip
        _progress(f"detection {kind}: {caught}/{total}")
    out["perturb"]["size"] = f"N(0, ({PERTURB_SIZE} * std of each tensor)^2)"
    out["wrong_temperature"]["served"] = "requested + 0.3 (0 -> 0.3, 0.7 -> 1.0)"
    return out


def overhead(h: Harness, cfg: Config) -> dict[str, Any]:
    """tokens/s at 8 streams, temperature 0.7: the same engine, seeded vs baseline sampler.

    Rounds run A B B A B A A B ...: each round is one run of each back to back, its order
    alternating, so a load change on the shared box hits both sides alike. Wall tokens/s is
    the figure; the process CPU time per token is recorded beside it (less sensitive to
    other jobs on the box)."""
    engines = {"baseline": h.engine(seeded=False), "seeded": h.engine(seeded=True)}
    ids = prompts(h.counter, 8, 900)
    rates: dict[str, list[float]] = {"seeded": [], "baseline": []}
    cpu_ms: dict[str, list[float]] = {"seeded": [], "baseline": []}
    for r in range(cfg.overhead_rounds):
        order = ("baseline", "seeded") if r % 2 == 0 else ("seeded", "baseline")
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            gens = generate(engines[name], ids, seeds=[100 * r + i for i in range(8)],
                            temperature=0.7, max_tokens=cfg.max_tokens)  # fmt: skip
            tokens = sum(len(g.completion_ids) for g in gens)
            rates[name].append(tokens / (time.perf_counter() - wall))
            cpu_ms[name].append(1e3 * (time.process_time() - cpu) / tokens)
        ratio = rates["seeded"][-1] / rates["baseline"][-1]
        _progress(f"overhead round {r + 1}: seeded/baseline {ratio:.3f}")
    ratios = [s / b for s, b in zip(rates["seeded"], rates["baseline"], strict=True)]
    cpu_ratios = [b / s for s, b in zip(cpu_ms["seeded"], cpu_ms["baseline"], strict=True)]
    return {
        "streams": 8,
        "temperature": 0.7,
        "rounds": cfg.overhead_rounds,
        "order": "ABBA (baseline first in even rounds)",
        "seeded_tok_s": round(statistics.median(rates["seeded"]), 2),
        "baseline_tok_s": round(statistics.median(rates["baseline"]), 2),
        "per_round_ratio": [round(x, 4) for x in ratios],
        "ratio_median": round(statistics.median(ratios), 4),
        "ratio_spread": [round(min(ratios), 4), round(max(ratios), 4)],
        "overhead": round(1 - statistics.median(ratios), 4),
        "cpu_ms_per_token": {k: [round(v, 2) for v in vs] for k, vs in cpu_ms.items()},
        "cpu_overhead": round(1 - statistics.median(cpu_ratios), 4),
        "runs": rates,
        "sampler_ms_per_token": sampler_cost(),
    }


def sampler_cost(n: int = 300) -> dict[str, float]:
    """The two samplers alone on one vocabulary-sized row, one thread (ms per token)."""
    import torch
    from tallystick.node.engines import SamplingParams
    from tallystick.node.engines._sampling import SeededSampler, make_generator, sample

    torch.set_num_threads(1)
    params = SamplingParams(max_tokens=1, temperature=0.7, seed=3)
    row = torch.randn(49152) * 3
    seeded, gen = SeededSampler(params), make_generator(3)
    best = {"seeded": float("inf"), "baseline": float("inf")}
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            seeded(row)
        best["seeded"] = min(best["seeded"], (time.perf_counter() - started) / n * 1e3)
        started = time.perf_counter()
        for _ in range(n):
            sample(row, params, gen)
        best["baseline"] = min(best["baseline"], (time.perf_counter() - started) / n * 1e3)
    return {k: round(v, 3) for k, v in best.items()}


def _progress(line: str) -> None:
    print(f"[fidelity {time.strftime('%H:%M:%S')}] {line}", flush=True)


def verifier_cost(h: Harness, cfg: Config) -> dict[str, Any]:
    """Audit time over generation time for single 64-token completions (median of 5)."""
    engine = h.engine()
    ratios, gen_s, audit_s = [], [], []
    for i, ids in enumerate(prompts(h.counter, 5, 950)):
        (g,) = h.run(engine, [ids], 1, 99 + i, 0.7, 64)
        started = time.perf_counter()
        h.audit(g)
        a = time.perf_counter() - started
        gen_s.append(g.seconds)
        audit_s.append(a)
        ratios.append(a / g.seconds)
    return {
        "completion_tokens": 64,
        "generation_s": round(statistics.median(gen_s), 3),
        "audit_s": round(statistics.median(audit_s), 3),
        "ratio": round(statistics.median(ratios), 4),
    }


SECTIONS = ("honest", "detection", "overhead", "verifier", "greedy")


def run(cfg: Config | None = None, only: Sequence[str] = SECTIONS) -> dict[str, Any]:
    """Run the ``only`` sections; the results file keeps the other sections it holds (each
    section says when it was measured), so a long section can run beside the others."""
    import torch

    cfg = cfg or Config()
    h = Harness()
    torch.set_num_threads(1)
    sections = {"honest": honest, "detection": detection, "overhead": overhead,
                "verifier": verifier_cost, "greedy": greedy}  # fmt: skip
    merged: dict[str, Any] = {}
    # The most important first; the file is updated after each section.
    for name in [s for s in SECTIONS if s in only]:
        started = time.monotonic()
        figures = sections[name](h, cfg)
        figures["section_s"] = round(time.monotonic() - started, 1)
        figures["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        figures["config"] = asdict(cfg)
        merged = _save({name: figures})
    if all(s in merged for s in SECTIONS):
        merged = _save({"targets": targets(merged)})
        _print(merged)
    return merged


def _save(sections: dict[str, Any]) -> dict[str, Any]:
    """Write ``sections`` into the results file, keeping the sections it already holds."""
    figures = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    figures.update(sections)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return figures


def targets(f: dict[str, Any]) -> list[dict[str, Any]]:
    out = [
        {"name": f"fidelity: {k} caught", "measured": round(100 * v["rate"], 1), "limit": 99,
         "unit": "%", "op": ">="}
        for k, v in f["detection"].items() if isinstance(v, dict) and "rate" in v
    ]  # fmt: skip
    out += [
        {"name": "fidelity: honest generations audited (real node path)",
         "measured": f["honest"]["generations"], "limit": 300, "unit": "", "op": ">="},
        {"name": "fidelity: false positives (honest audits)",
         "measured": f["honest"]["false_positives"] + f["honest"]["unverifiable"], "limit": 0,
         "unit": "", "op": "<="},
        {"name": "fidelity: provider overhead at 8 streams",
         "measured": round(100 * f["overhead"]["overhead"], 2), "limit": 3, "unit": "%",
         "op": "<="},
        {"name": "fidelity: audit / generation, 64 tokens", "measured": f["verifier"]["ratio"],
         "limit": 0.2, "unit": "x", "op": "<="},
    ]  # fmt: skip
    return out


def _print(f: dict[str, Any]) -> None:
    h = f["honest"]
    print(
        f"honest: {h['generations']} generations, {h['tokens']} tokens, "
        f"{h['false_positives']} false positives ({h['unverifiable']} unverifiable); "
        f"max proof error {h['max_proof_error']}, "
        f"min margin {h['min_margin']}"
    )
    for kind, v in f["detection"].items():
        if not isinstance(v, dict) or "rate" not in v:
            continue
        print(f"detection {kind}: {v['caught']}/{v['audited']} ({100 * v['rate']:.1f}%)")
    o, v = f["overhead"], f["verifier"]
    print(
        f"overhead at 8 streams: seeded {o['seeded_tok_s']} tok/s, baseline "
        f"{o['baseline_tok_s']} tok/s; overhead {100 * o['overhead']:.2f}% (median of "
        f"{o['rounds']} interleaved rounds, ratios {o['ratio_spread'][0]}..{o['ratio_spread'][1]}"
        f"; CPU time per token {100 * o['cpu_overhead']:.2f}%)"
    )
    print(f"sampler alone, ms per token: {o['sampler_ms_per_token']}")
    print(f"verifier: audit {v['audit_s']} s / generation {v['generation_s']} s = {v['ratio']}")
    g = f["greedy"]
    for name, r in g.items():
        if isinstance(r, dict) and "argmax_match_rate" in r:
            print(f"greedy {name}: argmax match {r['argmax_match_rate']}, worst margins "
                  f"{r['worst_margins'][:3]}, {r['caught']}/{r['completions']} beyond "
                  f"{g['tolerance']}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fidelity")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    only = tuple(args.only.split(",")) if args.only else SECTIONS
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    run(QUICK if args.quick else None, only)


if __name__ == "__main__":
    main()
