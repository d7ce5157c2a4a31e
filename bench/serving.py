"""Serving side by side: the same model, prompts and machine at 1, 4, 8 and 16 concurrent streams.

Longer than 450 lines on purpose: one section, one table, and each of its eight systems is a
short driver here so the rows are read in one place; the load generator (_load), the set-up
(_setup) and the prefix-reuse chat (_prefix) are already their own modules.

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
(h) ``llamapy``: llama-cpp-python's ``python -m llama_cpp.server`` on the same build and GGUF
    (``make llama``; one request at a time, ``--interrupt_requests False``), driven as (d);
(i) ``node-llamapy``: the node in front of it (prompt as text, completion re-tokenised);
(f) ``vllm`` and (g) ``node-vllm``: the same pair with ``vllm serve`` instead, run by default
    only where ``vllm`` is installed and a CUDA GPU is present (the GPU plan in
    docs/internals.md); levels then include 64 streams.

The llama.cpp systems (d), (e), (h), (i) run at 1, 4 and 8 streams (``llama_levels``), the
others at every level. One system at a time; greedy decoding, the same ``max_tokens``;
tokens are counted as actually generated (none of them can be told to ignore EOS through the
same API, so the prompts ask for long answers). Reports aggregate output tokens/s, TTFT and
inter-token latency percentiles, and the ratios the targets are defined on.

Prefix reuse (with the nodes (b), (e), (g), (i)): a 5-turn chat whose system prompt is ~1,000
tokens, through the node; the 5th turn's TTFT after turns 1-4 on the same channel ("cached")
against the same-length 5th turn sent cold with another system prompt ("uncached").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tallystick.devnet import Processes, free_port, gguf_context_length

from ._common import (
    MODEL_GGUF,
    MODEL_NAME,
    BenchError,
    Target,
    console,
    save,
    show_targets,
)
from ._load import (
    LevelResult,
    Request,
    Timeline,
    levels,
    levels_table,
    messages,
    openai_request,
    report_level,
    rounds,
    sdk_request,
    summarize,
)
from ._load import (
    level_at as _at,
)
from ._prefix import prefix_reuse, report_prefix
from ._setup import (
    ensure_hf_model,
    list_served,
    market,
    sdk_clients,
    serve_node,
    start_server,
    transformers_serve,
)

__all__ = ["Config", "run"]

ALL_SYSTEMS = (
    "llama",
    "node-llama",
    "llamapy",
    "node-llamapy",
    "engine",
    "node",
    "peer",
    "vllm",
    "node-vllm",
)
LLAMA_SYSTEMS = ("llama", "node-llama", "llamapy", "node-llamapy")
LABELS = {
    "engine": "(a) bare engine",
    "node": "(b) tallystick-node",
    "peer": "(c) transformers serve",
    "llama": "(d) llama-server",
    "node-llama": "(e) node + llama-server",
    "vllm": "(f) vLLM",
    "node-vllm": "(g) node + vLLM",
    "llamapy": "(h) llama_cpp.server",
    "node-llamapy": "(i) node + llama_cpp.server",
}
LLAMA_SLOT_CTX = 2048  # tokens per llama-server slot: the prefix-reuse chat fits in one


def vllm_command() -> list[str] | None:
    """How to start vLLM's OpenAI server here: its ``vllm`` command, else the importable
    package's module (``python -m vllm.entrypoints.cli.main``); None without vLLM."""
    import importlib.util

    if shutil.which("vllm") is not None:
        return ["vllm"]
    if importlib.util.find_spec("vllm") is not None:
        return [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    return None


def gpu_with_vllm() -> bool:
    """A CUDA GPU and vLLM (command or package): the machine the GPU plan is for."""
    if vllm_command() is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def default_systems() -> tuple[str, ...]:
    gpu = gpu_with_vllm()
    return tuple(s for s in ALL_SYSTEMS if gpu or "vllm" not in s)


SYSTEMS = ("llama", "node-llama", "llamapy", "node-llamapy", "engine", "node", "peer")


@dataclass(frozen=True)
class Config:
    levels: tuple[int, ...] = (1, 4, 8, 16)
    llama_levels: tuple[int, ...] | None = (1, 4, 8)  # the llama.cpp systems' (None: levels)
    max_tokens: int = 64
    min_requests: int = 3  # per level: each stream runs ceil(min_requests / streams) requests
    systems: tuple[str, ...] = SYSTEMS
    peer_continuous_batching: bool = True
    model: Path = MODEL_GGUF
    prefix: bool = True  # the prefix-reuse chat with each node system

    def levels_of(self, system: str) -> tuple[int, ...]:
        if system in LLAMA_SYSTEMS and self.llama_levels is not None:
            return self.llama_levels
        return self.levels

    @classmethod
    def for_this_machine(cls, **kwargs: Any) -> Config:
        """Every system this machine can run; with a GPU and vLLM, 64 streams too."""
        if gpu_with_vllm():
            kwargs.setdefault("levels", (1, 4, 8, 16, 64))
        kwargs.setdefault("systems", default_systems())
        return cls(**kwargs)


# --- (a) the bare engine --------------------------------------------------------------


async def _engine_request(engine: Any, i: int, max_tokens: int) -> Timeline:
    from tallystick.node.engines import Prompt, SamplingParams

    chat = messages(i)
    prompt = Prompt(ids=engine.counter.chat_prompt_ids(chat), messages=chat)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    line = Timeline(time.perf_counter())
    async for event in engine.generate(prompt, params):
        line.stamps.append(time.perf_counter())
        line.tokens += len(event.token_ids)
    return line


async def _engine_stream(engine: Any, i: int, count: int, max_tokens: int) -> list[Timeline]:
    return [await _engine_request(engine, i + r, max_tokens) for r in range(count)]


async def _engine_levels(config: Config) -> tuple[list[LevelResult], bytes]:
    from tallystick.node.engines import TransformersEngine

    console.print(f"  loading {config.model.name} in-process (bare engine)")
    engine = TransformersEngine.load(str(config.model), max_batch=max(config.levels))
    await engine.start()
    try:
        await _engine_request(engine, 0, 4)  # warm-up: first calls allocate and pick kernels
        out = []
        for n in config.levels:
            count = rounds(config.min_requests, n)
            jobs = [_engine_stream(engine, i, count, config.max_tokens) for i in range(n)]
            lines = [t for stream in await asyncio.gather(*jobs) for t in stream]
            out.append(summarize("engine", n, lines))
            report_level(LABELS["engine"], out[-1])
        return out, engine.tokenizer_bundle.hash()
    finally:
        await engine.stop()


def run_engine(config: Config) -> list[LevelResult]:
    results, _ = asyncio.run(_engine_levels(config))
    gc.collect()  # drop the model before the next system loads its own copy
    return results


# --- (b) the tallystick node -----------------------------------------------------------


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
    args = ["--max-batch", str(max(config.levels)), "--credit-requests", "1", *engine_args]
    with market(workdir) as bench:
        node = serve_node(bench, model=config.model, args=args, name=system)
        list_served(bench, node.url, context or gguf_context_length(config.model))
        with sdk_clients(bench, max(config.levels), folder=system) as clients:
            warm = sdk_request(clients, max_tokens=2)
            out = http_levels(
                system, config, sdk_request(clients, config.max_tokens), lambda i: warm(i, i)
            )
            if prefix is not None:
                prefix.update(prefix_reuse(clients[0], config.model))
                report_prefix(LABELS[system], prefix)
            return out


def http_levels(
    system: str, config: Config, request: Request, warm: Callable[[int], Any] | None = None
) -> list[LevelResult]:
    """``config``'s levels of one system driven by ``request`` (``_load.levels``)."""
    return levels(system, LABELS[system], config.levels, config.min_requests, request, warm)


# --- (d)-(g) llama.cpp and vLLM, bare and behind the node ------------------------------


@contextlib.contextmanager
def upstream_server(kind: str, config: Config, workdir: Path) -> Iterator[tuple[str, str]]:
    """A running ``llama-server`` (kind ``llama``), ``llama_cpp.server`` (``llamapy``) or
    ``vllm serve`` (``vllm``): (url, model id)."""
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
    elif kind == "llamapy":
        from tallystick.node.engines import ModelLoadError, llama_cpp_python_server

        try:  # one context of a slot's size: it serves one request at a time
            cmd, env = llama_cpp_python_server(
                str(config.model),
                port,
                n_ctx=LLAMA_SLOT_CTX,
                threads=llama_threads(),
                model_alias=MODEL_NAME,
            )
        except ModelLoadError as exc:
            raise BenchError(str(exc)) from exc
        env["PYTHONUNBUFFERED"] = "1"
        health, model = f"{url}/v1/models", MODEL_NAME
    elif kind == "vllm":
        folder = ensure_hf_model(config.model)
        cmd = [*(vllm_command() or ["vllm"]), "serve", str(folder), "--host", "127.0.0.1"]
        cmd += ["--port", str(port)]
        cmd += ["--max-num-seqs", str(max(slots, 64)), "--served-model-name", MODEL_NAME]
        health, model = f"{url}/v1/models", MODEL_NAME
    else:
        raise BenchError(f"unknown upstream {kind!r}")
    with Processes() as procs:
        start_server(procs, kind, cmd, health, workdir / f"{kind}.log", env)
        yield url, model


def llama_threads() -> int:
    from tallystick.node.engines._llamacpp import default_llama_threads

    return default_llama_threads()


def run_bare_upstream(kind: str, config: Config, workdir: Path) -> list[LevelResult]:
    import openai

    with upstream_server(kind, config, workdir) as (url, model):
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        return http_levels(kind, config, openai_request(sdk, model, config.max_tokens))


def run_node_upstream(
    kind: str, config: Config, workdir: Path, prefix: dict[str, Any] | None
) -> list[LevelResult]:
    with upstream_server(kind, config, workdir) as (url, model):
        args: tuple[str, ...] = ("--engine", "upstream", "--upstream-url", url)
        args += ("--upstream-model", model)
        if kind == "llamapy":  # its --n_ctx, which it does not report (llama-server does)
            args += ("--llama-ctx", str(LLAMA_SLOT_CTX))
        # The node serves llama.cpp's slot context (it limits prompts), vLLM's the model's.
        context = LLAMA_SLOT_CTX if kind in ("llama", "llamapy") else None
        return run_node(config, workdir, f"node-{kind}", args, prefix, context)


# --- (c) transformers serve ------------------------------------------------------------


def run_peer(config: Config, workdir: Path) -> list[LevelResult]:
    import openai

    with transformers_serve(config.model, workdir, config.peer_continuous_batching) as served:
        url, model = served
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        return http_levels("peer", config, openai_request(sdk, model, config.max_tokens))


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
        "node_llamapy_added_ttft_s": added_ttft(results, "node-llamapy", "llamapy"),
        "prefix_reuse": prefix,
        "targets": [t.to_json() for t in targets],
    }
    save("serving", out)
    return out


