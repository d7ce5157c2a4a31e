"""Smoke tests of the serving section: the aggregation and targets, and the bare engine level."""

from __future__ import annotations

from pathlib import Path

import pytest


def _line(started: float, stamps: list[float], tokens: int) -> object:
    from bench._load import Timeline

    return Timeline(started, stamps, tokens)


def test_summarize_aggregates_over_the_whole_level() -> None:
    from bench._load import summarize

    lines = [_line(0.0, [0.5, 1.0, 1.5], 3), _line(0.2, [0.4, 0.6, 2.2], 3)]
    level = summarize("node", 2, lines)  # type: ignore[arg-type]
    assert (level.requests, level.tokens, level.wall_s) == (2, 6, 2.2)
    assert level.tokens_per_s == pytest.approx(6 / 2.2)
    assert level.ttft_p50_s == pytest.approx(0.2)  # nearest rank of [0.2, 0.5]
    assert level.ttft_p95_s == pytest.approx(0.5)
    assert level.itl_p95_s == pytest.approx(1.6)


def test_targets_and_added_ttft_come_from_the_matching_levels() -> None:
    from bench._load import LevelResult
    from bench.serving import Config, _targets, added_ttft

    def level(system: str, streams: int, tokens: int, ttft: float) -> LevelResult:
        return LevelResult(system, streams, streams, tokens, 1.0, ttft, ttft, 0.1, 0.1)

    results = {
        "engine": [level("engine", 1, 10, 0.100), level("engine", 8, 100, 0.2)],
        "node": [level("node", 1, 10, 0.105), level("node", 8, 95, 0.2)],
        "peer": [level("peer", 1, 5, 0.3), level("peer", 8, 100, 0.3)],
    }
    targets = {t.name: t for t in _targets(results, Config(levels=(1, 8)))}
    assert targets["(b)/(a) tokens/s at 8 streams"].measured == pytest.approx(0.95)
    assert targets["(b)/(a) tokens/s at 8 streams"].passed
    assert targets["(b)@8 / (b)@1 tokens/s"].measured == pytest.approx(9.5)
    assert targets["(b)/(c) tokens/s at 1 streams"].passed
    assert not targets["(b)/(c) tokens/s at 8 streams"].passed
    assert added_ttft(results) == pytest.approx(0.005)


def test_a_failing_system_is_reported_not_raised(results_dir: Path) -> None:
    from bench import serving

    result = serving.run(serving.Config(levels=(1,), systems=("nonsense",)))
    assert "nonsense" in result["errors"] and result["levels"] == {}
    assert all(not t["pass"] for t in result["targets"])


@pytest.mark.model
def test_bare_engine_level_on_the_real_model(results_dir: Path) -> None:
    from bench import serving

    result = serving.run(serving.Config(levels=(1, 2), max_tokens=2, systems=("engine",)))
    levels = result["levels"]["engine"]
    assert [lv["streams"] for lv in levels] == [1, 2]
    assert all(0 < lv["tokens"] <= 2 * lv["requests"] for lv in levels)


def test_llama_cpp_systems_run_at_their_own_levels_with_their_targets() -> None:
    from bench.serving import Config, LevelResult, _targets

    def level(system: str, streams: int, tokens: int, ttft: float) -> LevelResult:
        return LevelResult(system, streams, streams, tokens, 1.0, ttft, ttft, 0.1, 0.1)

    config = Config(levels=(1, 4, 8, 16), llama_levels=(1, 4, 8))
    assert config.levels_of("node-llamapy") == (1, 4, 8) == config.levels_of("llama")
    assert config.levels_of("peer") == (1, 4, 8, 16)
    assert Config(llama_levels=None).levels_of("llamapy") == (1, 4, 8, 16)
    results = {
        "llamapy": [level("llamapy", n, 90 * n, 0.050) for n in (1, 4, 8)],
        "node-llamapy": [level("node-llamapy", n, 85 * n, 0.058) for n in (1, 4, 8)],
    }
    targets = {t.name: t for t in _targets(results, config)}
    assert targets["(i)/(h) tokens/s at 8 streams"].measured == pytest.approx(85 / 90)
    assert targets["(i)/(h) tokens/s at 8 streams"].passed
    assert "(i)/(h) tokens/s at 16 streams" not in targets
    assert targets["(i) - (h) TTFT p50 at 1 stream"].measured == pytest.approx(8.0)
    assert targets["(e)/(d) tokens/s at 1 streams"].measured is None  # not run: not passed


@pytest.mark.model
def test_bare_llama_cpp_python_level_on_the_real_build(results_dir: Path) -> None:
    from bench import serving

    config = serving.Config(
        levels=(1, 2), llama_levels=(1, 2), max_tokens=2, systems=("llamapy",), prefix=False
    )
    result = serving.run(config)
    assert result["errors"] == {}
    levels = result["levels"]["llamapy"]
    assert [lv["streams"] for lv in levels] == [1, 2]
    assert all(0 < lv["tokens"] <= 2 * lv["requests"] for lv in levels)


def test_vllm_is_found_as_a_command_or_as_a_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import shutil
    import sys

    from bench import serving

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert serving.vllm_command() is None and not serving.gpu_with_vllm()
    assert not any("vllm" in s for s in serving.default_systems())
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert serving.vllm_command() == [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert serving.vllm_command() == ["vllm"]
