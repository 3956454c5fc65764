"""Replicas in the local stack: N processes of each gRPC service and of the gateway
(`INVO_REPLICAS`), reached as Kubernetes reaches them.

Each replica listens on a port of its own (`INVO_GRPC_LISTEN`, or `INVO_GATEWAY_PORT` for a gateway),
and a service's address is the list of all of them (`INVO_LEDGER_ADDR=127.0.0.1:5001,127.0.0.1:5002`):
every client's channel spreads its calls over the list with gRPC's `round_robin` policy
(`grpcutil.channel`), as it spreads them over the addresses a headless Service resolves to in
Kubernetes, and skips a replica that is down. The first replica keeps the service's own name
(`ledger`); the others are `ledger@2`, `ledger@3`, ... (their logs `logs/ledger@2.log`), so a stack
of one replica is the same as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

SEPARATOR = "@"
REPLICAS_MAX = 8


def names(name: str, count: int) -> list[str]:
    """The process names of `count` replicas of `name`."""
    return [name, *(f"{name}{SEPARATOR}{i}" for i in range(2, count + 1))]


def module_of(process: str) -> str:
    """The program a process runs: `ledger@2` is `services.ledger`'s second replica."""
    return process.partition(SEPARATOR)[0]


def count_of(env: Mapping[str, str]) -> int:
    raw = env.get("INVO_REPLICAS") or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= REPLICAS_MAX:
        raise ValueError(f"INVO_REPLICAS must be a whole number from 1 to {REPLICAS_MAX}, got {raw!r}")
    return int(raw)


def plan(
    env: dict[str, str],
    services: Iterable[str],
    *,
    count: int,
    gateway_port: int,
    free_port: Callable[[], int],
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Ports for every replica: sets each service's address list in `env`; answers the overrides of
    each process (its own listen address or port) and the gateways' URLs, the first one's first."""
    overrides: dict[str, dict[str, str]] = {}
    for service in services:
        listens = [f"127.0.0.1:{free_port()}" for _ in range(count)]
        env[f"INVO_{service.upper()}_ADDR"] = ",".join(listens)
        for process, listen in zip(names(service, count), listens, strict=True):
            overrides[process] = {"INVO_GRPC_LISTEN": listen}
    ports = [gateway_port, *(free_port() for _ in range(count - 1))]
    for process, port in zip(names("gateway", count), ports, strict=True):
        overrides[process] = {"INVO_GATEWAY_PORT": str(port)}
    for process in overrides:  # and each its own /metrics (services/common/metrics.py)
        overrides[process]["INVO_METRICS_LISTEN"] = f"127.0.0.1:{free_port()}"
    return overrides, [f"http://127.0.0.1:{port}" for port in ports]


def metrics_urls(overrides: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Each process's /metrics URL (`ledger`, `ledger@2`, `gateway`, ...), from `plan`'s overrides."""
    return {
        name: f"http://{env['INVO_METRICS_LISTEN']}/metrics"
        for name, env in overrides.items()
        if env.get("INVO_METRICS_LISTEN")
    }
