"""The start-up every backend service shares: settings, logs, migrations, pool, outbox relay, gRPC."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Awaitable, Callable

import asyncpg

from services.common import db, events, logs, metrics, runtime
from services.common.config import SERVICES, Settings
from services.common.grpcserver import GrpcService

ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    name: str
    outbox: bool  # does it write events (and so run an outbox relay)?

    @property
    def migrations_dir(self) -> pathlib.Path:
        return ROOT / self.name / "migrations"

    def migrations(self) -> list[db.Migration]:
        return db.service_migrations(self.name, self.migrations_dir, outbox=self.outbox)


SPECS = {
    "tenants": ServiceSpec("tenants", outbox=False),
    "ledger": ServiceSpec("ledger", outbox=True),
    "payments": ServiceSpec("payments", outbox=True),
    "transfers": ServiceSpec("transfers", outbox=True),
    "payouts": ServiceSpec("payouts", outbox=True),
    "webhooks": ServiceSpec("webhooks", outbox=False),
    "subscriptions": ServiceSpec("subscriptions", outbox=True),
}
if set(SPECS) != set(SERVICES):
    raise RuntimeError("SPECS and config.SERVICES disagree")


async def migrate_all(settings: Settings) -> dict[str, int]:
    settings.require("database_url")
    return {
        name: await db.migrate_url(settings.database_url, settings.schema(name), spec.migrations())
        for name, spec in SPECS.items()
    }


Setup = Callable[[GrpcService, Settings, asyncpg.Pool], Awaitable[None]]


async def _serve(name: str, setup: Setup) -> None:
    settings = Settings.from_env()
    logs.setup(name, settings.log_level)
    settings.require("database_url")
    if settings.environment == "production":
        settings.require("key_pepper", "data_keys")
    spec = SPECS[name]
    schema = settings.schema(name)
    await db.migrate_url(settings.database_url, schema, spec.migrations())
    pool = await db.create_pool(
        settings.database_url,
        schema,
        application_name=f"invo-{name}",
        max_size=settings.db_pool_max,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )
    svc = GrpcService(name, settings.listen_addr(name), shutdown_grace_s=settings.grpc_shutdown_grace_s)
    svc.on_shutdown(pool.close)
    if spec.outbox:
        settings.require("nats_url")
        nc = await events.connect_nats(settings.nats_url, name=f"invo-{name}")
        svc.on_shutdown(nc.close)
        js = nc.jetstream()
        await events.ensure_stream(
            js,
            stream=settings.nats_stream,
            subject_prefix=settings.nats_subject_prefix,
            replicas=settings.nats_stream_replicas,
        )
        relay = events.OutboxRelay(
            pool,
            js,
            subject_prefix=settings.nats_subject_prefix,
            batch_max=settings.outbox_batch_max,
            poll_interval_s=settings.outbox_poll_interval_ms / 1000,
            retention_s=settings.outbox_retention_s,
        )
        svc.background(relay.run(), "outbox-relay")
    await setup(svc, settings, pool)
    stop_metrics = await metrics.serve(settings.metrics_listen)
    if stop_metrics is not None:
        svc.on_shutdown(stop_metrics)
    runtime.freeze_startup_heap()
    await svc.run()


def main(name: str, setup: Setup) -> None:
    """Runs the service until it is stopped; the process exits non-zero when a background task
    died (`runtime.EXIT_FAILED`) or the stop had to be forced (`runtime.EXIT_FORCED`)."""
    raise SystemExit(runtime.run(_serve(name, setup)))


async def no_servicers(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    """Setup of a service whose API arrives with a later issue: health and reflection only."""
