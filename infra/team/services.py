"""The team services on one machine: a Prefect server and an MLflow tracking server, each on its own PostgreSQL
database (created here), MLflow artifacts through the tracking server's artifact proxy, both bound to 127.0.0.1.

    python -m infra.team.services up                 # databases gsco_prefect, gsco_mlflow; ports 4200 and 5000
    source ~/.cache/gsco/team/team.env               # PREFECT_API_URL, GSCO_TRACKING_URI
    python -m infra.team.services down [--drop]      # stop both servers (--drop: and drop their databases)

`--pg` is the admin connection that creates the databases (default postgresql://postgres@127.0.0.1:5432/postgres);
the servers connect as the same role. A password is read by libpq/asyncpg from PGPASSWORD, never put in a URL, so it
appears in no process list or log. infra/team/docker-compose.yml runs the same servers with the same flags
(tests/test_team_services.py holds the two in step).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
STATE = Path.home() / ".cache" / "gsco" / "team"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service that cannot be set up or started; the message is one line naming what and why."""


def db_url(admin: str, database: str, driver: str | None = None) -> str:
    """The admin URL pointed at `database` (scheme postgresql+<driver> when a driver is named); refuses a password."""
    parts = urlsplit(admin)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ServiceError(f"--pg {admin!r}: expected postgresql://user@host:port/database")
    if parts.password:
        raise ServiceError("--pg: put the password in PGPASSWORD, not in the URL (URLs reach process lists and logs)")
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return urlunsplit((scheme, parts.netloc, f"/{database}", "", ""))


def _connect(admin: str):
    db_url(admin, "postgres")   # refuses a malformed URL or one holding a password, before anything connects
    try:
        import psycopg2
    except ImportError:
        raise ServiceError("psycopg2 is not installed: the MLflow server needs it for postgresql:// stores "
                           "(pyproject.toml pins psycopg2-binary)") from None
    try:
        conn = psycopg2.connect(admin)
    except psycopg2.OperationalError as e:
        raise ServiceError(f"PostgreSQL at {admin} (--pg): {str(e).strip().splitlines()[0]}") from None
    conn.autocommit = True   # CREATE/DROP DATABASE run outside a transaction
    return conn


def create_database(admin: str, name: str) -> bool:
    """Create database `name` owned by the admin role unless it exists; True when created."""
    from psycopg2 import sql

    conn = _connect(admin)   # not `with conn`: psycopg2 opens a transaction there, CREATE DATABASE refuses one
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone():
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    finally:
        conn.close()


def drop_database(admin: str, name: str) -> None:
    """Drop database `name` (its open connections closed first); nothing when it does not exist."""
    from psycopg2 import sql

    conn = _connect(admin)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:`port` can be bound now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the servers bind: TIME_WAIT does not count
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# The servers' flags, shared with docker-compose.yml (which binds 0.0.0.0 inside its network, published on 127.0.0.1).
def mlflow_server_args(port: int, artifacts: str, workers: int, host: str = HOST) -> list[str]:
    """`mlflow server` flags: artifacts proxied by the server (clients never write the store directly); the
    backend store URI comes from MLFLOW_BACKEND_STORE_URI."""
    return ["server", "--host", host, "--port", str(port), "--serve-artifacts", "--artifacts-destination", artifacts,
            "--workers", str(workers)]


def prefect_server_args(port: int, host: str = HOST) -> list[str]:
    """`prefect server start` flags; the database comes from PREFECT_API_DATABASE_CONNECTION_URL."""
    return ["server", "start", "--host", host, "--port", str(port)]


