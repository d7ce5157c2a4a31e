"""False disputes: honest generations of the real model must never end in a ``BillingDispute``.

The client countersigns only ids it could check (docs/protocol.md §6): each in the vocabulary,
a special id only as the last one, and no more visible ids than the canonical encoding of the
text plus a tolerance. An honest model may sample a word in more pieces than the tokenizer
would cut it into, so the tolerance is measured here: ``tallystick-node serve`` with
SmolLM2-135M-Instruct on anvil, SDK clients on their own channels, at temperature 0 and 1,
plain and streaming, 1 and 4 concurrent streams. Every bill is verified and countersigned by
the SDK as in production; the section counts disputes (target: 0) and, for each bill, how far
its visible ids exceed the canonical encoding of its text, with how many bills candidate
tolerances would have refused.

    python -m bench --only false_disputes
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tallystick.devnet import gguf_context_length

from ._common import MODEL_GGUF, MODEL_NAME, BenchError, Target, console, save, table
from ._setup import list_served, market, sdk_clients, serve_node

__all__ = ["Config", "Sample", "run"]

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain recursion to a child.",
    "Write a Python function that reverses a string.",
    "Translate 'good morning' into German, French and Spanish.",
    "List five prime numbers and explain why they are prime.",
    "What is 17 * 23?",
    "Write a limerick about a cat.",
    "Give me a JSON object describing a book.",
    "Write SQL to count the rows of a table named users.",
    "Give me three emojis that describe summer.",
    "Write a bash one-liner that counts lines in all .py files.",
    "¿Cuál es la capital de España?",
    "Write the numbers from 1 to 20 separated by commas.",
    "What is the derivative of x^3 + 2x?",
    "Write a markdown table of three fruits and their colours.",
    "Spell 'onomatopoeia' backwards.",
    "Describe the water cycle in two sentences.",
    "Invent a name for a new programming language and describe it.",
    "Quelle est la couleur du ciel ?",
)
# (absolute, relative) candidates; the SDK's default is Tolerance() in client/_verify.py.
CANDIDATES = ((0, 0.0), (1, 0.0), (2, 0.0), (4, 0.0), (0, 0.05), (2, 0.05), (4, 0.05), (4, 0.1))


@dataclass(frozen=True)
class Config:
    per_cell: int = 26  # generations per (temperature, stream, concurrency): 8 cells, 208 in all
    max_tokens: int = 64
    temperatures: tuple[float, ...] = (0.0, 1.0)
    concurrency: tuple[int, ...] = (1, 4)
    model: Path = MODEL_GGUF


@dataclass(frozen=True)
class Sample:
    """One honest generation as the SDK verified it."""

    temperature: float
    stream: bool
    concurrency: int
    visible: int  # billed ids that are not special
    canonical: int  # ids of the canonical encoding of their text
    dispute: str | None  # the BillingDispute (or other error), if any

    @property
    def excess(self) -> int:
        return self.visible - self.canonical


def run(config: Config | None = None) -> dict[str, Any]:
    config = config or Config()
    if not config.model.exists():
        raise BenchError(f"model not found at {config.model}: run `make model`")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tally-false-disputes-") as tmp:
        samples = _measure(config, Path(tmp))
    result = _result(samples, config, time.monotonic() - started)
    _print(result)
    save("false_disputes", result)
    return result


def _measure(config: Config, workdir: Path) -> list[Sample]:
    with market(workdir) as bench:
        args = ["--max-batch", str(max(config.concurrency))]
        node = serve_node(bench, model=config.model, args=args)
        list_served(bench, node.url, gguf_context_length(config.model))
        with sdk_clients(bench, max(config.concurrency)) as clients:
            return _cells(clients, config)


def _cells(clients: list[tuple[Any, Any]], config: Config) -> list[Sample]:
    samples: list[Sample] = []
    cells = itertools.product(config.temperatures, (False, True), config.concurrency)
    for n, (temperature, stream, concurrency) in enumerate(cells):
        cell = _cell(clients[:concurrency], config, temperature, stream, n)
        bad = sum(s.dispute is not None for s in cell)
        over = max((s.excess for s in cell), default=0)
        console.print(
            f"  T={temperature:g} {'stream' if stream else 'plain '} x{concurrency}: "
            f"{len(cell)} generations, {bad} disputes, max excess over canonical {over}"
        )
        samples += cell
    return samples


def _cell(
    clients: list[tuple[Any, Any]], config: Config, temperature: float, stream: bool, cell: int
) -> list[Sample]:
    """``config.per_cell`` generations spread over ``len(clients)`` concurrent streams."""
    out: list[Sample] = []
    lock = threading.Lock()
    jobs = iter(range(config.per_cell))

    def worker(client: Any, channel: Any) -> None:
        while True:
            with lock:
                i = next(jobs, None)
            if i is None:
                return
            sample = _one(
                client, channel, config, temperature, stream, len(clients), cell * 1000 + i
            )
            with lock:
                out.append(sample)

    threads = [threading.Thread(target=worker, args=pair) for pair in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _one(
    client: Any,
    channel: Any,
    config: Config,
    temperature: float,
    stream: bool,
    concurrency: int,
    i: int,
) -> Sample:
    from tallystick.protocol import TallystickError

    def sample(visible: int, canonical: int, dispute: str | None) -> Sample:
        return Sample(temperature, stream, concurrency, visible, canonical, dispute)

    try:
        reply = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=config.max_tokens,
            temperature=temperature,
            seed=i,
            stream=stream,
            channel=channel.channel_id,
        )
        if stream:
            for _ in reply:
                pass
        bill = reply.tally
    except TallystickError as exc:  # a BillingDispute above all: the figure this section counts
        return sample(0, 0, f"{type(exc).__name__}: {exc}")
    if bill is None:
        return sample(0, 0, "no verified bill")
    counter = client.biller.counter(channel)
    visible = [t for t in bill.completion_ids if t not in counter.special_token_ids]
    return sample(len(visible), len(counter.canonical_ids(counter.decode(visible))), None)


def _result(samples: list[Sample], config: Config, seconds: float) -> dict[str, Any]:
    disputes = [s for s in samples if s.dispute is not None]
    verified = [s for s in samples if s.dispute is None]
    by_temperature = {}
    for temperature in config.temperatures:
        rows = [s for s in verified if s.temperature == temperature]
        by_temperature[f"{temperature:g}"] = _exceeding(rows)
    targets = [
        Target("false disputes in honest generations", len(disputes), 0, False),
        Target("honest generations checked", len(samples), 8 * 25, True),
    ]
    return {
        "config": {**asdict(config), "model": str(config.model)},
        "seconds": round(seconds, 1),
        "generations": len(samples),
        "false_disputes": len(disputes),
        "disputes": [s.dispute for s in disputes][:20],
        "tolerance": by_temperature,
        "samples": [asdict(s) for s in samples],
        "targets": [t.to_json() for t in targets],
    }


def _exceeding(rows: list[Sample]) -> dict[str, Any]:
    """For one temperature: the excess distribution and how many bills each candidate refuses."""
    excess = sorted(s.excess for s in rows)
    refused = {}
    for absolute, relative in CANDIDATES:
        bad = sum(s.visible > s.canonical + absolute + int(relative * s.canonical) for s in rows)
        refused[f"{absolute}+{relative:g}"] = {
            "refused": bad,
            "rate": bad / len(rows) if rows else 0,
        }
    return {
        "bills": len(rows),
        "above_canonical": sum(e > 0 for e in excess),
        "max_excess": excess[-1] if excess else 0,
        "max_excess_ratio": max((s.excess / max(s.canonical, 1) for s in rows), default=0.0),
        "excess_histogram": {str(e): excess.count(e) for e in sorted(set(excess))},
        "refused_by_candidate": refused,
    }


def _print(result: dict[str, Any]) -> None:
    rows = []
    for temperature, t in result["tolerance"].items():
        cells = [f"{c['refused']} ({c['rate']:.1%})" for c in t["refused_by_candidate"].values()]
        rows.append([temperature, t["bills"], t["above_canonical"], t["max_excess"], *cells])
    first = next(iter(result["tolerance"].values()))
    console.print(
        table(
            "Bills refused by candidate tolerances (absolute + relative x canonical ids)",
            ["T", "bills", "> canon", "max", *first["refused_by_candidate"]],
            rows,
        )
    )
    console.print(
        f"false disputes: {result['false_disputes']} in {result['generations']} honest "
        f"generations ({result['seconds']:.0f} s)"
    )
    for text in result["disputes"]:
        console.print(f"  [red]{text}[/]")
