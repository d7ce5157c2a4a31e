"""Serving side by side: the same model, prompts and machine at 1, 4, 8 and 16 concurrent streams.

    python -m bench.serving [--levels 1,4,8,16] [--max-tokens 64] [--systems llama,node-llama,...]

(a) ``engine``: the bare ``TransformersEngine`` in-process (no HTTP, no metering);
(b) ``node``: a real ``tallystick-node serve`` subprocess on anvil with the real contracts,
    driven through the client SDK, one channel per stream, every bill verified and
    countersigned (credit rule: one unpaid request per channel);
(c) ``peer``: ``transformers serve`` on the same weights, driven through the ``openai`` SDK;
(d) ``llama``: llama.cpp's ``llama-server`` (``make llama``) on the same GGUF, one slot per
    stream, continuous batching, driven through the ``openai`` SDK;
(e) ``node-llama``: ``tallystick-node serve --engine upstream`` in front of such a
    llama-server (native ``/completion``, llama.cpp's token ids), driven as (b);
(f) ``vllm`` and (g) ``node-vllm``: the same pair with ``vllm serve`` instead, run by default
    only where ``vllm`` is installed and a CUDA GPU is present (the GPU plan in
    docs/internals.md); levels then include 64 streams.

One system at a time; greedy decoding, the same ``max_tokens``; tokens are counted as
actually generated (none of them can be told to ignore EOS through the same API, so
the prompts ask for long answers). Reports aggregate output tokens/s, TTFT and inter-token
latency percentiles, and the ratios the targets are defined on.

Prefix reuse (with the nodes (b), (e), (g)): a 5-turn chat whose system prompt is ~1,000
tokens, through the node; the 5th turn's TTFT after turns 1-4 on the same channel ("cached")
against the same-length 5th turn sent cold with another system prompt ("uncached").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ._common import (
    MODEL_GGUF,
    MODEL_NAME,
    BenchError,
    Target,
    anvil,
    console,
    free_port,
    funded_account,
    percentile,
    save,
    show_targets,
    start_chain,
    stop_process,
    table,
    wait_http,
)

__all__ = ["PROMPTS", "Config", "LevelResult", "Timeline", "run", "summarize"]

# Long-form asks, so greedy decoding rarely stops before max_tokens on any system.
PROMPTS = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a payment channel works, step by step.",
    "Describe a walk through a busy market in a large city, with many details.",
    "Write a detailed guide to planting a vegetable garden for beginners.",
    "Tell a long tale about a dragon who wants to learn to read.",
    "Explain at length why the sky is blue and why sunsets are red.",
    "Write a long letter from a sailor to his family about his voyage.",
    "Describe in detail the history of writing, from clay tablets to computers.",
)
START_TIMEOUT_S = 420.0  # loading the GGUF takes ~45 s on an idle 2-core box; more when busy
PRICES = (10**12, 4 * 10**12)  # wei per million input / output tokens
DEPOSIT = 10**17
ALL_SYSTEMS = ("llama", "node-llama", "engine", "node", "peer", "vllm", "node-vllm")
LABELS = {
    "engine": "(a) bare engine",
    "node": "(b) tallystick-node",
    "peer": "(c) transformers serve",
    "llama": "(d) llama-server",
    "node-llama": "(e) node + llama-server",
    "vllm": "(f) vLLM",
    "node-vllm": "(g) node + vLLM",
}
LLAMA_SLOT_CTX = 2048  # tokens per llama-server slot: the prefix-reuse chat fits in one
PREFIX_SYSTEM_TOKENS = 1000
PREFIX_TURNS = 5
PREFIX_REPEATS = 3


def gpu_with_vllm() -> bool:
    """A CUDA GPU and the ``vllm`` command: the machine the GPU plan is for."""
    if shutil.which("vllm") is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def default_systems() -> tuple[str, ...]:
    gpu = gpu_with_vllm()
    return tuple(s for s in ALL_SYSTEMS if gpu or "vllm" not in s)


SYSTEMS = ("llama", "node-llama", "engine", "node", "peer")


@dataclass(frozen=True)
class Config:
    levels: tuple[int, ...] = (1, 4, 8, 16)
    max_tokens: int = 64
    min_requests: int = 3  # per level: each stream runs ceil(min_requests / streams) requests
    systems: tuple[str, ...] = SYSTEMS
    peer_continuous_batching: bool = True
    model: Path = MODEL_GGUF
    prefix: bool = True  # the prefix-reuse chat with each node system

    @classmethod
    def for_this_machine(cls, **kwargs: Any) -> Config:
        """Every system this machine can run; with a GPU and vLLM, 64 streams too."""
        if gpu_with_vllm():
            kwargs.setdefault("levels", (1, 4, 8, 16, 64))
        kwargs.setdefault("systems", default_systems())
        return cls(**kwargs)


@dataclass
class Timeline:
    """One request as its caller saw it: when it started, when each chunk of tokens arrived."""

    started: float
    stamps: list[float] = field(default_factory=list)
    tokens: int = 0

    @property
    def ended(self) -> float:
        return self.stamps[-1] if self.stamps else self.started

    @property
    def ttft(self) -> float:
        return self.stamps[0] - self.started if self.stamps else float("nan")

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


@dataclass(frozen=True)
class LevelResult:
    system: str
    streams: int
    requests: int
    tokens: int
    wall_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    itl_p50_s: float
    itl_p95_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def summarize(system: str, streams: int, timelines: list[Timeline]) -> LevelResult:
    """Aggregate a level: tokens over the wall time from first start to last token."""
    wall = max(t.ended for t in timelines) - min(t.started for t in timelines)
    gaps = [g for t in timelines for g in t.gaps]
    ttfts = [t.ttft for t in timelines if not math.isnan(t.ttft)]
    return LevelResult(
        system=system,
        streams=streams,
        requests=len(timelines),
        tokens=sum(t.tokens for t in timelines),
        wall_s=wall,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p95_s=percentile(ttfts, 95),
        itl_p50_s=percentile(gaps, 50),
        itl_p95_s=percentile(gaps, 95),
    )


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


def _rounds(config: Config, streams: int) -> int:
    return max(1, math.ceil(config.min_requests / streams))


def _report_level(result: LevelResult) -> None:
    console.print(
        f"  {LABELS[result.system]:<24} {result.streams:>2} streams: "
        f"{result.tokens_per_s:6.1f} tok/s, TTFT p50 {result.ttft_p50_s * 1e3:6.0f} ms, "
        f"ITL p50 {result.itl_p50_s * 1e3:5.0f} ms ({result.tokens} tokens, "
        f"{result.requests} requests)"
    )


# --- (a) the bare engine --------------------------------------------------------------


async def _engine_request(engine: Any, i: int, max_tokens: int) -> Timeline:
    from tallystick.node.engines import Prompt, SamplingParams

    messages = _messages(i)
    prompt = Prompt(ids=engine.counter.chat_prompt_ids(messages), messages=messages)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    line = Timeline(time.perf_counter())
    async for event in engine.generate(prompt, params):
        line.stamps.append(time.perf_counter())
        line.tokens += len(event.token_ids)
    return line


async def _engine_stream(engine: Any, i: int, rounds: int, max_tokens: int) -> list[Timeline]:
    return [await _engine_request(engine, i + r, max_tokens) for r in range(rounds)]


async def _engine_levels(config: Config) -> tuple[list[LevelResult], bytes]:
    from tallystick.node.engines import TransformersEngine

    console.print(f"  loading {config.model.name} in-process (bare engine)")
    engine = TransformersEngine.load(str(config.model), max_batch=max(config.levels))
    await engine.start()
    try:
        await _engine_request(engine, 0, 4)  # warm-up: first calls allocate and pick kernels
        out = []
        for n in config.levels:
            rounds = _rounds(config, n)
            jobs = [_engine_stream(engine, i, rounds, config.max_tokens) for i in range(n)]
            lines = [t for stream in await asyncio.gather(*jobs) for t in stream]
            out.append(summarize("engine", n, lines))
            _report_level(out[-1])
        return out, engine.tokenizer_bundle.hash()
    finally:
        await engine.stop()


def run_engine(config: Config) -> list[LevelResult]:
    results, _ = asyncio.run(_engine_levels(config))
    gc.collect()  # drop the model before the next system loads its own copy
    return results


# --- threads driving an HTTP system ----------------------------------------------------


def _drive(streams: int, rounds: int, request: Callable[[int, int], Timeline]) -> list[Timeline]:
    """``streams`` threads, each running ``rounds`` requests one after the other."""

    def stream(i: int) -> list[Timeline]:
        return [request(i, i + r) for r in range(rounds)]

    with ThreadPoolExecutor(max_workers=streams) as pool:
        return [t for lines in pool.map(stream, range(streams)) for t in lines]


def _http_levels(
    system: str,
    config: Config,
    request: Callable[[int, int], Timeline],
    warm: Callable[[int], Any] | None = None,
) -> list[LevelResult]:
    request(0, 0)  # warm-up (and, for the SDK, the tokenizer download and cache)
    if warm is not None:  # every stream's first request out of the measured levels
        _drive(max(config.levels), 1, lambda stream, _i: warm(stream) or Timeline(0.0))
    out = []
    for n in config.levels:
        out.append(summarize(system, n, _drive(n, _rounds(config, n), request)))
        _report_level(out[-1])
    return out


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[Any]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        stop_process(proc)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- (b) the tallystick node -----------------------------------------------------------


def _node_command() -> list[str]:
    script = Path(sys.executable).parent / "tallystick-node"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from tallystick.node.cli import main; main()"]


def run_node(
    config: Config,
    workdir: Path,
    system: str = "node",
    engine_args: tuple[str, ...] = (),
    prefix: dict[str, Any] | None = None,
    context: int | None = None,
) -> list[LevelResult]:
    """Levels through a real node (``engine_args`` picks its engine; ``context`` is the
    context length it serves, default the GGUF's); with ``prefix`` given, also the
    prefix-reuse chat, its figures stored there."""
    with anvil() as url:
        chain = start_chain(url)
        provider = funded_account(chain.w3)
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        cmd = [*_node_command(), "serve", "--rpc", url, "--escrow", chain.escrow.address]
        cmd += ["--registry", chain.registry.address, "--db", str(workdir / "node.db")]
        cmd += ["--model", str(config.model), "--model-name", MODEL_NAME, "--port", str(port)]
        cmd += ["--max-batch", str(max(config.levels)), "--credit-requests", "1"]
        cmd += ["--settle-interval", "86400", "--log-level", "WARNING", *engine_args]
        # The key travels in the environment, not argv, so `ps` does not show it.
        env = {**os.environ, "TALLYSTICK_NODE_KEY": provider.key.hex(), "PYTHONUNBUFFERED": "1"}
        log = workdir / "node.log"
        console.print(f"  starting tallystick-node serve on {endpoint} (log {log})")
        with _process(cmd, log, env) as proc:
            try:
                wait_http(f"{endpoint}/health", proc, START_TIMEOUT_S, "tallystick-node")
            except BenchError:
                console.print(_tail(log))
                raise
            _list(chain, provider, endpoint, context or _context_length(config.model))
            clients = _clients(chain, provider, workdir, max(config.levels))
            try:
                warm = _node_request(clients, replace(config, max_tokens=2))
                levels = _http_levels(
                    system, config, _node_request(clients, config), lambda i: warm(i, i)
                )
                if prefix is not None:
                    prefix.update(prefix_reuse(clients[0], config))
                    _report_prefix(system, prefix)
                return levels
            finally:
                for client, _ in clients:
                    client.close()


def _context_length(gguf: Path) -> int:
    """``<arch>.context_length`` of the GGUF: what the node serves as its context length."""
    from gguf import GGUFReader

    for name, f in GGUFReader(str(gguf)).fields.items():
        if name.endswith(".context_length"):
            return int(f.parts[f.data[0]][0])
    raise BenchError(f"{gguf} has no context_length in its GGUF metadata")


def _list(chain: Any, provider: Any, endpoint: str, context: int) -> None:
    """Register and list the model with the hash of the tokenizer bundle the node serves."""
    import httpx
    from tallystick.protocol import Prices, TokenizerBundle

    # Not /v1/models before listing: the node caches the (absent) listing for a while.
    raw = httpx.get(f"{endpoint}/v1/tally/tokenizer/{MODEL_NAME}", timeout=30).content
    chain.registry.register(provider, endpoint)
    chain.registry.list_model(
        provider,
        MODEL_NAME,
        Prices(*PRICES),
        tokenizer_hash=TokenizerBundle.from_bytes(raw).hash(),
        context_length=context,
    )


def _clients(chain: Any, provider: Any, workdir: Path, n: int) -> list[tuple[Any, Any]]:
    """One SDK client per stream, each with its own wallet, store and open channel."""
    from tallystick.client import Chain, Tallystick, Wallet

    sdk_chain = Chain(chain.w3, chain.registry.address, chain.escrow.address)
    out = []
    for i in range(n):
        client = Tallystick(
            Wallet(funded_account(chain.w3)),
            workdir / f"client{i}.db",
            chain=sdk_chain,
            tokenizer_dir=workdir / "tokenizers",
        )
        out.append((client, client.channels.open(MODEL_NAME, DEPOSIT, provider.address)))
    console.print(f"  opened {n} channels on-chain (one per stream)")
    return out


def _node_request(clients: list[tuple[Any, Any]], config: Config) -> Callable[[int, int], Timeline]:
    def request(stream: int, i: int) -> Timeline:
        client, channel = clients[stream]
        line = Timeline(time.perf_counter())
        chunks = client.chat.completions.create(
            model=MODEL_NAME,
            messages=_messages(i),
            max_tokens=config.max_tokens,
            temperature=0,
            stream=True,
            channel=channel.channel_id,
        )
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                line.stamps.append(time.perf_counter())
        if chunks.tally is None:
            raise BenchError("the node's stream ended without a verified bill")
        line.tokens = chunks.tally.completion_tokens  # verified and countersigned
        return line

    return request


# --- prefix reuse: a 5-turn chat with a long system prompt --------------------------------

_FILLER = (
    "You are the archivist of a seaside town. You answer questions about its lighthouse, "
    "its harbour, its fishing boats, its market days and its weather, briefly and kindly. "
)


def _system_prompt(config: Config, nonce: str) -> str:
    """A system prompt of about ``PREFIX_SYSTEM_TOKENS`` tokens that starts with ``nonce``."""
    from tallystick.node.engines import load_tokenizer

    tokenizer = load_tokenizer(str(config.model)).tokenizer
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


def prefix_reuse(client_channel: tuple[Any, Any], config: Config) -> dict[str, Any]:
    """TTFT of the 5th turn after turns 1-4 (cached) and of the same turn sent cold."""
    client, channel = client_channel
    questions = [f"What happens at the harbour at {hour} o'clock?" for hour in range(6, 11)]
    cached, cold = [], []
    for repeat in range(PREFIX_REPEATS):
        messages = [{"role": "system", "content": _system_prompt(config, f"A{repeat}")}]
        for turn in range(PREFIX_TURNS):
            messages.append({"role": "user", "content": questions[turn]})
            ttft, reply = _ttft(client, channel, messages)
            messages.append({"role": "assistant", "content": reply})
        cached.append(ttft)
        # The same 5-turn history under a system prompt no earlier request started with.
        fresh = [{"role": "system", "content": _system_prompt(config, f"B{repeat}")}]
        fresh += messages[1:-1]
        cold.append(_ttft(client, channel, fresh)[0])
    return {
        "turn5_ttft_cached_s": statistics.median(cached),
        "turn5_ttft_uncached_s": statistics.median(cold),
        "ratio": statistics.median(cached) / statistics.median(cold),
        "repeats": PREFIX_REPEATS,
    }


def _report_prefix(system: str, figures: dict[str, Any]) -> None:
    console.print(
        f"  {LABELS[system]:<24} prefix reuse: 5th-turn TTFT "
        f"{figures['turn5_ttft_cached_s'] * 1e3:.0f} ms cached vs "
        f"{figures['turn5_ttft_uncached_s'] * 1e3:.0f} ms uncached ({figures['ratio']:.2f}x)"
    )


# --- (d)-(g) llama.cpp and vLLM, bare and behind the node ------------------------------


@contextlib.contextmanager
def upstream_server(kind: str, config: Config, workdir: Path) -> Iterator[tuple[str, str]]:
    """A running ``llama-server`` (kind ``llama``) or ``vllm serve`` (``vllm``): (url, model id)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    slots = max(config.levels)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if kind == "llama":
        from tallystick.node.engines import ModelLoadError, find_llama_server

        try:
            binary = find_llama_server()
        except ModelLoadError as exc:
            raise BenchError(str(exc)) from exc
        cmd = [str(binary), "--model", str(config.model), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--parallel", str(slots), "--cont-batching"]
        cmd += ["--ctx-size", str(LLAMA_SLOT_CTX * slots), "--alias", MODEL_NAME, "--no-webui"]
        # All cores but one, as the node's own engine: the rest is the node's and the load
        # generator's. llama.cpp's threads spin at each barrier; one descheduled thread stalls
        # the step (0.9 tok/s with 2 threads on the shared 2-core box vs ~90 with 1).
        threads = str(llama_threads())
        cmd += ["--threads", threads, "--threads-batch", threads]
        health, model = f"{url}/health", MODEL_NAME
    elif kind == "vllm":
        folder = ensure_hf_model(config.model)
        cmd = ["vllm", "serve", str(folder), "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--max-num-seqs", str(max(slots, 64)), "--served-model-name", MODEL_NAME]
        health, model = f"{url}/v1/models", MODEL_NAME
    else:
        raise BenchError(f"unknown upstream {kind!r}")
    log = workdir / f"{kind}.log"
    console.print(f"  starting {kind} on port {port} (log {log})")
    with _process(cmd, log, env) as proc:
        try:
            wait_http(health, proc, START_TIMEOUT_S, kind)
        except BenchError:
            console.print(_tail(log))
            raise
        yield url, model


def llama_threads() -> int:
    from tallystick.node.engines._llamacpp import default_llama_threads

    return default_llama_threads()


def run_bare_upstream(kind: str, config: Config, workdir: Path) -> list[LevelResult]:
    import openai

    with upstream_server(kind, config, workdir) as (url, model):
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        return _http_levels(kind, config, _peer_request(sdk, model, config))


def run_node_upstream(
    kind: str, config: Config, workdir: Path, prefix: dict[str, Any] | None
) -> list[LevelResult]:
    with upstream_server(kind, config, workdir) as (url, model):
        args = ("--engine", "upstream", "--upstream-url", url, "--upstream-model", model)
        # The node serves llama.cpp's slot context (it limits prompts), vLLM's the model's.
        context = LLAMA_SLOT_CTX if kind == "llama" else None
        return run_node(config, workdir, f"node-{kind}", args, prefix, context)


# --- (c) transformers serve ------------------------------------------------------------


def ensure_hf_model(gguf: Path = MODEL_GGUF) -> Path:
    """The GGUF as a plain transformers folder: the engines' conversion cache (once per GGUF).

    ``transformers serve`` cannot load this GGUF directly (its config has no ``architectures``),
    so it serves the same weights and tokenizer from the folder the node itself loads.
    """
    from tallystick.node.engines import convert_gguf

    return convert_gguf(gguf)


def _peer_command() -> list[str]:
    script = Path(sys.executable).parent / "transformers"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from transformers.cli.transformers import main; main()"]


def run_peer(config: Config, workdir: Path) -> list[LevelResult]:
    import openai

    folder = ensure_hf_model(config.model)
    port = free_port()
    cmd = [*_peer_command(), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    if config.peer_continuous_batching:
        cmd.append("--continuous-batching")
    # Its /v1/models scans the hub cache and answers 500 when that folder does not exist.
    hub_cache = workdir / "hf-hub"
    hub_cache.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["HF_HUB_CACHE"] = str(hub_cache)
    log = workdir / "transformers-serve.log"
    console.print(f"  starting transformers serve on port {port} (log {log})")
    with _process(cmd, log, env) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/v1/models", proc, START_TIMEOUT_S, "transformers serve")
        except BenchError:
            console.print(_tail(log))
            raise
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        return _http_levels("peer", config, _peer_request(sdk, str(folder), config))


def _peer_request(sdk: Any, model: str, config: Config) -> Callable[[int, int], Timeline]:
    def request(stream: int, i: int) -> Timeline:
        line = Timeline(time.perf_counter())
        chunks = sdk.chat.completions.create(
            model=model,
            messages=_messages(i),
            max_tokens=config.max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                line.stamps.append(time.perf_counter())
            usage = chunk.usage or usage
        # The server's own count; without one, one token per content chunk.
        line.tokens = usage.completion_tokens if usage else len(line.stamps)
        return line

    return request


# --- the whole section -----------------------------------------------------------------


def run(config: Config | None = None) -> dict[str, Any]:
    """Measure every system, print, save ``serving.json``; returns the figures."""
    config = config or Config.for_this_machine()
    console.print(
        f"[bold]Serving[/] {MODEL_NAME}: levels {config.levels}, max_tokens "
        f"{config.max_tokens}, greedy, systems {', '.join(config.systems)}"
    )
    results: dict[str, list[LevelResult]] = {}
    prefix: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="tallystick-bench-") as tmp:
        for system in config.systems:
            figures: dict[str, Any] | None = {} if config.prefix else None
            try:
                results[system] = _run_system(system, config, Path(tmp), figures)
            except Exception as exc:  # one failing system must not hide the others' figures
                errors[system] = f"{type(exc).__name__}: {exc}"
                console.print(f"  [red]{LABELS.get(system, system)} failed:[/] {errors[system]}")
            if figures:
                prefix[system] = figures
    targets = _targets(results, config, prefix)
    _print(results, targets)
    out = {
        "config": {**asdict(config), "model": str(config.model)},
        "levels": {s: [r.to_json() for r in rs] for s, rs in results.items()},
        "errors": errors,
        "node_added_ttft_s": added_ttft(results),
        "node_llama_added_ttft_s": added_ttft(results, "node-llama", "llama"),
        "prefix_reuse": prefix,
        "targets": [t.to_json() for t in targets],
    }
    save("serving", out)
    return out


def _run_system(
    system: str, config: Config, workdir: Path, prefix: dict[str, Any] | None = None
) -> list[LevelResult]:
    if system == "engine":
        return run_engine(config)
    if system == "node":
        return run_node(config, workdir, prefix=prefix)
    if system == "peer":
        return run_peer(config, workdir)
    if system in ("llama", "vllm"):
        return run_bare_upstream(system, config, workdir)
    if system in ("node-llama", "node-vllm"):
        return run_node_upstream(system.removeprefix("node-"), config, workdir, prefix)
    raise BenchError(f"unknown system {system!r} (choose from {', '.join(ALL_SYSTEMS)})")


def _at(results: dict[str, list[LevelResult]], system: str, streams: int) -> LevelResult | None:
    return next((r for r in results.get(system, []) if r.streams == streams), None)


def _ratio(a: LevelResult | None, b: LevelResult | None) -> float | None:
    if a is None or b is None or not b.tokens_per_s:
        return None
    return a.tokens_per_s / b.tokens_per_s


def added_ttft(
    results: dict[str, list[LevelResult]], node: str = "node", bare: str = "engine"
) -> float | None:
    """``node`` TTFT p50 minus ``bare`` TTFT p50 at one stream: what metering adds before the
    first token ((b) - (a) by default; (e) - (d) for llama.cpp)."""
    front, engine = _at(results, node, 1), _at(results, bare, 1)
    if front is None or engine is None:
        return None
    return front.ttft_p50_s - engine.ttft_p50_s


def _targets(
    results: dict[str, list[LevelResult]],
    config: Config,
    prefix: dict[str, dict[str, Any]] | None = None,
) -> list[Target]:
    out = []
    systems = set(config.systems)
    if {"llama", "node-llama"} & systems:
        for n in (1, 4, 8):
            ratio = _ratio(_at(results, "node-llama", n), _at(results, "llama", n))
            out.append(Target(f"(e)/(d) tokens/s at {n} streams", ratio, 0.90, True, "x"))
        added = added_ttft(results, "node-llama", "llama")
        ms = None if added is None else added * 1e3
        out.append(Target("(e) - (d) TTFT p50 at 1 stream", ms, 10.0, False, "ms"))
    if {"vllm", "node-vllm"} & systems:
        ratio = _ratio(_at(results, "node-vllm", 64), _at(results, "vllm", 64))
        out.append(Target("(g)/(f) tokens/s at 64 streams", ratio, 0.95, True, "x"))
    node8 = _at(results, "node", 8)
    if {"engine", "node", "peer"} & systems:
        vs_engine = _ratio(node8, _at(results, "engine", 8))
        out.append(Target("(b)/(a) tokens/s at 8 streams", vs_engine, 0.90, True, "x"))
        scaling = _ratio(node8, _at(results, "node", 1))
        out.append(Target("(b)@8 / (b)@1 tokens/s", scaling, 5.0, True, "x"))
        for n in config.levels:
            ratio = _ratio(_at(results, "node", n), _at(results, "peer", n))
            out.append(Target(f"(b)/(c) tokens/s at {n} streams", ratio, 1.0, True, "x"))
    if config.prefix:
        for system in ("node-llama", "node", "node-vllm"):
            if system in systems:
                ratio = (prefix or {}).get(system, {}).get("ratio")
                name = f"{LABELS[system][:3]} 5th-turn TTFT cached/uncached"
                out.append(Target(name, ratio, 0.30, False, "x"))
    return out


def _print(results: dict[str, list[LevelResult]], targets: list[Target]) -> None:
    rows = [
        [
            LABELS[r.system],
            r.streams,
            r.requests,
            r.tokens,
            f"{r.tokens_per_s:.1f}",
            f"{r.ttft_p50_s * 1e3:.0f} / {r.ttft_p95_s * 1e3:.0f}",
            f"{r.itl_p50_s * 1e3:.0f} / {r.itl_p95_s * 1e3:.0f}",
        ]
        for rs in results.values()
        for r in rs
    ]
    cols = ["system", "streams", "requests", "tokens", "tok/s", "TTFT p50/p95 ms", "ITL p50/p95 ms"]
    console.print(table("Serving: aggregate output tokens/s and latency", cols, rows))
    show_targets("Serving targets", targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default=None, help="default 1,4,8,16 (+64 with a GPU)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-requests", type=int, default=3)
    parser.add_argument("--systems", default=",".join(default_systems()))
    parser.add_argument("--no-peer-cb", action="store_true", help="transformers serve without CB")
    parser.add_argument("--no-prefix", action="store_true", help="skip the prefix-reuse chat")
    args = parser.parse_args()
    levels = args.levels or ("1,4,8,16,64" if gpu_with_vllm() else "1,4,8,16")
    run(
        Config(
            levels=tuple(int(x) for x in levels.split(",")),
            max_tokens=args.max_tokens,
            min_requests=args.min_requests,
            systems=tuple(args.systems.split(",")),
            peer_continuous_batching=not args.no_peer_cb,
            prefix=not args.no_prefix,
        )
    )


if __name__ == "__main__":
    main()
