"""LlamaCppEngine: the node runs llama.cpp's ``llama-server`` itself and meters it.

One command gives a CPU provider llama.cpp's speed (parallel slots, continuous batching):
``tallystick-node serve --engine llamacpp --model model.gguf``. The engine starts
``llama-server`` on a free loopback port, waits for its ``/health`` (logging progress while
the GGUF loads), and then meters it exactly like ``--engine upstream`` in front of a
llama-server (``UpstreamEngine``: native ``/completion``, llama.cpp's own token ids). The
subprocess is stopped with the engine, and killed with the node if the node dies (it is put
gets SIGTERM from ``PR_SET_PDEATHSIG`` on Linux). It answers only requests bearing a key
made for this run (``LLAMA_API_KEY`` in its environment), so no other local user can use it.

The binary: ``llama_server`` when given, else ``$TALLYSTICK_LLAMA_SERVER``, else the one
``make llama`` builds (``<cache>/llama.cpp/<version>/bin/llama-server``), else
``llama-server`` on ``PATH``.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO

import httpx

from ._base import Prompt, SamplingParams, TokenEvent
from ._errors import EngineStopped, ModelLoadError, UpstreamUnavailable
from ._gguf_cache import cache_root
from ._loading import load_tokenizer
from ._upstream import UpstreamEngine

__all__ = [
    "LLAMA_CPP_PYTHON_VERSION",
    "LlamaCppEngine",
    "built_llama_cpp_python",
    "find_llama_server",
    "llama_cpp_python_server",
]

log = logging.getLogger("tallystick.node.engines")

# The llama-cpp-python sdist whose vendored llama.cpp `make llama` builds (scripts/build-llama.sh).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SERVER_ENV = "TALLYSTICK_LLAMA_SERVER"
_LOG_TAIL = 30  # lines of llama-server output quoted when it fails to start


def built_llama_server() -> Path:
    """Where ``make llama`` puts the binary (it may not exist yet)."""
    return cache_root() / "llama.cpp" / LLAMA_CPP_PYTHON_VERSION / "bin" / "llama-server"


def built_llama_cpp_python() -> Path:
    """The Python of the venv ``make llama`` installs llama-cpp-python[server] into; it runs
    on the same build's ``libllama.so`` (beside ``built_llama_server()``, through
    ``LLAMA_CPP_LIB_PATH``). It may not exist yet."""
    return cache_root() / "llama.cpp" / LLAMA_CPP_PYTHON_VERSION / "venv" / "bin" / "python"


def llama_cpp_python_server(
    gguf: str,
    port: int,
    *,
    n_ctx: int = 2048,
    threads: int | None = None,
    model_alias: str | None = None,
    python: Path | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Command and environment of ``python -m llama_cpp.server`` on ``gguf`` as ``make llama``
    built it (``ModelLoadError`` naming ``make llama`` when it is not built).

    ``--interrupt_requests False``: by default a new request cuts the running stream short
    (it sends ``[DONE]`` without a ``finish_reason``); this server runs one request at a time,
    so concurrent requests wait their turn instead."""
    python = python or built_llama_cpp_python()
    lib = built_llama_server().parent
    if not python.is_file() or not (lib / "libllama.so").is_file():
        raise ModelLoadError(f"llama_cpp.server not built ({python}): run `make llama`")
    threads = threads or default_llama_threads()
    cmd = [str(python), "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", str(n_ctx), "--interrupt_requests", "False"]
    cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    if model_alias:
        cmd += ["--model_alias", model_alias]
    return cmd, {**os.environ, "LLAMA_CPP_LIB_PATH": str(lib)}


def find_llama_server(explicit: str | None = None) -> Path:
    """The llama-server binary to run; ``ModelLoadError`` naming ``make llama`` when none."""
    candidates = [explicit, os.environ.get(SERVER_ENV), str(built_llama_server())]
    for candidate in candidates:
        if candidate:
            path = Path(candidate).expanduser()
            if path.is_file() and os.access(path, os.X_OK):
                return path
            if candidate in (explicit, os.environ.get(SERVER_ENV)):
                raise ModelLoadError(f"llama-server {candidate!r} is not an executable file")
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    raise ModelLoadError(
        f"no llama-server binary: run `make llama` (builds {built_llama_server()}), "
        f"or name one with --llama-server PATH or ${SERVER_ENV}"
    )