@dataclass
class TeamConfig:
    """Where the services keep their databases, ports, logs and artifacts."""
    pg: str = PG_ADMIN
    prefect_db: str = "gsco_prefect"
    mlflow_db: str = "gsco_mlflow"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    state: Path = STATE
    mlflow_workers: int = 2
    artifacts: Path | None = None          # default <state>/mlartifacts

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.artifacts or self.state / "mlartifacts")

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise ServiceError(f"{what} exited with {proc.returncode} before it was healthy ({log}): "
                               f"{tail[0] if tail else 'no output'}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServiceError(f"{what} not healthy at {url} after {timeout:.0f}s (log: {log})")


def _spawn(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:   # its own session: stopping it stops its worker processes too
        return subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop_process(pid: int, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Signal the process group `pid` leads and wait for it to end (SIGKILL after `timeout`)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:   # our own child: reap it, or its zombie keeps the group alive
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class TeamServices:
    """Both servers of one TeamConfig, started and stopped from Python (the CLI below, the tests, perf scripts)."""
    cfg: TeamConfig
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_TRACKING_URI"))}
        return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def create_databases(self) -> None:
        for name in (self.cfg.prefect_db, self.cfg.mlflow_db):
            create_database(self.cfg.pg, name)

    def drop_databases(self) -> None:
        for name in (self.cfg.prefect_db, self.cfg.mlflow_db):
            drop_database(self.cfg.pg, name)

    def start_mlflow(self, timeout: float = 120) -> None:
        cfg = self.cfg
        if not port_free(cfg.mlflow_port):
            raise ServiceError(f"port {cfg.mlflow_port} on {HOST} is in use (--mlflow-port)")
        cfg.artifacts_dir.mkdir(parents=True, exist_ok=True)
        # SQLAlchemy 2.1 reads a bare postgresql:// with psycopg 3: MLflow's store is tested on psycopg2
        env = {**self._env(), "MLFLOW_BACKEND_STORE_URI": db_url(cfg.pg, cfg.mlflow_db, "psycopg2")}
        log = cfg.state / "mlflow.log"
        argv = [str(BIN / "mlflow"), *mlflow_server_args(cfg.mlflow_port, str(cfg.artifacts_dir), cfg.mlflow_workers)]
        self.procs["mlflow"] = proc = _spawn(argv, env, log)
        _wait_healthy(f"{cfg.mlflow_uri}/health", proc, log, "the MLflow server", timeout)

    def start_prefect(self, timeout: float = 180) -> None:
        cfg = self.cfg
        if not port_free(cfg.prefect_port):
            raise ServiceError(f"port {cfg.prefect_port} on {HOST} is in use (--prefect-port)")
        home = cfg.state / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        env = {**self._env(), "PREFECT_HOME": str(home),
               "PREFECT_API_DATABASE_CONNECTION_URL": db_url(cfg.pg, cfg.prefect_db, "asyncpg")}
        log = cfg.state / "prefect.log"
        self.procs["prefect"] = proc = _spawn([str(BIN / "prefect"), *prefect_server_args(cfg.prefect_port)], env, log)
        _wait_healthy(f"{cfg.prefect_api_url}/health", proc, log, "the Prefect server", timeout)

    def kill_mlflow(self) -> None:
        """kill -9 the MLflow server and its workers (as a crash would end it)."""
        proc = self.procs.pop("mlflow")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def start(self) -> "TeamServices":
        self.cfg.state.mkdir(parents=True, exist_ok=True)
        self.create_databases()
        try:
            self.start_mlflow()
            self.start_prefect()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            stop_process(proc.pid)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "TeamServices":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def temporary_team(state: Path, pg: str = PG_ADMIN, mlflow_workers: int = 1):
    """TeamServices on databases of their own (unique names, dropped afterwards) and free ports: tests, perf."""
    tag = f"gsco_tmp_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    ports = {free_port()}
    while len(ports) < 2:
        ports.add(free_port())
    prefect_port, mlflow_port = sorted(ports)
    cfg = TeamConfig(pg=pg, prefect_db=f"{tag}_prefect", mlflow_db=f"{tag}_mlflow", prefect_port=prefect_port,
                     mlflow_port=mlflow_port, state=Path(state), mlflow_workers=mlflow_workers)
    svc = TeamServices(cfg)
    try:
        yield svc.start()
    finally:
        svc.stop()
        svc.drop_databases()


def _up(cfg: TeamConfig) -> None:
    svc = TeamServices(cfg).start()
    info = {name: {"pid": p.pid} for name, p in svc.procs.items()}
    info["prefect"].update(url=cfg.prefect_api_url, database=cfg.prefect_db, log=str(cfg.state / "prefect.log"))
    info["mlflow"].update(url=cfg.mlflow_uri, database=cfg.mlflow_db, artifacts=str(cfg.artifacts_dir),
                          log=str(cfg.state / "mlflow.log"))
    info["pg"] = cfg.pg
    (cfg.state / "services.json").write_text(json.dumps(info, indent=2))
    (cfg.state / "team.env").write_text(f"export PREFECT_API_URL={cfg.prefect_api_url}\n"
                                        f"export GSCO_TRACKING_URI={cfg.mlflow_uri}\n")
    print(f"Prefect server  {cfg.prefect_api_url}   (database {cfg.prefect_db}, pid {info['prefect']['pid']})")
    print(f"MLflow server   {cfg.mlflow_uri}   (database {cfg.mlflow_db}, artifacts {cfg.artifacts_dir}, "
          f"pid {info['mlflow']['pid']})")
    print(f"environment     source {cfg.state / 'team.env'}")


def _down(state: Path, drop: bool) -> None:
    path = state / "services.json"
    if not path.exists():
        raise ServiceError(f"{path}: no services started from this state folder (--state)")
    info = json.loads(path.read_text())
    for name in ("prefect", "mlflow"):
        stop_process(info[name]["pid"])
        print(f"stopped {name} (pid {info[name]['pid']})")
    if drop:
        for name in ("prefect", "mlflow"):
            drop_database(info["pg"], info[name]["database"])
            print(f"dropped database {info[name]['database']}")
    path.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.team.services", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create the databases (if missing) and start both servers")
    up.add_argument("--pg", default=PG_ADMIN, help=f"admin connection (default {PG_ADMIN})")
    up.add_argument("--prefect-db", default="gsco_prefect")
    up.add_argument("--mlflow-db", default="gsco_mlflow")
    up.add_argument("--prefect-port", type=int, default=4200)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.add_argument("--mlflow-workers", type=int, default=2)
    up.add_argument("--artifacts", type=Path, default=None, help="artifact store behind the proxy "
                    "(default <state>/mlartifacts)")
    down = sub.add_parser("down", help="stop both servers")
    down.add_argument("--drop", action="store_true", help="also drop both databases (every run record is lost)")
    for p in (up, down):
        p.add_argument("--state", type=Path, default=STATE, help=f"logs, pids, env file (default {STATE})")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "up":
            _up(TeamConfig(pg=a.pg, prefect_db=a.prefect_db, mlflow_db=a.mlflow_db, prefect_port=a.prefect_port,
                           mlflow_port=a.mlflow_port, state=a.state.expanduser().resolve(),
                           mlflow_workers=a.mlflow_workers, artifacts=a.artifacts))
        else:
            _down(a.state.expanduser().resolve(), a.drop)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
