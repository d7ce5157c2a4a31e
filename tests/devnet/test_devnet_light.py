"""The light SDK stays light: ``tallystick.client``, ``tallystick.devnet`` and ``tallystick
--help`` work with the node-only dependencies (torch, gguf, transformers) unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A meta-path finder that refuses the node's heavy modules, installed before anything else.
BLOCK = """
import importlib.abc, sys
HEAVY = ("torch", "gguf", "transformers", "accelerate")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"blocked for this test: {name}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_block_really_blocks(tmp_path: Path) -> None:
    done = _run("import gguf", tmp_path)
    assert done.returncode == 1 and "blocked for this test: gguf" in done.stderr


def test_client_and_devnet_import_without_node_dependencies(tmp_path: Path) -> None:
    code = (
        "import tallystick.client, tallystick.devnet\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_tallystick_help_runs_without_node_dependencies(tmp_path: Path) -> None:
    code = "from tallystick.client.cli import main\nmain(['--help'])\n"
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout and "gateway" in done.stdout