def default_llama_threads() -> int:
    """All cores but one (at least one), as the transformers engine: the node needs a core.

    llama.cpp's threads spin-wait at every barrier, so a thread that loses its core stalls
    the whole step: on the shared 2-core box 2 threads served 0.9 tokens/s where 1 served
    ~90."""
    return max(1, (os.cpu_count() or 1) - 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # SIGTERM when the thread that started it dies (the node's event loop), even by SIGKILL.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LlamaCppEngine:
    """Runs ``llama-server`` on ``gguf`` with ``parallel`` slots and meters it."""

    def __init__(
        self,
        gguf: str,
        *,
        binary: Path,
        parallel: int = 8,
        slot_context: int | None = None,
        threads: int | None = None,
        extra_args: Sequence[str] = (),
        model_name: str | None = None,
        max_queue: int = 64,
        start_timeout: float = 300.0,
    ) -> None:
        if not gguf.lower().endswith(".gguf") or not Path(gguf).is_file():
            raise ModelLoadError(f"--engine llamacpp needs a .gguf file, got {gguf!r}")
        self._gguf = gguf
        self._binary = binary
        self._parallel = parallel
        self._threads = threads or default_llama_threads()
        self._extra = list(extra_args)
        self._timeout = start_timeout
        self._port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL)
        self._reader: threading.Thread | None = None
        from tallystick.protocol import TokenCounter, TokenizerBundle

        self._max_concurrency = parallel + max_queue
        self._tokenizer = load_tokenizer(gguf)  # the same GGUF's tokenizer meters it
        model_ctx = self._tokenizer.context_length
        self._slot_context = min(slot_context or model_ctx, model_ctx)
        self.model_name = model_name or self._tokenizer.name
        self.context_length = self._slot_context
        self.tokenizer_bundle = TokenizerBundle.from_hf(self._tokenizer.tokenizer)
        self.counter = TokenCounter(self.tokenizer_bundle)
        self._upstream: UpstreamEngine | None = None
        # Only the node may use its llama-server: a fresh key, passed in the environment
        # (argv is visible to every local user through ps).
        self._api_key = secrets.token_hex(16)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._process

    @property
    def greedy_auditable(self) -> bool:
        """Metered through llama-server's native ids: greedy audits hold (§10.5)."""
        return self._upstream is not None and self._upstream.greedy_auditable

    def command(self, port: int) -> list[str]:
        """The llama-server command line (one slot of ``slot_context`` tokens per stream)."""
        cmd = [str(self._binary), "--model", self._gguf, "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--parallel", str(self._parallel)]
        cmd += ["--ctx-size", str(self._slot_context * self._parallel), "--cont-batching"]
        cmd += ["--alias", self.model_name, "--no-webui"]
        cmd += ["--threads", str(self._threads), "--threads-batch", str(self._threads)]
        return cmd + self._extra

    async def start(self) -> None:
        """Start llama-server (unless running) and connect to it from the running loop."""
        if self._process is None:
            await self._spawn()
        if self._upstream is None:
            upstream = UpstreamEngine(
                self.url,
                self._tokenizer.tokenizer,
                model_name=self.model_name,
                context_length=self.context_length,
                max_concurrency=self._max_concurrency,
                api_key=self._api_key,
                timeout=600.0,
            )
            try:
                await upstream.start()
            except BaseException:
                await self._terminate()
                raise
            self._upstream = upstream

    async def disconnect(self) -> None:
        """Close the HTTP client but leave llama-server running (the CLI's preflight loads it
        once, then the serving loop connects again with ``start``)."""
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            await upstream.stop()

    async def _spawn(self) -> None:
        self._port = _free_port()
        cmd = self.command(self._port)
        log.info("starting llama-server: %s", " ".join(cmd))
        try:
            process = subprocess.Popen(
                cmd,
                env={**os.environ, "LLAMA_API_KEY": self._api_key},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise ModelLoadError(f"cannot run {self._binary}: {exc.strerror}") from exc
        self._process = process
        assert process.stdout is not None
        self._reader = threading.Thread(
            target=self._pump, args=(process.stdout,), name="llama-server-log", daemon=True
        )
        self._reader.start()
        try:
            await self._wait_healthy(process)
        except BaseException:
            await self._terminate()
            raise
        log.info("llama-server ready on %s (%d slots)", self.url, self._parallel)

    async def stop(self) -> None:
        await self.disconnect()
        await self._terminate()

    def stats(self) -> dict[str, int]:
        running = self._upstream.stats()["running"] if self._upstream is not None else 0
        return {"queued": 0, "running": running, "max_batch": self._parallel}

    def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[TokenEvent]:
        upstream, process = self._upstream, self._process
        if upstream is None or process is None or process.poll() is not None:
            raise EngineStopped("llama-server is not running")
        return upstream.generate(prompt, params)

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            log.debug("llama-server: %s", line)
        stream.close()

    async def _wait_healthy(self, process: subprocess.Popen[bytes]) -> None:
        started = time.monotonic()
        last_report = started
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as http:
            while True:
                code = process.poll()
                if code is not None:
                    tail = "\n".join(self._tail)
                    raise ModelLoadError(f"llama-server exited with code {code}:\n{tail}")
                try:
                    if (await http.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                now = time.monotonic()
                if now - started > self._timeout:
                    raise UpstreamUnavailable(
                        f"llama-server did not become healthy in {self._timeout:.0f} s"
                    )
                if now - last_report >= 5:
                    last_report = now
                    waited = now - started
                    log.info("waiting for llama-server to load %s (%.0f s)", self._gguf, waited)
                await asyncio.sleep(0.1)

    async def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                log.warning("llama-server did not stop in 15 s: killing it")
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._reader is not None:
            self._reader.join(timeout=5)
        log.info("llama-server stopped (exit code %s)", process.returncode)
