"""``tallystick-node model fetch``: the demo's model for a pip user, as ``make model`` does."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from tallystick.node.cli import main


def test_model_fetch_puts_the_same_gguf_where_it_says(tmp_path: Path, model_dir: Path) -> None:
    dest = tmp_path / "models"
    result = CliRunner().invoke(main, ["model", "fetch", "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    fetched = dest / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert f"model: {fetched}" in result.output
    # the variable `serve` reads (it ignores $TALLYSTICK_MODEL, which only the demo reads)
    assert f"export TALLYSTICK_NODE_MODEL={fetched}" in result.output
    assert f"TALLYSTICK_MODEL={dest}" in result.output
    reference = model_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"  # what `make model` fetched
    assert fetched.read_bytes() == reference.read_bytes()
    assert not list(dest.glob("*.part"))
    # there already: no download
    again = CliRunner().invoke(main, ["model", "fetch", "--dest", str(dest)])
    assert again.exit_code == 0 and "Successfully downloaded" not in again.output


def test_serve_says_how_to_get_a_missing_model(tmp_path: Path) -> None:
    from tallystick.node.engines import ModelLoadError, load_tokenizer

    try:
        load_tokenizer(str(tmp_path / "absent.gguf"))
    except ModelLoadError as exc:
        assert "tallystick-node model fetch" in str(exc)
    else:
        raise AssertionError("a missing model loaded")
