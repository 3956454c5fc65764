"""Initiating a transfer: a self-transfer (one person, two tenants) or a send (a gift to a phone).

1. The request is checked (amount, phones, policy) and the transfer row inserted in `creating`,
   leased to this request, with its texts reserved under the SMS limits, in one transaction. The
   partner's idempotency key is unique per tenant: a retry finds the row and replays it.
2. The ledger holds amount + fee from the sender, keyed by the transfer id. Refused (too little,
   a wallet in debt), the row is deleted: nothing happened, and the key is free for a retry after
   a top-up, as an item purchase's is.
3. The PIN is made, stored as an HMAC, and its text queued in the transaction that moves the row
   to `pending_verification`; the text goes out after the commit.

A crash between the steps leaves a `creating` row whose lease runs out: the sweep, or the
partner's retry with the same key, drives it from step 2 (the ledger replays a hold it already
made).
"""

from __future__ import annotations

import asyncpg
from invo.v1 import tenants_pb2, transfers_pb2

from services.common import errors, idempotency, ids
from services.common.players import normalize_email
from services.transfers import codes, phones
from services.transfers.deps import Deps, after, db_now
from services.transfers.policy import refusal
from services.transfers.rules import policy_refused, split
from services.transfers.store import KINDS, LIFECYCLE, SELF, SEND, NewTransfer
from services.transfers.wording import pin_text


class TransferInProgress(errors.Conflict):
    default_error = "transfer_in_progress"
    default_error_code = "TRANSFER_IN_PROGRESS"


async def initiate(
    d: Deps, r: transfers_pb2.InitiateRequest, *, lease_s: float, deadline: float | None
) -> tuple[asyncpg.Record, bool]:
    """The transfer and whether this was a replay of its key."""
    tenant: tenants_pb2.Tenant = r.tenant
    if r.kind not in KINDS:
        raise errors.InvalidRequest(f"kind must be one of {', '.join(KINDS)}")
    key = idempotency.valid_key(r.idempotency_key)
    sender_email = normalize_email(r.sender_email, field="player_email")
    shares = split(r.amount_minor, source_bps=tenant.transfer_fee_bps)
    sender_phone = phones.normalize(r.sender_phone, allowed_countries=d.rules.countries, param="sender_phone")
    recipient_phone = None
    if r.kind == SEND:
        recipient_phone = phones.normalize(
            r.recipient_phone, allowed_countries=d.rules.countries, param="recipient_phone"
        )
    digest = idempotency.fingerprint(
        {
            "kind": r.kind,
            "sender_email": sender_email,
            "sender_phone": sender_phone,
            "recipient_phone": recipient_phone,
            "destination_tenant_id": r.destination_tenant_id if r.kind == SELF else None,
            "amount_minor": r.amount_minor,
            "metadata": r.metadata_json or "",
        }
    )
    existing = await d.store.by_key(d.pool, tenant.tenant_id, key)
    if existing is not None:
        return await _replay(d, existing, digest, key, deadline=deadline)
    if r.kind == SELF:
        destination = await d.tenant(r.destination_tenant_id, deadline)
        refused = refusal(tenant, destination)
        if refused is not None:
            raise policy_refused(refused.message, refused.code)
    elif not tenant.allows_outgoing_transfers:
        raise policy_refused(
            "This tenant does not allow outgoing transfers (allows_outgoing_transfers).", "SOURCE_OUTGOING_DISABLED"
        )
    new = NewTransfer(
        transfer_id=ids.new_id("trf"),
        kind=r.kind,
        source_tenant_id=tenant.tenant_id,
        environment=tenant.environment,
        idempotency_key=key,
        request_hash=digest,
        sender_email=sender_email,
        sender_phone=sender_phone,
        recipient_phone=recipient_phone,
        destination_tenant_id=r.destination_tenant_id if r.kind == SELF else None,
        amount_minor=r.amount_minor,
        fee_minor=shares.fee,
        source_fee_minor=shares.source,
        destination_fee_minor=shares.destination,
        network_fee_minor=shares.network,
        metadata_json=r.metadata_json,
        verify_window_s=d.rules.verify_window_s,
        lease_s=lease_s,
    )
    async with d.pool.acquire() as conn, conn.transaction():
        row = await d.store.insert(conn, new)
        if row is not None:
            # The PIN to the sender; the claim code to the sender (a self-transfer) or the recipient.
            claim_phone = sender_phone if r.kind == SELF else recipient_phone
            await d.texts.reserve(
                conn,
                transfer_id=new.transfer_id,
                tenant_id=tenant.tenant_id,
                texts=[("pin", sender_phone), ("claim", str(claim_phone))],
            )
    if row is None:  # the same key, a moment ago, from a concurrent request
        existing = await d.store.by_key(d.pool, tenant.tenant_id, key)
        if existing is None:
            raise TransferInProgress("A transfer with this idempotency_key is being created; retry the request.")
        return await _replay(d, existing, digest, key, deadline=deadline)
    return await drive(d, row, source="api", deadline=deadline), False


async def _replay(
    d: Deps, row: asyncpg.Record, digest: bytes, key: str, *, deadline: float | None
) -> tuple[asyncpg.Record, bool]:
    idempotency.check_replay(row["request_hash"], digest, key=key)
    if row["status"] != "creating":
        return row, True
    claimed = await d.store.lease.claim(d.pool, row["transfer_id"], where="status = 'creating'")
    if claimed is None:
        raise TransferInProgress(
            "The first request with this idempotency_key is still creating the transfer; retry in a moment.",
            retry_after_s=1,
            extra={"transfer_id": row["transfer_id"]},
        )
    return await drive(d, claimed, source="api", deadline=deadline), True


async def drive(d: Deps, row: asyncpg.Record, *, source: str, deadline: float | None) -> asyncpg.Record:
    """Steps 2 and 3 for a `creating` row whose lease the caller holds."""
    transfer_id = row["transfer_id"]
    try:
        held = await d.ledger.hold(row, deadline=deadline)
    except (errors.PaymentRequired, errors.InvalidRequest):
        await d.store.forget_refused(transfer_id)
        raise
    except Exception:
        await d.store.lease.release(d.pool, transfer_id)
        raise
    pin = codes.new_pin()
    async with d.pool.acquire() as conn, conn.transaction():
        now = await db_now(conn)
        pin_expires_at = min(after(now, d.rules.pin_ttl_s), row["verify_by"])
        moved = await LIFECYCLE.move(
            conn,
            transfer_id,
            "pending_verification",
            source=source,
            sets={
                "pin_hash": d.hasher.digest("pin", pin, context=transfer_id),
                "pin_expires_at": pin_expires_at,
                "pin_sends": 1,
                "pin_sent_at": now,
                "hold_transaction_id": held.transaction_id,
                "sender_balance_minor": held.balance_minor,
                "processing_until": None,
            },
        )
        message_id = None
        if moved is not None:
            message_id = await d.texts.reserved(conn, transfer_id, "pin")
            if message_id is not None:
                await d.texts.fill(
                    conn, message_id, body=pin_text(pin, ttl_s=d.rules.pin_ttl_s), send_by=pin_expires_at
                )
    if moved is None:  # another worker finished the creation first
        current = await d.store.find(transfer_id)
        if current is None:
            raise errors.Internal("a transfer vanished while it was being created")
        return current
    await d.deliver(message_id)
    return moved
