"""Item purchases, balance reads, reconciliation feeds and revenue; admin adjustments and the
ledger check. Amounts cross this edge as decimal strings and are integers everywhere inside."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from aiohttp import web
from invo.v1 import ledger_pb2, tenants_pb2

from services.common import grpcutil, limits, money
from services.common.logs import request_id_var
from services.gateway import declare, fields, operators
from services.gateway.context import ctx_of
from services.gateway.http import invalid, json_response
from services.gateway.ledger_schema import (
    PURCHASE_ITEM_REFUSALS,
    Adjust,
    Adjusted,
    Balance,
    BalanceLine,
    BalanceQuery,
    Balances,
    BalancesBody,
    Entries,
    EntriesQuery,
    ExportSummary,
    LedgerCheck,
    PurchaseItem,
    PurchaseItemAnswer,
    Revenue,
)
from services.gateway.tenants_api import iso

public = declare.Table(security=declare.SDK_KEY)
admin = declare.Table(security=declare.OPERATOR)

EXPORT_TIMEOUT_S = 600.0


def _debt(balance_minor: int) -> str:
    """What a wallet below zero owes (a clawback of spent currency), as units."""
    return money.format_units(max(0, -balance_minor))


def _balance_json(email: str, b: ledger_pb2.AccountBalance, currency_name: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "player_email": email,
        "balance": money.format_units(b.balance_minor),
        "available_balance": money.format_units(b.available_minor),
        "pending": money.format_units(b.pending_minor),
        "debt": _debt(b.balance_minor),
    }
    if currency_name is not None:
        out["currency_name"] = currency_name
    return out


@public.declare(
    "POST",
    "/api/item-purchases/purchase-item",
    summary="Debit a player for an item; split the price between the partner and the network.",
    body=PurchaseItem,
    answers={200: PurchaseItemAnswer},
    errors=(402,),
    description=PURCHASE_ITEM_REFUSALS,
)
async def purchase_item(request: web.Request, body: PurchaseItem) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    email, item_id, price, quantity = body.player_email, body.item_id, body.price, body.quantity or 1
    resp = await ctx.purchases.submit(
        ledger_pb2.PurchaseItemRequest(
            tenant_id=tenant.tenant_id,
            player_email=email,
            item_id=item_id,
            item_name=body.item_name,
            price_minor=price,
            quantity=quantity,
            idempotency=ledger_pb2.Idempotency(namespace="api", key=body.idempotency_key),
            metadata_json=fields.metadata_json(body.metadata),
            network_fee_bps=tenant.network_fee_bps,
            currency_name=tenant.currency_name,
            request_id=request_id_var.get(),
        ),
    )
    return json_response(
        {
            "status": "success",
            "transaction_id": resp.transaction_id,
            "player_email": email,
            "item_id": item_id,
            "quantity": quantity,
            "price": money.format_units(price),
            "total": money.format_units(resp.total_minor),
            "new_balance": money.format_units(resp.new_balance_minor),
            "debt": _debt(resp.new_balance_minor),
            "partner_amount": money.format_units(resp.partner_amount_minor),
            "network_fee": money.format_units(resp.network_fee_minor),
            "currency_name": tenant.currency_name,
            "duplicate": resp.duplicate,
            "created_at": iso(resp.created_at),
        }
    )


@public.declare(
    "GET", "/api/players/balance", summary="A player's balance.", query=BalanceQuery, answers={200: Balance}
)
async def player_balance(request: web.Request, query: BalanceQuery) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    email = query.player_email
    balance = await ctx.balances.submit((tenant.tenant_id, email))
    return json_response(_balance_json(email, balance, tenant.currency_name))


@public.declare(
    "POST",
    "/api/players/balances",
    summary="Many players' balances at once.",
    body=BalancesBody,
    answers={200: Balances},
)
async def player_balances(request: web.Request, body: BalancesBody) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    emails = list(dict.fromkeys(body.player_emails))
    resp = await ctx.backends.call(
        ctx.backends.ledger.GetPlayerBalances,
        ledger_pb2.GetPlayerBalancesRequest(
            players=[ledger_pb2.PlayerRef(tenant_id=tenant.tenant_id, player_email=e) for e in emails]
        ),
    )
    return json_response(
        {
            "currency_name": tenant.currency_name,
            "balances": [_balance_json(e, b, None) for e, b in zip(emails, resp.balances, strict=True)],
        }
    )


@public.declare(
    "GET",
    "/api/players/balances/export",
    summary="Every player's balance as of one snapshot, as NDJSON; the last line: count, snapshot_at.",
    answers={
        200: declare.Answer(
            description="NDJSON: one balance per line, then the summary line.",
            media_type="application/x-ndjson",
            schema={
                "anyOf": [
                    {"$ref": "#/components/schemas/BalanceLine"},
                    {"$ref": "#/components/schemas/ExportSummary"},
                ]
            },
            models=(BalanceLine, ExportSummary),
        )
    },
)
async def export_balances(request: web.Request) -> web.StreamResponse:
    """NDJSON of every player's balance as of one snapshot, streamed chunk by chunk so memory
    stays flat however many players there are; the last line carries the count and snapshot time."""
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    chunks = grpcutil.stream(
        ctx.backends.ledger.ExportBalances,
        ledger_pb2.ExportBalancesRequest(tenant_id=tenant.tenant_id, chunk_size=1000),
        timeout_s=EXPORT_TIMEOUT_S,
    )
    # The first chunk arrives before the headers go out, so an early failure is still an envelope.
    first = await anext(chunks)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    chunk = first
    while True:
        if chunk.last:
            summary = {
                "count": chunk.count,
                "snapshot_at": iso(chunk.snapshot_at),
                "currency_name": tenant.currency_name,
            }
            await resp.write((json.dumps(summary) + "\n").encode())
            break
        lines = "".join(json.dumps(_balance_json(b.player_email, b, None)) + "\n" for b in chunk.balances)
        await resp.write(lines.encode())  # waits while the client is slow: backpressure, not buffering
        chunk = await anext(chunks)
    await resp.write_eof()
    return resp


def _encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"e:{entry_id}".encode()).decode().rstrip("=")


_CURSOR_ID = re.compile(r"0|[1-9][0-9]{0,18}")  # ASCII digits: isdigit() and int() also take "١٢"


def _decode_cursor(cursor: str) -> int:
    """An entry id we encoded: within a bigint (protobuf refuses more, which was a 500)."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "e" or not _CURSOR_ID.fullmatch(value) or int(value) > limits.CURSOR_ENTRY_ID_MAX:
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid("cursor", "cursor is not one this API returned.") from exc


