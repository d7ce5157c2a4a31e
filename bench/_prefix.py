"""Prefix reuse through a node: a 5-turn chat whose system prompt is ~1,000 tokens; the 5th
turn's TTFT after turns 1-4 on the same channel ("cached") against the same-length 5th turn sent
cold under another system prompt ("uncached")."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from ._common import MODEL_NAME, BenchError, console

__all__ = ["prefix_reuse", "report_prefix"]

PREFIX_SYSTEM_TOKENS = 1000
PREFIX_TURNS = 5
PREFIX_REPEATS = 3

_FILLER = (
    "You are the archivist of a seaside town. You answer questions about its lighthouse, "
    "its harbour, its fishing boats, its market days and its weather, briefly and kindly. "
)


def _system_prompt(model: Path, nonce: str) -> str:
    """A system prompt of about ``PREFIX_SYSTEM_TOKENS`` tokens that starts with ``nonce``."""
    from tallystick.node.engines import load_tokenizer

    tokenizer = load_tokenizer(str(model)).tokenizer
    text = f"Session {nonce}. "
    while len(tokenizer.encode(text, add_special_tokens=False)) < PREFIX_SYSTEM_TOKENS:
        text += _FILLER
    return text


def _ttft(client: Any, channel: Any, messages: list[dict[str, str]]) -> tuple[float, str]:
    started = time.perf_counter()
    first = None
    parts = []
    chunks = client.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        channel=channel.channel_id,
    )
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
    if chunks.tally is None or first is None:
        raise BenchError("a prefix-reuse turn ended without text or a verified bill")
    return first - started, "".join(parts)


def prefix_reuse(client_channel: tuple[Any, Any], model: Path) -> dict[str, Any]:
    """TTFT of the 5th turn after turns 1-4 (cached) and of the same turn sent cold."""
    client, channel = client_channel
    questions = [f"What happens at the harbour at {hour} o'clock?" for hour in range(6, 11)]
    cached, cold = [], []
    for repeat in range(PREFIX_REPEATS):
        messages = [{"role": "system", "content": _system_prompt(model, f"A{repeat}")}]
        for turn in range(PREFIX_TURNS):
            messages.append({"role": "user", "content": questions[turn]})
            ttft, reply = _ttft(client, channel, messages)
            messages.append({"role": "assistant", "content": reply})
        cached.append(ttft)
        # The same 5-turn history under a system prompt no earlier request started with.
        fresh = [{"role": "system", "content": _system_prompt(model, f"B{repeat}")}]
        fresh += messages[1:-1]
        cold.append(_ttft(client, channel, fresh)[0])
    return {
        "turn5_ttft_cached_s": statistics.median(cached),
        "turn5_ttft_uncached_s": statistics.median(cold),
        "ratio": statistics.median(cached) / statistics.median(cold),
        "repeats": PREFIX_REPEATS,
    }


def report_prefix(label: str, figures: dict[str, Any]) -> None:
    console.print(
        f"  {label:<24} prefix reuse: 5th-turn TTFT "
        f"{figures['turn5_ttft_cached_s'] * 1e3:.0f} ms cached vs "
        f"{figures['turn5_ttft_uncached_s'] * 1e3:.0f} ms uncached ({figures['ratio']:.2f}x)"
    )
