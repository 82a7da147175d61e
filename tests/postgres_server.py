"""A real PostgreSQL 15 for the attribution tests: ONE throwaway cluster per test session.

The tests run as root and PostgreSQL refuses to run as root, so the cluster's directory is handed to the
unprivileged ``postgres`` system user and initdb / pg_ctl run as that user (``runuser -u postgres --``).
It listens on a free loopback port with its socket in the cluster's own directory (never the system's
/var/run/postgresql), and TCP logins need a password (scram-sha-256), so a wrong password is refused as
it would be in production. The superuser is ``postgres`` with SUPERUSER_PASSWORD; each test asks for
fresh databases with ``PostgresServer.create_database`` (CREATE DATABASE per test).

Skipped, not failed, where no PostgreSQL 15 binaries are installed (`make system-deps` installs them).
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(os.environ.get("VERDICT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER_PASSWORD = "superuser-" + secrets.token_hex(8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    prefix = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    return subprocess.run([*prefix, *map(str, argv)], check=check, capture_output=True, text=True, timeout=120)


@dataclass
class PostgresServer:
    root: Path
    port: int
    host: str = "127.0.0.1"

    def url(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        password = SUPERUSER_PASSWORD if password is None and user == "postgres" else password
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}{self.host}:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run SQL as the superuser (autocommit: CREATE DATABASE cannot run in a transaction)."""
        import psycopg  # heavy: psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{secrets.token_hex(6)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def stop(self) -> None:
        _as_postgres(BIN / "pg_ctl", "-D", self.root / "data", "-m", "immediate", "stop", check=False)

    def start(self) -> None:
        _as_postgres(BIN / "pg_ctl", "-D", self.root / "data", "-l", self.root / "log", "-w", "start")


def start_cluster() -> PostgresServer:
    if not (BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {BIN} (make system-deps installs them)")
    root = Path(tempfile.mkdtemp(prefix="verdict-pg-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    (root / "pwfile").write_text(SUPERUSER_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root / "pwfile", "postgres", "postgres")
    _as_postgres(BIN / "initdb", "-D", root / "data", "-U", "postgres", "--pwfile", root / "pwfile",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
    port = _free_port()
    conf = root / "data" / "postgresql.conf"
    with open(conf, "a", encoding="utf-8") as fh:
        fh.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{root}'\n"
                 "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n"
                 "shared_buffers = 32MB\n")
    server = PostgresServer(root, port)
    server.start()
    return server


@pytest.fixture(scope="session")
def postgres_server():
    server = start_cluster()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