@public.declare(
    "GET",
    "/api/ledger/entries",
    summary="Every ledger entry of the tenant's transactions, in order, by cursor (for reconciliation).",
    query=EntriesQuery,
    answers={200: Entries},
)
async def ledger_entries(request: web.Request, query: EntriesQuery) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    cursor = query.cursor or ""
    after = _decode_cursor(cursor) if cursor else 0
    resp = await ctx.backends.call(
        ctx.backends.ledger.ListEntries,
        ledger_pb2.ListEntriesRequest(tenant_id=tenant.tenant_id, after_entry_id=after, limit=query.limit),
    )
    data = []
    for e in resp.entries:
        # Balances of accounts that are not the tenant's own (the network's, the processor's)
        # are not the tenant's business.
        own = e.account_kind in ("player", "revenue")
        account: dict[str, Any] = {"account": e.account_kind}
        if e.account_kind == "player":
            account["player_email"] = e.player_email
        data.append(
            {
                "entry_id": _encode_cursor(e.entry_id),
                "transaction_id": e.transaction_id,
                **account,
                "amount": money.format_units(e.amount_minor),
                "balance_after": money.format_units(e.balance_after_minor) if own else None,
                "kind": e.kind,
                "created_at": iso(e.created_at),
            }
        )
    next_cursor = _encode_cursor(resp.entries[-1].entry_id) if resp.entries else (cursor or None)
    return json_response({"data": data, "has_more": resp.has_more, "next_cursor": next_cursor})


