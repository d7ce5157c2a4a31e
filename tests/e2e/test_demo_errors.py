"""``tallystick demo`` refuses clearly (one line, exit 1, no traceback) before starting anything,
and reads the node's progress and the model's metadata correctly."""

from __future__ import annotations

from pathlib import Path

import pytest
from tallystick.client.cli import main
from tallystick.devnet import DevnetError, find_model, gguf_context_length, node_progress


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *args])
    captured = capsys.readouterr()
    # Rich wraps long lines at spaces; join them back to match whole messages.
    return int(exit_info.value.code or 0), " ".join((captured.out + captured.err).split())


def test_a_missing_model_file_says_run_make_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = _run(capsys, "--model", str(tmp_path / "nope.gguf"))
    assert code == 1
    assert "no such model file" in output and "Traceback" not in output


def test_no_model_anywhere_names_model_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TALLYSTICK_MODEL", raising=False)
    monkeypatch.setattr("tallystick.devnet._processes.package_root", lambda: tmp_path)
    with pytest.raises(DevnetError, match=r"run `tallystick-node model fetch`.*--model PATH"):
        find_model(None)


def test_tallystick_model_may_name_the_folder(
    model_dir: Path, model_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLYSTICK_MODEL", str(model_dir))
    assert find_model(None) == model_dir / model_file


def test_model_folder_resolves_to_the_gguf(model_dir: Path, model_file: str) -> None:
    assert find_model(model_dir) == model_dir / model_file


def test_deployer_key_without_rpc_is_refused(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = _run(capsys, "--deployer-key", "0x" + "11" * 32)
    assert code == 1
    assert "--deployer-key only goes with --rpc" in output and "Traceback" not in output


def test_an_unreachable_rpc_is_one_line(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = _run(capsys, "--rpc", "http://127.0.0.1:9")
    assert code == 1
    assert "cannot reach the chain at http://127.0.0.1:9" in output
    assert "Traceback" not in output


@pytest.mark.chain
def test_an_unfunded_deployer_key_is_refused(
    anvil: object, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = anvil.url  # type: ignore[attr-defined]
    code, output = _run(capsys, "--rpc", url, "--deployer-key", "0x" + "22" * 32)
    assert code == 1
    assert "has 0.0000 ETH; it needs 3 ETH" in output


def test_node_progress_reads_the_dequantising_bar(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    log.write_text(
        'ts=x level=info logger=tallystick.node.engines msg="loading tokenizer from m.gguf"\n'
        "Converting and de-quantizing GGUF tensors...:   4%|▍   | 12/272 [00:03<00:59]\r"
        "Converting and de-quantizing GGUF tensors...:  50%|█   | 136/272 [00:09<00:09]"
    )
    assert node_progress(log) == ("Converting and de-quantizing GGUF tensors...", 136, 272)
    with log.open("a") as f:
        f.write('\nts=y level=info logger=tallystick.node msg="model \\"x\\" ready in 0.0s"\n')
    assert node_progress(log) == ('model "x" ready in 0.0s', None, None)
    assert node_progress(tmp_path / "missing.log")[0] == "starting the node process"


def test_gguf_context_length_matches_the_model(model_dir: Path, model_file: str) -> None:
    assert gguf_context_length(model_dir / model_file) == 8192
