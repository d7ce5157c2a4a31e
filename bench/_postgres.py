"""A throw-away PostgreSQL cluster for benches and tests (Debian's postgresql, initdb/pg_ctl).

``PgCluster.start(fsync=...)`` makes a cluster in a fresh temporary folder, listening on
127.0.0.1 at a free port with trust auth; ``new_database()`` returns the URL of an empty
database. As root, the server runs as the ``postgres`` system user (initdb refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tallystick.devnet import free_port

USER = "tally"


def pg_bindir() -> Path:
    """Where initdb and pg_ctl live (PATH first, then Debian's versioned folders)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if not versions:
        raise RuntimeError("PostgreSQL server binaries not found: run `make setup`")
    return Path(versions[-1]).parent


def _version(path: str) -> int:
    return int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0


@dataclass
class PgCluster:
    """A running cluster: ``url(db)`` for a database; ``stop()`` removes everything."""

    folder: Path
    port: int
    runas: list[str]
    bindir: Path
    _count: int = field(default=0)

    @classmethod
    def start(cls, *, fsync: bool = False) -> PgCluster:
        bindir = pg_bindir()
        folder = Path(tempfile.mkdtemp(prefix="tally-pg-"))
        runas: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(folder, owner.pw_uid, owner.pw_gid)
            runas = ["runuser", "-u", "postgres", "--"]
        cluster = cls(folder, free_port(), runas, bindir)
        cluster._run(
            "initdb",
            "-D",
            str(folder / "data"),
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-p {cluster.port} -k {folder} -c listen_addresses=127.0.0.1 "
            f"-c fsync={'on' if fsync else 'off'} -c max_connections=200"
        )
        cluster._run(
            "pg_ctl",
            "-D",
            str(folder / "data"),
            "-o",
            options,
            "-l",
            str(folder / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return cluster

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self.runas, str(self.bindir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """An empty database of its own (each test gets one)."""
        import psycopg

        self._count += 1
        name = f"t{os.getpid()}_{self._count}_{int(time.time() * 1000) % 1_000_000}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