def _usd(minor: int) -> str:
    return money.format_usd(minor // money.MINOR_PER_CENT)


@public.declare(
    "GET",
    "/api/revenue",
    summary="Partner revenue: owed, held for payouts, available to pay out, paid out, returned, lifetime.",
    answers={200: Revenue},
)
async def revenue(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    r = await ctx.backends.call(
        ctx.backends.ledger.GetRevenue, ledger_pb2.GetRevenueRequest(tenant_id=tenant.tenant_id)
    )
    return json_response(
        {
            "owed_usd": _usd(r.owed_minor),
            "paid_out_usd": _usd(r.paid_out_minor),
            "lifetime_usd": _usd(r.lifetime_minor),
            "held_usd": _usd(r.held_minor),
            "available_usd": _usd(r.available_minor),
            "returned_usd": _usd(r.returned_minor),
            "owed_units": money.format_units(r.owed_minor),
            "paid_out_units": money.format_units(r.paid_out_minor),
            "lifetime_units": money.format_units(r.lifetime_minor),
            "held_units": money.format_units(r.held_minor),
            "available_units": money.format_units(r.available_minor),
            "returned_units": money.format_units(r.returned_minor),
            "currency_name": tenant.currency_name,
        }
    )


# -- admin -------------------------------------------------------------------------------------


async def _adjust(request: web.Request, body: Adjust, *, direction: int) -> web.Response:
    ctx = ctx_of(request)
    tenant_id, email, amount, reason, key = (
        body.tenant_id,
        body.player_email,
        body.amount,
        body.reason,
        body.idempotency_key,
    )
    tenant: tenants_pb2.Tenant = await ctx.backends.call(
        ctx.backends.tenants.GetTenant, tenants_pb2.GetTenantRequest(tenant_id=tenant_id)
    )
    operator_id = request.get("operator_id", operators.BOOTSTRAP_OPERATOR)
    event = {
        "player_email": email,
        "amount": money.format_units(direction * amount),
        "reason": reason,
        "currency_name": tenant.currency_name,
    }
    result = await ctx.backends.call(
        ctx.backends.ledger.AdjustBalance,
        ledger_pb2.AdjustBalanceRequest(
            tenant_id=tenant_id,
            player_email=email,
            amount_minor=direction * amount,
            idempotency=ledger_pb2.Idempotency(namespace="admin", key=key),
            # The audit trail: who and why (the ledger adds the request id to every transaction).
            reason=reason,
            operator_id=operator_id,
            event=ledger_pb2.OutboxEvent(event_type="balance.adjusted", data_json=json.dumps(event)),
        ),
    )
    balance = next((b for b in result.balances if b.player_email == email), None)
    return json_response(
        {
            "status": "success",
            "transaction_id": result.transaction_id,
            "tenant_id": tenant_id,
            "player_email": email,
            "amount": money.format_units(amount),
            "new_balance": money.format_units(balance.balance_minor) if balance else None,
            "debt": _debt(balance.balance_minor) if balance else None,
            "currency_name": tenant.currency_name,
            "reason": reason,
            "duplicate": result.duplicate,
        }
    )


@admin.declare(
    "POST",
    "/admin/players/credit",
    summary="Credit a player, with the reason recorded.",
    body=Adjust,
    answers={200: Adjusted},
    errors=(404,),
)
async def admin_credit(request: web.Request, body: Adjust) -> web.Response:
    return await _adjust(request, body, direction=1)


@admin.declare(
    "POST",
    "/admin/players/debit",
    summary="Debit a player, with the reason recorded.",
    body=Adjust,
    answers={200: Adjusted},
    errors=(402, 404),
)
async def admin_debit(request: web.Request, body: Adjust) -> web.Response:
    return await _adjust(request, body, direction=-1)


@admin.declare(
    "GET", "/admin/ledger/check", summary="The ledger's invariants, checked now.", answers={200: LedgerCheck}
)
async def ledger_check(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    r = await grpcutil.call(ctx.backends.ledger.Check, ledger_pb2.CheckRequest(), timeout_s=150.0)
    return json_response(
        {
            "ok": r.ok,
            "total_balance": money.format_units(r.total_balance_minor),
            "negative_accounts": [
                {
                    "account": b.account,
                    "balance": money.format_units(b.balance_minor),
                    "pending": money.format_units(b.pending_minor),
                }
                for b in r.negative_accounts
            ],
            "unbalanced_transactions": list(r.unbalanced_transactions),
            "drifted_accounts": list(r.drifted_accounts),
            "player_debts": r.player_debts,
            "accounts": r.accounts,
            "transactions": r.transactions,
        }
    )
