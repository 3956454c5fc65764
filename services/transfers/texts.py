"""The texts a transfer sends (PINs and claim codes): limited, durable, sent once.

A transfer reserves its texts when it is accepted, under the per-phone and per-tenant hourly
limits (checked and reserved under advisory locks, so concurrent requests can never together pass
a limit). A reserved text gets its body when its code exists, sealed with AES-GCM (INVO_DATA_KEYS)
in the same transaction that stores the code's HMAC, so a crash between the two loses nothing;
it is sent at once after the commit and, if the provider failed, by the sweep with backoff until
its code expires. The body is erased the moment the provider took it: a PIN or a claim code is
readable from the database only while its text waits.
"""

from __future__ import annotations

import datetime
import logging
import math

import asyncpg

from services.common import errors, ids
from services.common.crypto import Keyring
from services.common.leases import Lease
from services.transfers.sms import SmsProvider, SmsRefused, SmsUnavailable

log = logging.getLogger("invo.transfers.texts")

WINDOW_S = 3600
SEND_LEASE_S = 30.0  # above the SMS API's timeout
RETRY_MIN_S = 2.0
RETRY_MAX_S = 300.0
ATTEMPTS_MAX = 20


class SmsRateLimited(errors.RateLimited):
    default_error = "sms_rate_limited"
    default_error_code = "SMS_RATE_LIMITED"


def _lock_key(kind: str, value: str) -> str:
    return f"invo.transfers.sms.{kind}:{value}"


