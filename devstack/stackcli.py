"""The dev network's command line: `make run`, `make up`, `make down`, `make migrate`.

`python -m devstack.stack run|up|down|migrate` lands here (through `stack.main`). `run`
supervises a `Stack` in the foreground (restarting what dies, see `Supervisor`) and prints the
banner; `up` starts `run --detached` in the background, waits for `.invo/dev.env` and prints the
banner from it; `down` stops it by the pid files it left; `migrate` applies every service's
migrations to `INVO_DATABASE_URL` or the embedded server.

Secrets (the admin token, the demo SDK key) reach the terminal only, never a file but the 0600
ones under `.invo/`: `run --detached` writes its output to `logs/stack.log`, so it names dev.env
instead of printing them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from devstack import devservers
from devstack.stack import (
    DEMO_TENANT,
    READY_TIMEOUT_S,
    ROOT,
    STOP_TIMEOUT_S,
    CrashLoop,
    Stack,
    StackError,
    _write_private,
    default_home,
)
from services.common import logs, migrate
from services.common.config import SERVICES

WATCH_INTERVAL_S = 0.5
READY_PROBE_TIMEOUT_S = 0.5  # one readiness probe inside a watch round: it runs every 0.5 s


def _banner(
    dev: Mapping[str, str], *, logs_dir: pathlib.Path, simulator: bool, ach_simulator: bool, secrets_shown: bool
) -> str:
    """What `make run` / `make up` print, from dev.env's settings. Without `secrets_shown` (the
    output goes to a file) the SDK key and the admin token are named, not printed. `simulator` /
    `ach_simulator`: the card processor / the ACH provider is our simulator."""
    gateway = dev["INVO_GATEWAY_URL"]
    dev_env = logs_dir.parent / "dev.env"
    key = dev["INVO_DEMO_SDK_KEY"] if secrets_shown else f"INVO_DEMO_SDK_KEY in {dev_env}"
    token = dev["INVO_ADMIN_TOKEN"] if secrets_shown else f"INVO_ADMIN_TOKEN in {dev_env}"
    curl_key = key if secrets_shown else "$INVO_DEMO_SDK_KEY"
    lines = [
        "",
        "INVO Network is up.",
        f"  gateway        {gateway}   (OpenAPI: {gateway}/openapi.json)",
        f"  demo tenant    {dev['INVO_DEMO_TENANT_ID']} (sandbox, {DEMO_TENANT['currency_name']!r})",
        f"  demo SDK key   {key}",
        f"  admin token    {token}",
        f"  console        {gateway}/console/   (sign in with the admin token or an operator's credential)",
        "  operators' CLI .venv/bin/python -m invoctl --help   (INVO_URL, INVO_OPERATOR_KEY)",
        "",
        "Try:",
        f'  curl -H "X-Game-Secret-Key: {curl_key}" {gateway}/api/tenant',
        "  # a hosted checkout session: open its checkout_url in a browser (card 4242 4242 4242 4242)",
        f'  curl -H "X-Game-Secret-Key: {curl_key}" -H "Content-Type: application/json" {gateway}/api/checkout/sessions'
        ' -d \'{"player_email": "player@example.com", "usd_amount": "10.00",'
        f' "success_url": "{gateway}/healthz", "cancel_url": "{gateway}/healthz"}}\'',
        "",
        "gRPC services: " + ", ".join(f"{n} {dev[f'INVO_{n.upper()}_ADDR']}" for n in SERVICES),
        f"Card processor: {dev['INVO_PROCESSOR_API_BASE']}"
        + (" (the simulator; test cards such as pm_card_visa)" if simulator else ""),
        f"ACH provider:   {dev['INVO_ACH_API_BASE']}"
        + (
            " (the Modern Treasury simulator; account 123456789 completes, 111111110 fails, 10001 is returned R01)"
            if ach_simulator
            else ""
        ),
        f"Logs: {logs_dir}/<service>.log",
    ]
    return "\n".join(lines)


def _say(text: str, *, err: bool = False) -> None:
    """Print a line of the supervisor's own (redacted: under `make up` it lands in stack.log)."""
    print(logs.redact(text), file=sys.stderr if err else sys.stdout, flush=True)


