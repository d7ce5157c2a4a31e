"""Issue 13: --version on both commands, -h on every command and group, and a base install
without the node extras gets one readable line naming ``pip install 'tallystick[node]'``."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import click
import pytest
from click.testing import CliRunner
from tallystick.client.cli import cli as client_cli
from tallystick.node.cli import main as node_cli

VERSION = version("tallystick")


def _run(code: str, cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.mark.parametrize(
    ("entry", "name"),
    [
        ("tallystick.client.cli:main", "tallystick"),
        ("tallystick.client._node_entry:main", "tallystick-node"),
    ],
)
def test_version_from_the_real_entry_points(entry: str, name: str, tmp_path: object) -> None:
    module, func = entry.split(":")
    done = _run(f"from {module} import {func}; {func}(['--version'])", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{name}, version {VERSION}"


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


@pytest.mark.parametrize("group", [client_cli, node_cli], ids=["tallystick", "tallystick-node"])
def test_dash_h_works_on_every_command(group: click.Group) -> None:
    commands = _commands(group)
    assert len(commands) > 8
    for path in commands:
        result = CliRunner().invoke(group, [*path, "-h"])
        assert result.exit_code == 0, (path, result.output)
        assert result.output.startswith("Usage: "), (path, result.output)


def test_node_without_its_extras_says_what_to_install(tmp_path: object) -> None:
    # A base install: FastAPI (the first node import) cannot be imported.
    code = (
        "import sys; sys.modules['fastapi'] = None; "
        "from tallystick.client._node_entry import main; main(['serve', '-h'])"
    )
    done = _run(code, str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "error: tallystick-node needs the node extras (fastapi is not installed): "
        "pip install 'tallystick[node]'"
    )


def test_the_demo_hint_shows_the_brackets(tmp_path: object) -> None:
    # Without torch the demo stops before starting anything; rich markup used to eat "[node]".
    code = (
        "import sys; sys.modules['torch'] = None; "
        "from tallystick.client.cli import main; main(['demo'])"
    )
    done = _run(code, str(tmp_path))
    text = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0 and "Traceback" not in text
    assert "pip install 'tallystick[node]'" in text
