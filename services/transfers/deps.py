"""What every step of a transfer works with, built once by `service.setup`."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from typing import Any

import asyncpg
from invo.v1 import tenants_pb2

from services.common import errors, grpcutil
from services.transfers.codes import CodeHasher
from services.transfers.ledger_client import TransferLedger
from services.transfers.rules import Rules
from services.transfers.store import TransferStore
from services.transfers.texts import Texts

log = logging.getLogger("invo.transfers")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Deps:
    pool: asyncpg.Pool
    store: TransferStore
    texts: Texts
    hasher: CodeHasher
    ledger: TransferLedger
    tenants: Any  # TenantsServiceStub
    rules: Rules
    timeout_cap_s: float

    async def tenant(self, tenant_id: str, deadline: float | None) -> tenants_pb2.Tenant:
        """Another tenant of a transfer; one that does not exist reads as unavailable (a tenant id
        of another environment is not even confirmed to exist)."""
        try:
            t: tenants_pb2.Tenant = await grpcutil.call(
                self.tenants.GetTenant,
                tenants_pb2.GetTenantRequest(tenant_id=tenant_id),
                timeout_s=grpcutil.timeout_within(deadline, cap_s=self.timeout_cap_s),
            )
        except errors.NotFound:
            raise errors.Forbidden(
                "The destination tenant is not active in this environment.",
                error="transfer_not_allowed",
                error_code="DESTINATION_UNAVAILABLE",
            ) from None
        return t

    async def deliver(self, message_id: str | None) -> None:
        """Send a text now, after its commit; if the provider fails the sweep sends it later."""
        if message_id is None:
            return
        try:
            await self.texts.deliver(message_id)
        except Exception as exc:  # the text stays queued: the sweep retries it
            log.warning("text %s not sent yet (%s)", message_id, type(exc).__name__)


async def db_now(conn: asyncpg.Connection) -> datetime.datetime:
    """The database's clock: every deadline is stored and compared on it, whichever replica writes."""
    now: datetime.datetime = await conn.fetchval("SELECT now()")
    return now


def after(now: datetime.datetime, seconds: float) -> datetime.datetime:
    return now + datetime.timedelta(seconds=seconds)