# -- supervision ---------------------------------------------------------------------------------


@dataclasses.dataclass
class RestartPolicy:
    """Kubernetes' restart policy in small: a process that dies is restarted after a delay that
    starts at `initial_delay_s` and doubles to `max_delay_s`; one that ran `stable_after_s` before
    dying starts again from the initial delay; `max_deaths` deaths within `window_s` is a crash
    loop, which stops the network instead (a developer must look at it)."""

    initial_delay_s: float = 0.5
    max_delay_s: float = 30.0
    window_s: float = 60.0
    max_deaths: int = 5
    stable_after_s: float = 60.0
    next_delay_s: float = dataclasses.field(init=False, default=0.0)
    deaths: collections.deque[float] = dataclasses.field(init=False, default_factory=collections.deque)

    def __post_init__(self) -> None:
        self.next_delay_s = self.initial_delay_s

    def record_death(self, now_s: float, *, ran_s: float) -> float:
        """Record a death at monotonic `now_s` of a process that ran `ran_s`; the restart delay."""
        if ran_s >= self.stable_after_s:
            self.next_delay_s = self.initial_delay_s
        self.deaths.append(now_s)
        while self.deaths and self.deaths[0] <= now_s - self.window_s:
            self.deaths.popleft()
        # Bounded: only the deaths within the window are kept, and at most max_deaths of those.
        while len(self.deaths) > self.max_deaths:
            self.deaths.popleft()
        delay_s = self.next_delay_s
        self.next_delay_s = min(self.next_delay_s * 2, self.max_delay_s)
        return delay_s

    @property
    def crash_looping(self) -> bool:
        return len(self.deaths) >= self.max_deaths