def _run_system(
    system: str, config: Config, workdir: Path, prefix: dict[str, Any] | None = None
) -> list[LevelResult]:
    config = replace(config, levels=config.levels_of(system))
    if system == "engine":
        return run_engine(config)
    if system == "node":
        return run_node(config, workdir, prefix=prefix)
    if system == "peer":
        return run_peer(config, workdir)
    if system in ("llama", "llamapy", "vllm"):
        return run_bare_upstream(system, config, workdir)
    if system in ("node-llama", "node-llamapy", "node-vllm"):
        return run_node_upstream(system.removeprefix("node-"), config, workdir, prefix)
    raise BenchError(f"unknown system {system!r} (choose from {', '.join(ALL_SYSTEMS)})")


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
    for node, bare in (("node-llama", "llama"), ("node-llamapy", "llamapy")):
        if not {node, bare} & systems:
            continue
        front, back = LABELS[node][:3], LABELS[bare][:3]
        for n in config.levels_of(node):
            ratio = _ratio(_at(results, node, n), _at(results, bare, n))
            out.append(Target(f"{front}/{back} tokens/s at {n} streams", ratio, 0.90, True, "x"))
        added = added_ttft(results, node, bare)
        ms = None if added is None else added * 1e3
        out.append(Target(f"{front} - {back} TTFT p50 at 1 stream", ms, 10.0, False, "ms"))
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
        for system in ("node-llama", "node-llamapy", "node", "node-vllm"):
            if system in systems:
                ratio = (prefix or {}).get(system, {}).get("ratio")
                name = f"{LABELS[system][:3]} 5th-turn TTFT cached/uncached"
                out.append(Target(name, ratio, 0.30, False, "x"))
    return out


def _print(results: dict[str, list[LevelResult]], targets: list[Target]) -> None:
    console.print(levels_table("Serving: aggregate output tokens/s and latency", results, LABELS))
    show_targets("Serving targets", targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default=None, help="default 1,4,8,16 (+64 with a GPU)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-requests", type=int, default=3)
    parser.add_argument("--systems", default=",".join(default_systems()))
    parser.add_argument("--llama-levels", default="1,4,8", help="the llama.cpp systems' levels")
    parser.add_argument("--no-peer-cb", action="store_true", help="transformers serve without CB")
    parser.add_argument("--no-prefix", action="store_true", help="skip the prefix-reuse chat")
    args = parser.parse_args()
    levels = args.levels or ("1,4,8,16,64" if gpu_with_vllm() else "1,4,8,16")
    run(
        Config(
            levels=tuple(int(x) for x in levels.split(",")),
            llama_levels=tuple(int(x) for x in args.llama_levels.split(",")),
            max_tokens=args.max_tokens,
            min_requests=args.min_requests,
            systems=tuple(args.systems.split(",")),
            peer_continuous_batching=not args.no_peer_cb,
            prefix=not args.no_prefix,
        )
    )


if __name__ == "__main__":
    main()
