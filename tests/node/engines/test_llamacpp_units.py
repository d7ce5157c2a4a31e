"""llama.cpp pieces that need no binary: finding llama-server, the pinned version, the native
stream's conversion, and the --engine llamacpp settings checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tallystick.node import ConfigError, load_settings
from tallystick.node._engine_factory import check_engine_settings
from tallystick.node.engines import (
    LLAMA_CPP_PYTHON_VERSION,
    ModelLoadError,
    Prompt,
    SamplingParams,
    built_llama_server,
    find_llama_server,
)
from tallystick.node.engines._upstream_wire import _native_body, _NativeChunks

ROOT = Path(__file__).resolve().parents[3]
CHAIN = {"rpc": "http://127.0.0.1:1", "escrow": "0x" + "11" * 20, "registry": "0x" + "22" * 20}


def test_the_build_script_pins_the_version_the_node_looks_for() -> None:
    script = (ROOT / "scripts" / "build-llama.sh").read_text()
    pinned = re.search(r'VERSION="\$\{LLAMA_CPP_PYTHON_VERSION:-([0-9.]+)\}"', script)
    assert pinned and pinned.group(1) == LLAMA_CPP_PYTHON_VERSION
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in script  # nothing downloaded at build time


def test_built_binary_lives_in_the_cache_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TALLYSTICK_CACHE_DIR", str(tmp_path))
    expected = tmp_path / "llama.cpp" / LLAMA_CPP_PYTHON_VERSION / "bin" / "llama-server"
    assert built_llama_server() == expected


def test_find_llama_server_prefers_explicit_then_env_then_build_then_path(
    monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("TALLYSTICK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TALLYSTICK_LLAMA_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(ModelLoadError, match="run `make llama`"):
        find_llama_server()
    on_path = tmp_path / "bin" / "llama-server"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert find_llama_server() == on_path
    built = built_llama_server()
    built.parent.mkdir(parents=True)
    built.write_text("#!/bin/sh\n")
    built.chmod(0o755)
    assert find_llama_server() == built
    monkeypatch.setenv("TALLYSTICK_LLAMA_SERVER", str(on_path))
    assert find_llama_server() == on_path
    assert find_llama_server(str(built)) == built
    with pytest.raises(ModelLoadError, match="not an executable file"):
        find_llama_server(str(tmp_path / "missing"))


def test_engine_llamacpp_needs_a_gguf_and_valid_args(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TALLYSTICK_LLAMA_SERVER", "/bin/true")
    folder = load_settings({**CHAIN, "engine": "llamacpp", "model": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"needs --model FILE\.gguf"):
        check_engine_settings(folder)
    quoted = load_settings(
        {**CHAIN, "engine": "llamacpp", "model": "m.gguf", "llama_args": "--foo 'bar"}
    )
    with pytest.raises(ConfigError, match="--llama-args"):
        check_engine_settings(quoted)
    monkeypatch.setenv("TALLYSTICK_LLAMA_SERVER", str(tmp_path / "nope"))
    missing = load_settings({**CHAIN, "engine": "llamacpp", "model": "m.gguf"})
    with pytest.raises(ConfigError, match="not an executable file"):
        check_engine_settings(missing)


def test_native_body_sends_the_metered_ids_and_plain_sampling() -> None:
    body = _native_body(Prompt(ids=[1, 2, 3]), SamplingParams(max_tokens=7, temperature=0), 5)
    assert body["prompt"] == [1, 2, 3] and body["n_predict"] == 5
    assert body["return_tokens"] and body["cache_prompt"] and body["stream"]
    assert (body["top_k"], body["min_p"], body["repeat_penalty"]) == (0, 0.0, 1.0)
    assert "stop" not in body and "seed" not in body  # stop strings are applied by the node


class _Encoded:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids


class _Encoder:
    def encode(self, text: str, add_special_tokens: bool = False) -> _Encoded:
        return _Encoded([ord(c) for c in text])


def test_native_chunks_carry_llama_ids_and_retokenise_only_held_back_ones() -> None:
    native = _NativeChunks(_Encoder())
    first = native.convert({"content": "a", "tokens": [500], "tokens_predicted": 1})
    assert first["choices"][0]["token_ids"] == [500]
    # ids 2 and 3 ended inside one character: llama.cpp sent no chunk for id 2
    split = native.convert({"content": "é", "tokens": [777], "tokens_predicted": 3})
    assert split["choices"][0]["token_ids"] == [ord("é")]
    normal = native.convert({"content": "b", "tokens": [501], "tokens_predicted": 4})
    assert normal["choices"][0]["token_ids"] == [501]
    final = native.convert(
        {
            "content": "",
            "tokens": [],
            "stop": True,
            "stop_type": "limit",
            "tokens_evaluated": 9,
            "timings": {"cache_n": 6, "prompt_n": 3},
        }
    )
    choice = final["choices"][0]
    assert choice["token_ids"] == [] and choice["finish_reason"] == "length"
    assert final["usage"] == {"prompt_tokens": 9}
    assert (native.cached, native.computed) == (6, 3)
    eos = _NativeChunks(_Encoder()).convert({"stop": True, "stop_type": "eos"})
    assert eos["choices"][0]["finish_reason"] == "stop"