class Supervisor:
    """The bookkeeping behind `Stack.watch_once`: per process and embedded server, its restart
    policy, when its pending restart is due, and since when its readiness is awaited."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.policies: dict[str, RestartPolicy] = {}
        self.restart_at_s: dict[str, float] = {}
        self.awaiting_ready_s: dict[str, float] = {}

    def forget(self, name: str) -> None:
        """`name` was stopped or restarted on purpose: nothing of it is pending any more."""
        self.restart_at_s.pop(name, None)
        self.awaiting_ready_s.pop(name, None)

    def watch_once(self) -> list[str]:
        now_s = time.monotonic()
        report: list[str] = []
        for name, proc in list(self.stack.procs.items()):
            if proc.poll() is not None and name not in self.restart_at_s:
                report += self._record_death(name, f"exit code {proc.returncode}", now_s)
        for name, server in self.stack.servers().items():
            if server.proc is not None and server.proc.poll() is not None and name not in self.restart_at_s:
                report += self._record_death(name, f"exit code {server.proc.returncode}", now_s)
        for name, due_s in sorted(self.restart_at_s.items(), key=lambda item: item[1]):
            if due_s <= now_s:
                del self.restart_at_s[name]
                report += self._restart(name)
        for name, since_s in list(self.awaiting_ready_s.items()):
            report += self._check_ready(name, since_s)
        return report

    def _record_death(self, name: str, how: str, now_s: float) -> list[str]:
        policy = self.policies.setdefault(name, RestartPolicy())
        ran_s = now_s - self.stack.started_at_s.get(name, now_s)
        delay_s = policy.record_death(now_s, ran_s=ran_s)
        self.awaiting_ready_s.pop(name, None)
        tail = self.stack.log_tail(name)
        if policy.crash_looping:
            raise CrashLoop(name, deaths=len(policy.deaths), window_s=policy.window_s, log_tail=tail)
        self.restart_at_s[name] = now_s + delay_s
        head = (
            f"{name} died ({how}) after running {ran_s:.1f} s; restarting it in {delay_s:g} s"
            f" (death {len(policy.deaths)} of {policy.max_deaths} allowed within {policy.window_s:g} s)."
            f" Last lines of {self.stack.logs / name}.log:"
        )
        return [head, *("  | " + line for line in tail.splitlines())]

    def _restart(self, name: str) -> list[str]:
        if name not in self.stack.servers():
            try:
                pid = self.stack.spawn(name)
            except (OSError, subprocess.SubprocessError) as exc:  # fork failed, say: one more death
                return [
                    f"{name} could not be started: {exc}",
                    *self._record_death(name, "failed to start", time.monotonic()),
                ]
            self.awaiting_ready_s[name] = time.monotonic()
            return [f"{name} restarted (pid {pid})."]
        # A server blocks this round until it answers (seconds: crash recovery); the services
        # reconnect to it on their own, or die and are restarted.
        try:
            self.stack.restart_server(name)
        except devservers.ServerError as exc:
            return [str(exc), *self._record_death(name, "failed to start", time.monotonic())]
        server = self.stack.servers()[name]
        pid = server.proc.pid if server.proc is not None else 0
        return [f"{name} restarted on port {server.port} (pid {pid}) and answers."]

    def _check_ready(self, name: str, since_s: float) -> list[str]:
        proc = self.stack.procs.get(name)
        if proc is None or proc.poll() is not None:
            self.awaiting_ready_s.pop(name, None)
            return []  # stopped on purpose, or dead: the next round reports it
        if self.stack.is_ready(name, timeout_s=READY_PROBE_TIMEOUT_S):
            del self.awaiting_ready_s[name]
            return [f"{name} is serving again ({time.monotonic() - since_s:.1f} s after its restart)."]
        if time.monotonic() - since_s > READY_TIMEOUT_S:
            # Kubernetes' liveness probe in small: one that never serves is killed, so it counts
            # as a death (and towards a crash loop) instead of hanging the network silently.
            del self.awaiting_ready_s[name]
            devservers.stop_process(proc, sig=signal.SIGKILL, timeout_s=STOP_TIMEOUT_S)
            return [f"{name} did not serve within {READY_TIMEOUT_S:g} s of its restart; killed it."]
        return []


# -- the commands --------------------------------------------------------------------------------


def _read_env_file(path: pathlib.Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def _pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_ours(pid: int, home: pathlib.Path) -> bool:
    """Does `pid` still belong to this network? (A pid from a file may have been reused.)"""
    proc = pathlib.Path(f"/proc/{pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        environ = (proc / "environ").read_bytes().split(b"\0")
        cwd = os.readlink(proc / "cwd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if str(home) in cmdline or f"INVO_HOME={home}".encode() in environ:
        return True
    return cwd == str(ROOT) and "services." in cmdline


def _running_pid(home: pathlib.Path) -> int | None:
    path = home / "stack.pid"
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
    except ValueError:
        return None
    return pid if _pid_alive(pid) and _is_ours(pid, home) else None


def cmd_run(home: pathlib.Path, *, detached: bool) -> int:
    if _running_pid(home) is not None:
        print(
            f"INVO Network is already running (see {home / 'dev.env'}); `make down` stops it.",
            file=sys.stderr,
        )
        return 1
    stop = {"requested": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    devservers.private_dir(home)
    stack = Stack(home)
    _write_private(home / "stack.pid", str(os.getpid()))
    code = 0
    started = False
    try:
        _say("Starting PostgreSQL, NATS JetStream and the INVO services...")
        stack.start()
        started = True
        _write_private(home / "pids.json", json.dumps(stack.pids()))
        dev = stack.dev_env()
        # Detached, stdout is logs/stack.log: the secrets stay in dev.env, which `up` prints.
        banner = _banner(
            dev,
            logs_dir=stack.logs,
            simulator=stack.use_simulator,
            ach_simulator=stack.use_ach_simulator,
            secrets_shown=not detached,
        )
        print(banner, flush=True)
        # Last, and atomically: `make up` takes dev.env appearing as "the network is ready".
        _write_private(home / "dev.env", "".join(f"{k}={v}\n" for k, v in dev.items()))
        if not detached:
            _say("\nCtrl-C stops everything; a process that dies is restarted.")
        while not stop["requested"]:
            report = stack.watch_once()
            if report:
                _say("\n".join(report), err=True)
                _write_private(home / "pids.json", json.dumps(stack.pids()))  # `make down` kills by it
            time.sleep(WATCH_INTERVAL_S)
    except CrashLoop as exc:
        _say(f"\n{exc}", err=True)
        code = 1
    except (StackError, devservers.ServerError, OSError) as exc:
        _say(f"\nINVO Network {'stopped on an error' if started else 'failed to start'}: {exc}", err=True)
        code = 1
    finally:
        _say("Stopping...")
        stack.stop()
        for name in ("dev.env", "stack.pid", "pids.json"):
            with contextlib.suppress(FileNotFoundError):
                (home / name).unlink()
        _say("Stopped.")
    return code


def cmd_up(home: pathlib.Path) -> int:
    if _running_pid(home) is not None:
        print((home / "dev.env").read_text() if (home / "dev.env").exists() else "already starting")
        return 0
    devservers.private_dir(home)
    devservers.private_dir(home / "logs")
    # Left behind by a supervisor that was killed: they describe a network that is gone.
    for stale in ("dev.env", "pids.json", "stack.pid"):
        with contextlib.suppress(FileNotFoundError):
            (home / stale).unlink()
    log_path = home / "logs" / "stack.log"
    with devservers.open_private_log(log_path) as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.stack", "run", "--detached"],
            cwd=ROOT,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives `make up`
            env={**os.environ, "INVO_HOME": str(home)},
        )
    deadline = time.monotonic() + READY_TIMEOUT_S + 60
    while time.monotonic() < deadline:
        if (home / "dev.env").exists():
            # The banner with the secrets, to the terminal only: from dev.env (0600), not the log.
            dev = _read_env_file(home / "dev.env")
            # As Stack decides it: a simulator unless a real provider is configured.
            simulator = not os.environ.get("INVO_PROCESSOR_API_BASE")
            ach_simulator = not os.environ.get("INVO_ACH_API_BASE")
            banner = _banner(
                dev, logs_dir=home / "logs", simulator=simulator, ach_simulator=ach_simulator, secrets_shown=True
            )
            print(banner.strip())
            print(f"\nRunning in the background; settings in {home / 'dev.env'}; `make down` stops it.")
            return 0
        if proc.poll() is not None:
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
            return 1
        time.sleep(0.2)
    print("INVO Network did not come up in time; see .invo/logs/stack.log", file=sys.stderr)
    devservers.stop_process(proc)
    return 1


def cmd_down(home: pathlib.Path) -> int:
    pid = _running_pid(home)
    if pid is None:
        print("INVO Network is not running.")
        return 0
    children: list[int] = []
    with contextlib.suppress(FileNotFoundError, ValueError):
        children = json.loads((home / "pids.json").read_text())
    children = [c for c in children if _pid_alive(c) and _is_ours(c, home)]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_pid_alive(p) for p in [pid, *children]):
        time.sleep(0.1)
    left = [p for p in [pid, *children] if _pid_alive(p)]
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    print("INVO Network stopped." if not left else f"killed stragglers: {left}")
    return 0


def cmd_migrate(home: pathlib.Path) -> int:
    env = dict(os.environ)
    stack: Stack | None = None
    if not env.get("INVO_DATABASE_URL"):
        if (home / "dev.env").exists() and _running_pid(home) is not None:
            env["INVO_DATABASE_URL"] = _read_env_file(home / "dev.env").get("INVO_DATABASE_URL", "")
        else:
            stack = Stack(home)
            devservers.private_dir(home)
            devservers.private_dir(stack.logs)
            env["INVO_DATABASE_URL"] = stack._database_url(stack._secrets()["pg_password"])
    try:
        applied = migrate.run(env)
    finally:
        if stack is not None:
            stack.stop()
    print(migrate.report(applied))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.stack")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="start everything in the foreground")
    run.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("up", help="start everything in the background")
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("migrate", help="apply every service's migrations")
    args = parser.parse_args(argv)
    home = default_home()
    if args.cmd == "run":
        return cmd_run(home, detached=args.detached)
    if args.cmd == "up":
        return cmd_up(home)
    if args.cmd == "down":
        return cmd_down(home)
    return cmd_migrate(home)
