"""The released wheel: every subpackage and its data inside, nothing test-only, and the
commands work from a fresh virtual environment outside the checkout.

The wheel is built from a copy of the files git tracks (a build in the checkout would leave a
``build/`` whose stale copies a later wheel could pick up). The fresh venv has no pip and no
tallystick of its own but the wheel; it borrows the dependencies of this interpreter through a
``.pth`` file listing its site-packages folders. A folder named in a ``.pth`` is only added to
``sys.path``: the ``.pth`` files inside it (the editable install's finder) are not run, so the
checkout cannot leak in, and the test checks where ``tallystick`` was imported from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"protocol": "protocol", "client": "client", "node": "node", "devnet": "devnet"}
DATA = {
    "tallystick/protocol/py.typed",
    "tallystick/client/py.typed",
    "tallystick/node/py.typed",
    "tallystick/devnet/py.typed",
    "tallystick/node/dashboard.html",
    "tallystick/protocol/abi/TallyEscrow.json",
    "tallystick/protocol/abi/ProviderRegistry.json",
    "tallystick/protocol/abi/MockUSDC.json",
}


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the wheel is built from the files git tracks")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in _tracked_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheelhouse")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*cmd, "--quiet", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("tallystick-*.whl")
    return path


def _expected_modules() -> set[str]:
    """Every Python file of the four packages in the checkout, as a wheel path."""
    out = set()
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                out.add(f"tallystick/{name}/{path.relative_to(ROOT / folder).as_posix()}")
    return out


def test_the_wheel_holds_every_subpackage_and_its_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {n for n in names if n.endswith(".py")}
    missing = _expected_modules() - modules
    assert not missing, f"missing from the wheel: {sorted(missing)}"
    assert "tallystick/client/_gateway/__init__.py" in names
    assert names >= DATA, sorted(DATA - names)


def test_the_wheel_holds_nothing_test_only(wheel: Path) -> None:
    files = [n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n]
    packages = {f"tallystick/{name}" for name in PACKAGES.values()}
    outside = [n for n in files if "/".join(n.split("/")[:2]) not in packages]
    assert not outside, f"not in a package (bench, tests, scripts?): {outside}"
    assert not [n for n in files if "/tests/" in n or n.endswith("conftest.py")]
    # The test mocks' ABIs (ReentrantToken, FeeOnTransferToken) stay out: MockUSDC is the
    # demo's token, the only mock a user meets.
    abis = {n for n in files if n.startswith("tallystick/protocol/abi/")}
    assert abis == {n for n in DATA if "/abi/" in n}, sorted(abis)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    borrowed = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    borrowed.append(sysconfig.get_paths()["purelib"])
    Path(purelib, "zz_borrowed_dependencies.pth").write_text("\n".join(dict.fromkeys(borrowed)))
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    done = subprocess.run(
        [*install, "--quiet", str(wheel)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    yield root


def _in(venv: Path, cwd: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_installed_wheel_imports_from_the_venv_not_the_checkout(
    venv: Path, tmp_path: Path
) -> None:
    code = (
        "import tallystick.client, tallystick.devnet, tallystick.node, tallystick.protocol\n"
        "import tallystick.client._gateway\n"
        "print(tallystick.devnet.__file__)\n"
        "print(tallystick.client._gateway.__file__)\n"
    )
    done = _in(venv, tmp_path, str(venv / "bin" / "python"), "-c", code)
    assert done.returncode == 0, done.stderr
    for path in done.stdout.split():
        assert Path(path).is_relative_to(venv), path


def test_the_installed_commands_run(venv: Path, tmp_path: Path) -> None:
    bin_ = venv / "bin"
    for cmd in (
        [bin_ / "tallystick", "--version"],
        [bin_ / "tallystick", "gateway", "--help"],
        [bin_ / "tallystick-node", "--version"],
        [bin_ / "python", "-c", "import tallystick.devnet"],
    ):
        done = _in(venv, tmp_path, *map(str, cmd))
        assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr
    assert "0.1.0" in _in(venv, tmp_path, str(bin_ / "tallystick"), "--version").stdout