class Texts:
    def __init__(
        self,
        pool: asyncpg.Pool,
        provider: SmsProvider,
        keyring: Keyring,
        *,
        per_phone_per_hour: int,
        per_tenant_per_hour: int,
    ) -> None:
        self.pool = pool
        self.provider = provider
        self.keyring = keyring
        self.per_phone_per_hour = per_phone_per_hour
        self.per_tenant_per_hour = per_tenant_per_hour
        self.lease = Lease(table="sms_messages", key_column="message_id", duration_s=SEND_LEASE_S)

    # -- limits and reservations ----------------------------------------------------------

    async def _retry_after_s(self, conn: asyncpg.Connection, column: str, value: str, *, skip: int) -> int:
        """Seconds until enough texts of the window age out for the request to fit."""
        oldest = await conn.fetchval(
            f"SELECT created_at FROM sms_messages WHERE {column} = $1"
            " AND created_at > now() - make_interval(secs => $2) ORDER BY created_at OFFSET $3 LIMIT 1",
            value,
            float(WINDOW_S),
            skip,
        )
        now = await conn.fetchval("SELECT now()")
        if oldest is None:
            return 1
        return max(1, math.ceil((oldest + datetime.timedelta(seconds=WINDOW_S) - now).total_seconds()))

    async def _check(self, conn: asyncpg.Connection, column: str, value: str, need: int, cap: int, what: str) -> None:
        used = await conn.fetchval(
            f"SELECT count(*) FROM sms_messages WHERE {column} = $1 AND created_at > now() - make_interval(secs => $2)",
            value,
            float(WINDOW_S),
        )
        if used + need > cap:
            wait_s = await self._retry_after_s(conn, column, value, skip=max(0, used + need - cap - 1))
            raise SmsRateLimited(
                f"Too many texts for this {what} in the last hour (at most {cap}); retry after {wait_s} seconds.",
                retry_after_s=wait_s,
                extra={"limit": what},
            )

    async def reserve(
        self, conn: asyncpg.Connection, *, transfer_id: str, tenant_id: str, texts: list[tuple[str, str]]
    ) -> list[str]:
        """Reserve `texts` ((purpose, phone) pairs) for a transfer, inside the caller's transaction,
        or raise 429 SMS_RATE_LIMITED. Answers their ids in the same order."""
        if not conn.is_in_transaction():
            raise RuntimeError("Texts.reserve must run inside the transfer's transaction")
        phones = sorted({phone for _, phone in texts})
        # One lock order for every caller (the tenant, then its phones sorted): no deadlock.
        for key in [_lock_key("tenant", tenant_id), *(_lock_key("phone", p) for p in phones)]:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)
        await self._check(conn, "tenant_id", tenant_id, len(texts), self.per_tenant_per_hour, "tenant")
        for phone in phones:
            need = sum(1 for _, p in texts if p == phone)
            await self._check(conn, "phone", phone, need, self.per_phone_per_hour, "phone number")
        message_ids = [ids.new_id("sms") for _ in texts]
        await conn.executemany(
            "INSERT INTO sms_messages (message_id, transfer_id, tenant_id, purpose, phone, status)"
            " VALUES ($1, $2, $3, $4, $5, 'reserved')",
            [
                (mid, transfer_id, tenant_id, purpose, phone)
                for mid, (purpose, phone) in zip(message_ids, texts, strict=True)
            ],
        )
        return message_ids

    async def reserved(self, conn: asyncpg.Connection, transfer_id: str, purpose: str) -> str | None:
        return await conn.fetchval(
            "SELECT message_id FROM sms_messages WHERE transfer_id = $1 AND purpose = $2 AND status = 'reserved'"
            " ORDER BY created_at LIMIT 1",
            transfer_id,
            purpose,
        )

    async def fill(
        self, conn: asyncpg.Connection, message_id: str, *, body: str, send_by: datetime.datetime | None
    ) -> None:
        """Give a reserved text its body (sealed) and queue it, in the transaction that made the code."""
        kid, sealed = self.keyring.seal(body, aad=message_id)
        done = await conn.execute(
            "UPDATE sms_messages SET status = 'queued', body_kid = $2, body_sealed = $3, send_by = $4,"
            " next_attempt_at = now() WHERE message_id = $1 AND status = 'reserved'",
            message_id,
            kid,
            sealed,
            send_by,
        )
        if done != "UPDATE 1":
            raise RuntimeError(f"text {message_id} was not reserved")

    async def supersede(self, conn: asyncpg.Connection, transfer_id: str, purpose: str) -> None:
        """Texts of a code that no longer works (a PIN replaced, a transfer ended) are never sent."""
        await conn.execute(
            "UPDATE sms_messages SET status = 'superseded', body_sealed = NULL, body_kid = NULL"
            " WHERE transfer_id = $1 AND ($2 = '' OR purpose = $2) AND status IN ('queued', 'reserved')",
            transfer_id,
            purpose,
        )

    # -- delivery -------------------------------------------------------------------------

    async def deliver(self, message_id: str) -> bool:
        """Send one queued text now if nobody else is; True if the provider took it."""
        row = await self.lease.claim(self.pool, message_id, where="status = 'queued'")
        if row is None:
            return False
        return await self._send(row)

    async def deliver_due(self, limit: int) -> int:
        rows = await self.lease.claim_batch(
            self.pool, where="status = 'queued' AND next_attempt_at <= now()", order_by="next_attempt_at", limit=limit
        )
        for row in rows:
            await self._send(row)
        return len(rows)

    async def _send(self, row: asyncpg.Record) -> bool:
        message_id = row["message_id"]
        if row["send_by"] is not None and row["send_by"] <= datetime.datetime.now(datetime.UTC):
            await self._end(message_id, "failed", error="its code expired before it could be sent")
            return False
        body = self.keyring.open(row["body_kid"], bytes(row["body_sealed"]), aad=message_id)
        try:
            provider_id = await self.provider.send(to=row["phone"], body=body, message_id=message_id)
        except SmsRefused as exc:
            log.warning("text %s refused by the provider: %s", message_id, exc)
            await self._end(message_id, "failed", error=str(exc))
            return False
        except (SmsUnavailable, OSError, TimeoutError) as exc:
            attempts = row["attempts"] + 1
            if attempts >= ATTEMPTS_MAX:
                await self._end(message_id, "failed", error=str(exc))
                return False
            wait_s = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (attempts - 1))
            log.warning("text %s not sent (attempt %d): %s; retry in %.0f s", message_id, attempts, exc, wait_s)
            await self.pool.execute(
                "UPDATE sms_messages SET attempts = $2, last_error = $3, processing_until = NULL,"
                " next_attempt_at = now() + make_interval(secs => $4) WHERE message_id = $1 AND status = 'queued'",
                message_id,
                attempts,
                str(exc)[:200],
                wait_s,
            )
            return False
        await self.pool.execute(
            "UPDATE sms_messages SET status = 'sent', provider_id = $2, sent_at = now(), body_sealed = NULL,"
            " body_kid = NULL, processing_until = NULL, attempts = attempts + 1 WHERE message_id = $1",
            message_id,
            provider_id,
        )
        return True

    async def _end(self, message_id: str, status: str, *, error: str) -> None:
        await self.pool.execute(
            "UPDATE sms_messages SET status = $2, last_error = $3, body_sealed = NULL, body_kid = NULL,"
            " processing_until = NULL WHERE message_id = $1 AND status = 'queued'",
            message_id,
            status,
            error[:200],
        )
