"""A throwaway PostgreSQL server from Debian's packages (postgresql-15 on bookworm, -17 on trixie), for the
jobs benchmark (benchmarks/jobs.py) and tests (tests/test_jobs.py): initdb into a new folder under /tmp, the
server on 127.0.0.1:<port> (fsync off: throwaway data), stopped and removed by Postgres.stop().
PostgreSQL refuses to run as root: as root its programs run as the `postgres` user the package creates."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Debian's server binaries (postgresql-15 on bookworm, -17 on trixie): the newest installed
PG_BIN = Path(os.environ.get("GENGUARD_PG_BIN") or max(Path("/usr/lib/postgresql").glob("*/bin"),
                                                       key=lambda p: int(p.parent.name), default=Path("/nonexistent")))


@dataclass
class Postgres:
    data: Path
    port: int
    user: str
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/genguard"

    def createdb(self, name: str) -> None:
        subprocess.run([*_as_user(self.user), str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", self.user, name], check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: PostgreSQL's smart shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data.parent, ignore_errors=True)


def _as_user(user: str) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as `user` then."""
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


def start_postgres(port: int) -> Postgres:
    """A throwaway PostgreSQL server (Debian's postgresql package) on 127.0.0.1:port, its data in a new folder
    under /tmp (pytest's own folders are closed to the `postgres` user); Postgres.stop() removes it."""
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="genguard-pg-"))
    if not (PG_BIN / "postgres").exists():
        raise RuntimeError(f"PostgreSQL is not installed ({PG_BIN}): apt-get install postgresql (make setup does)")
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise RuntimeError("no `postgres` user to run PostgreSQL as: apt-get install postgresql creates it")
    data = workdir / "pgdata"
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(workdir, user)
        shutil.chown(data, user)
    subprocess.run([*_as_user(user), str(PG_BIN / "initdb"), "-D", str(data), "-U", user, "--auth=trust",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    log = open(workdir / "postgres.log", "wb")
    process = subprocess.Popen([*_as_user(user), str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port),
                                "-h", "127.0.0.1", "-k", str(workdir), "-c", "fsync=off", "-c", "max_connections=100"],
                               stdout=log, stderr=subprocess.STDOUT)
    pg = Postgres(data, port, user, process)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited: {(workdir / 'postgres.log').read_text()}")
        ready = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
        if ready.returncode == 0:
            break
        if time.monotonic() > deadline:
            pg.stop()
            raise RuntimeError("postgres not ready after 60 s")
        time.sleep(0.2)
    pg.createdb("genguard")
    return pg
