"""The whole network on one machine: the `Stack` that `make run`, `make up` and the tests start.

Starts real PostgreSQL and NATS JetStream from their PyPI wheels (unless `INVO_DATABASE_URL` /
`INVO_NATS_URL` name existing ones), every service as its own process on free loopback ports,
creates a demo sandbox tenant on first run, and stops everything on Ctrl-C or SIGTERM. Under
`make run`, `watch_once` restarts whatever dies (processes, PostgreSQL, NATS) as Kubernetes would.
Data, logs and generated development secrets live under `.invo/` (or `INVO_HOME`), private to the
user (0700 directories, 0600 files). The tests start the network through this same class, once
per test session, and never supervise it.

The command line (`python -m devstack.stack run|up|down|migrate`, what the Makefile runs)
is in `devstack.stackcli`; `main` here hands over to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

import asyncpg

from devstack import devsecrets, devservers, natsserver, replicas, simulators
from devstack.devsecrets import write_private as _write_private
from services.common import logs
from services.common.config import SERVICES, Settings
from services.common.service import migrate_all

if TYPE_CHECKING:
    from devstack.stackcli import Supervisor

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROCESSES = (*simulators.LISTEN, *SERVICES, "gateway")
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0  # above every process's own bound (its grace, its steps' bounds, runtime.HARD_STOP_S)
LOG_TAIL_BYTES_MAX = 64 * 1024
# A process that dies of a signal (SIGSEGV in a C extension) writes every thread's traceback into
# its log first; the image sets the same (Dockerfile).
PYTHON_ENV = {"PYTHONFAULTHANDLER": "1"}
DEMO_TENANT = {"name": "Demo Game", "currency_name": "Demo Coins", "environment": "sandbox"}


class StackError(Exception):
    pass


class CrashLoop(StackError):
    """A process died `deaths` times within `window_s`: restarting it again would hide the fault."""

    def __init__(self, name: str, *, deaths: int, window_s: float, log_tail: str) -> None:
        self.name = name
        self.deaths = deaths
        self.log_tail = log_tail
        tail = "\n".join("  | " + line for line in log_tail.splitlines())
        super().__init__(
            f"{name} is crash-looping ({deaths} deaths within {window_s:g} s); stopping the network."
            f" Last lines of its log:\n{tail}"
        )


def default_home() -> pathlib.Path:
    return pathlib.Path(os.environ.get("INVO_HOME") or ROOT / ".invo").resolve()


class Stack:
    def __init__(
        self,
        home: pathlib.Path,
        *,
        env: Mapping[str, str] | None = None,
        durable: bool = True,
        database_name: str = "invo",
        nats_namespace: str = "",
        extra_env: Mapping[str, str] | None = None,
        process_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """`extra_env` is applied to every process (and shapes the ports chosen at start);
        `process_env[name]` only to the process `name`, on top of the shared env, each time it is
        spawned: a fault test points ONE service at a proxy in front of PostgreSQL or NATS."""
        self.home = home
        self.base_env = dict(os.environ if env is None else env)
        self.durable = durable
        self.database_name = database_name
        self.nats_namespace = nats_namespace
        self.extra_env = dict(extra_env or {})
        self.process_env: dict[str, dict[str, str]] = {}
        for name, overrides in (process_env or {}).items():
            self.set_process_env(name, overrides)
        self.logs = home / "logs"
        self.postgres: devservers.Postgres | None = None
        self.nats: natsserver.Nats | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env: dict[str, str] = {}
        self.gateway_url = ""
        self.gateway_urls: list[str] = []  # every gateway replica's, the first one's first
        self.replica_count = 1
        self.replica_env: dict[str, dict[str, str]] = {}  # each replica's own listen address or port
        self.demo: dict[str, str] = {}
        self.simulators: list[str] = list(simulators.LISTEN)  # those that run (services/common/simulators.py)
        self.use_simulator = True  # the card processor's
        self.use_ach_simulator = True
        self._spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="stack-spawner")
        # When each process or server was last started (monotonic), for the supervision.
        self.started_at_s: dict[str, float] = {}
        self._supervisor: Supervisor | None = None

    # -- secrets and servers -------------------------------------------------------------

    def _secrets(self) -> dict[str, str]:
        return devsecrets.load_or_make(self.home)

    def _database_url(self, pg_password: str) -> str:
        external = self.base_env.get("INVO_DATABASE_URL", "")
        if external:
            server_url = external
        else:
            self.postgres = devservers.Postgres(
                self.home / "pg",
                password=pg_password,
                log_path=self.logs / "postgres.log",
                durable=self.durable,
            )
            server_url = self.postgres.start()
            self.started_at_s["postgres"] = time.monotonic()
        parsed = urllib.parse.urlsplit(server_url)
        if external and self.database_name == "invo":
            return external  # use the named database as it is
        asyncio.run(self._create_database(server_url, self.database_name))
        return urllib.parse.urlunsplit(parsed._replace(path="/" + self.database_name))

    @staticmethod
    async def _create_database(server_url: str, name: str) -> None:
        conn = await asyncpg.connect(server_url, timeout=10.0)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    def _nats_url(self) -> str:
        external = self.base_env.get("INVO_NATS_URL", "")
        if external:
            return external
        self.nats = natsserver.Nats(self.home / "nats", log_path=self.logs / "nats.log")
        url = self.nats.start()
        self.started_at_s["nats"] = time.monotonic()
        return url

    # -- processes ------------------------------------------------------------------------

    def start(self) -> None:
        devservers.private_dir(self.home)
        devservers.private_dir(self.logs)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        sec = self._secrets()
        # extra_env first too: a port or setting given there must shape the choices below.
        env = {**self.base_env, **self.extra_env}
        env["INVO_HOME"] = str(self.home)
        env.setdefault("INVO_ENVIRONMENT", "development")
        env.setdefault("INVO_ADMIN_TOKEN", sec["admin_token"])
        env.setdefault("INVO_KEY_PEPPER", sec["key_pepper"])
        env.setdefault("INVO_DATA_KEYS", sec["data_keys"])
        env.setdefault("INVO_IDENTITY_KEY", sec["identity_key"])
        env.setdefault("INVO_TRANSFER_CODE_KEY", sec["transfer_code_key"])
        env.setdefault("INVO_CHECKOUT_KEYS", sec["checkout_keys"])
        env.setdefault("INVO_CONSOLE_KEYS", sec["console_keys"])
        env["INVO_DATABASE_URL"] = self._database_url(sec["pg_password"])
        env["INVO_NATS_URL"] = self._nats_url()
        if self.nats_namespace:
            env["INVO_NATS_STREAM"] = f"INVO_{self.nats_namespace.upper()}"
            env["INVO_NATS_SUBJECT_PREFIX"] = f"invo_{self.nats_namespace.lower()}.events"
        wanted = int(env.get("INVO_GATEWAY_PORT") or 8080)
        port = wanted if devservers.port_is_free(wanted) else devservers.free_port()
        env["INVO_GATEWAY_PORT"] = str(port)
        env["INVO_GATEWAY_HOST"] = "127.0.0.1"
        # Every gRPC service and the gateway as INVO_REPLICAS processes each (services/common/replicas.py).
        self.replica_count = replicas.count_of(env)
        self.replica_env, self.gateway_urls = replicas.plan(
            env, SERVICES, count=self.replica_count, gateway_port=port, free_port=devservers.free_port
        )
        # The card processor and the ACH provider: their simulators, unless real ones are configured.
        self.simulators = simulators.configure(env, sec, gateway_port=port)
        self.use_simulator = "processor_sim" in self.simulators
        self.use_ach_simulator = "ach_sim" in self.simulators
        env.update(self.extra_env)
        env.pop("INVO_GRPC_LISTEN", None)
        self.env = env
        self.gateway_url = self.gateway_urls[0]
        # Migrate once up front so a bad migration is one clear error, not six dying services.
        asyncio.run(migrate_all(Settings.from_env(env)))
        for name in self.process_names():
            self._spawn(name)
        self._wait_ready(self.process_names())
        self._ensure_demo_tenant()

    def process_names(self) -> list[str]:
        """Every process of this stack, replicas included (`ledger`, `ledger@2`, ...)."""
        out: list[str] = []
        for name in PROCESSES:
            if name in simulators.LISTEN:
                out += [name] if name in self.simulators else []
            else:
                out += replicas.names(name, self.replica_count)
        return out

    def set_process_env(self, name: str, overrides: Mapping[str, str]) -> None:
        """Replace the overrides for process `name` (an empty mapping removes them). They apply
        from its next spawn: `restart(name)` or `start_process(name)` after this call."""
        if replicas.module_of(name) not in PROCESSES:
            raise StackError(f"no process named {name!r}; the processes are {', '.join(PROCESSES)}")
        for key, value in overrides.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise StackError(f"process_env[{name!r}] must map str to str, got {key!r}: {value!r}")
        self.process_env[name] = dict(overrides)

    def env_for(self, name: str) -> dict[str, str]:
        """The environment process `name` is spawned with: the shared `env`, then its overrides."""
        return {**PYTHON_ENV, **self.env, **self.replica_env.get(name, {}), **self.process_env.get(name, {})}

    def _spawn(self, name: str) -> None:
        # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits: every service is
        # started from the Stack's own long-lived thread, so restart() from any thread is safe.
        self.procs[name] = self._spawner.submit(self._popen, name).result()
        self.started_at_s[name] = time.monotonic()

    def _popen(self, name: str) -> subprocess.Popen[bytes]:
        with devservers.open_private_log(self.logs / f"{name}.log") as logf:
            return subprocess.Popen(  # noqa: S603 - our own interpreter and module
                devservers.with_parent([sys.executable, "-m", _module(name)]),
                cwd=ROOT,
                env=self.env_for(name),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def restart(self, name: str, *, sig: int = signal.SIGTERM) -> None:
        """Stop one process (SIGKILL simulates a crash) and start it again; wait until it serves."""
        proc = self.procs[name]
        self._forget_pending(name)
        devservers.stop_process(proc, sig=sig, timeout_s=STOP_TIMEOUT_S)
        self._spawn(name)
        self._wait_ready([name])

    def stop_process(self, name: str) -> None:
        """Stop one process and keep it stopped (an outage of it) until `start_process(name)`.
        A process stopped this way is not reported by `dead()`, nor restarted by `watch_once()`."""
        proc = self.procs.pop(name)
        self._forget_pending(name)
        devservers.stop_process(proc, timeout_s=STOP_TIMEOUT_S)

    def start_process(self, name: str) -> None:
        """Start a process that `stop_process` stopped; wait until it serves."""
        if name in self.procs:
            raise StackError(f"{name} is already running")
        self._spawn(name)
        self._wait_ready([name])

    def is_ready(self, name: str, *, timeout_s: float) -> bool:
        """Does process `name` serve: its gRPC health, the gateway's /readyz, a simulator's port."""
        if replicas.module_of(name) == "gateway":
            port = self.env_for(name)["INVO_GATEWAY_PORT"]
            try:
                status, _ = devservers.http_json("GET", f"http://127.0.0.1:{port}/readyz", timeout_s=timeout_s)
            except (OSError, ValueError, http.client.HTTPException):  # a gateway dying mid-answer, too
                return False
            return status == 200
        if name in simulators.LISTEN:
            return not devservers.port_is_free(int(self.env[simulators.LISTEN[name]].rpartition(":")[2]))
        return devservers.grpc_serving(self.env_for(name)["INVO_GRPC_LISTEN"], timeout_s)

    def _wait_ready(self, names: tuple[str, ...] | list[str] = PROCESSES) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = list(names)
        while pending:
            self.raise_if_dead()
            name = pending[0]
            ok = self.is_ready(name, timeout_s=5.0 if replicas.module_of(name) == "gateway" else 2.0)
            if ok:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not become ready in {READY_TIMEOUT_S}s; see {self.logs / name}.log")
            time.sleep(0.1)

    def dead(self) -> list[tuple[str, int]]:
        return [(n, p.returncode) for n, p in self.procs.items() if p.poll() is not None]

    def raise_if_dead(self) -> None:
        dead = self.dead()
        if dead:
            name, code = dead[0]
            raise StackError(f"service {name} died (exit code {code}):\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last `lines` lines of logs/<name>.log (read from its last 64 KB: logs grow),
        redacted: the tail is printed, and `make up` prints into a file."""
        path = self.logs / f"{name}.log"
        try:
            with open(path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES_MAX))
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return logs.redact("\n".join(text.splitlines()[-lines:]))

    # -- supervision: `make run` restarts what dies, as Kubernetes would ---------------------

    def watch_once(self) -> list[str]:
        """One round of supervision; `make run` calls it every 0.5 s (the tests' session never
        does, so a process a test stops or kills stays as the test left it).

        A process or embedded server that died is reported with the end of its log and
        restarted after its backoff; the wait is a due time checked on later rounds, never a
        sleep here. A restarted process is reported again once it serves. Raises `CrashLoop`
        when one dies too often. Returns the report, one line each. The bookkeeping is
        `stackcli.Supervisor`'s. Not thread-safe with `restart`/`stop_process`: one thread."""
        if self._supervisor is None:
            from devstack import stackcli  # here, not at the top: stackcli imports this module

            self._supervisor = stackcli.Supervisor(self)
        return self._supervisor.watch_once()

    def spawn(self, name: str) -> int:
        """Start process `name` again without waiting for it to serve; its pid."""
        self._spawn(name)
        return self.procs[name].pid

    def servers(self) -> dict[str, devservers.Postgres | natsserver.Nats]:
        """The embedded servers this stack started (none for `INVO_DATABASE_URL` / `INVO_NATS_URL`)."""
        found: dict[str, devservers.Postgres | natsserver.Nats] = {}
        if self.postgres is not None:
            found["postgres"] = self.postgres
        if self.nats is not None:
            found["nats"] = self.nats
        return found

    def restart_server(self, name: str) -> None:
        """Start the embedded server `name` that died again, on the same port and data dir (every
        URL handed out stays valid), from the spawner thread as the processes (see `_spawn`)."""
        server = self.servers()[name]
        self.started_at_s[name] = time.monotonic()
        try:
            self._spawner.submit(server.restart).result()
        except (devservers.ServerError, OSError, subprocess.SubprocessError) as exc:
            # One that started but never answered is killed: the next attempt needs its port.
            if server.proc is not None and server.proc.poll() is None:
                devservers.stop_process(server.proc, sig=signal.SIGKILL, timeout_s=STOP_TIMEOUT_S)
            raise devservers.ServerError(f"{name} did not restart: {exc}") from exc

    def _forget_pending(self, name: str) -> None:
        if self._supervisor is not None:
            self._supervisor.forget(name)

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env['INVO_ADMIN_TOKEN']}"}

    def _ensure_demo_tenant(self) -> None:
        path = self.home / "demo.json"
        if path.exists():
            demo = json.loads(path.read_text())
            status, _ = devservers.http_json(
                "GET", self.gateway_url + "/api/tenant", headers={"X-Game-Secret-Key": demo["sdk_key"]}
            )
            if status == 200:
                self.demo = demo
                return
        status, body = devservers.http_json(
            "POST", self.gateway_url + "/admin/tenants", headers=self.admin_headers(), body=DEMO_TENANT
        )
        if status != 201:
            raise StackError(f"could not create the demo tenant: {status} {body}")
        self.demo = {"tenant_id": body["tenant_id"], "sdk_key": body["sdk_key"]}
        _write_private(path, json.dumps(self.demo, indent=2))

    def dev_env(self) -> dict[str, str]:
        out = {
            "INVO_GATEWAY_URL": self.gateway_url,
            "INVO_GATEWAY_URLS": ",".join(self.gateway_urls),
            "INVO_ADMIN_TOKEN": self.env["INVO_ADMIN_TOKEN"],
            "INVO_DEMO_SDK_KEY": self.demo.get("sdk_key", ""),
            "INVO_DEMO_TENANT_ID": self.demo.get("tenant_id", ""),
            "INVO_DATABASE_URL": self.env["INVO_DATABASE_URL"],
            "INVO_NATS_URL": self.env["INVO_NATS_URL"],
        }
        for name in SERVICES:
            key = f"INVO_{name.upper()}_ADDR"
            out[key] = self.env[key]
        out["INVO_METRICS_URLS"] = ",".join(f"{k}={v}" for k, v in replicas.metrics_urls(self.replica_env).items())
        out.update(simulators.dev_env(self.env, self.simulators))
        return out

    def pids(self) -> list[int]:
        found = [p.pid for p in self.procs.values() if p.poll() is None]
        for server in (self.postgres, self.nats):
            if server is not None and server.proc is not None and server.proc.poll() is None:
                found.append(server.proc.pid)
        return found

    def stop(self) -> None:
        self._supervisor = None  # a stopped stack has nothing pending
        # The gateways first so no new work arrives, then the services together, then the servers.
        for name, proc in self.procs.items():
            if replicas.module_of(name) == "gateway":
                devservers.stop_process(proc, timeout_s=STOP_TIMEOUT_S)
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            devservers.stop_process(proc, timeout_s=STOP_TIMEOUT_S)
        self.procs.clear()
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()


def _module(name: str) -> str:
    """The module a process runs: a simulator from this package, a service from the runtime one."""
    module = replicas.module_of(name)
    return f"devstack.{module}" if module in simulators.LISTEN else f"services.{module}"


def main(argv: list[str] | None = None) -> int:
    """`python -m devstack.stack run|up|down|migrate`: see `devstack.stackcli`."""
    from devstack import stackcli  # here, not at the top: stackcli imports this module

    return stackcli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
