"""Item purchases, balance reads, reconciliation feeds and revenue; admin adjustments and the
ledger check. Amounts cross this edge as decimal strings and are integers everywhere inside."""

from __future__ import annotations

import base64
import binascii
import json
import re
from decimal import Decimal
from typing import Any

from aiohttp import web
from invo.v1 import ledger_pb2, tenants_pb2

from services.common import errors, grpcutil, money
from services.common.logs import request_id_var
from services.common.players import normalize_email
from services.gateway.context import ctx_of
from services.gateway.http import get_int, get_str, invalid, json_response, read_json, reject_unknown
from services.gateway.tenants_api import iso

public = web.RouteTableDef()
admin = web.RouteTableDef()

IDEMPOTENCY_KEY_LEN_MAX = 255
METADATA_KEYS_MAX = 50
METADATA_KEY_LEN_MAX = 40
METADATA_BYTES_MAX = 8192
BATCH_EMAILS_MAX = 1000
ENTRIES_LIMIT_MAX = 1000
EXPORT_TIMEOUT_S = 600.0
# Until operators have identities (issue 10, item 6), the bootstrap token acts as this operator.
BOOTSTRAP_OPERATOR = "op_bootstrap"
PURCHASE_FIELDS = {"player_email", "item_id", "item_name", "price", "quantity", "idempotency_key", "metadata"}


def _email(value: Any, field: str = "player_email") -> str:
    if not isinstance(value, str) or not value.strip():
        raise errors.InvalidRequest(f"{field} is required.", error_code="MISSING_PARAMETER", extra={"param": field})
    return normalize_email(value, field=field)


def _idempotency_key(body: dict[str, Any], *, required: bool) -> str | None:
    key = body.get("idempotency_key")
    if key is None:
        if required:
            raise errors.InvalidRequest(
                "idempotency_key is required: generate one per logical purchase and resend it on every retry.",
                error_code="MISSING_IDEMPOTENCY_KEY",
                extra={"param": "idempotency_key"},
            )
        return None
    if not isinstance(key, str) or not key or len(key) > IDEMPOTENCY_KEY_LEN_MAX:
        raise errors.InvalidRequest(
            f"idempotency_key must be a string of 1 to {IDEMPOTENCY_KEY_LEN_MAX} characters.",
            error_code="INVALID_IDEMPOTENCY_KEY",
            extra={"param": "idempotency_key"},
        )
    return key


def _json_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _metadata(body: dict[str, Any]) -> str:
    value = body.get("metadata")
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise invalid("metadata", "metadata must be an object.")
    if len(value) > METADATA_KEYS_MAX or any(len(k) > METADATA_KEY_LEN_MAX for k in value):
        raise invalid(
            "metadata", f"metadata holds at most {METADATA_KEYS_MAX} keys of at most {METADATA_KEY_LEN_MAX} characters."
        )
    # JSON numbers arrive as Decimal (never float, for amounts); in metadata they stay numbers.
    try:
        text = json.dumps(value, separators=(",", ":"), default=_json_number, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise invalid("metadata", "metadata holds a number out of range.") from exc
    if len(text.encode()) > METADATA_BYTES_MAX:
        raise invalid("metadata", f"metadata must be at most {METADATA_BYTES_MAX} bytes as JSON.")
    return text


def _amount(body: dict[str, Any], field: str) -> int:
    value = body.get(field)
    if value is None:
        raise errors.InvalidRequest(f"{field} is required.", error_code="MISSING_PARAMETER", extra={"param": field})
    try:
        minor = money.parse_scaled(value, places=2, field=field)
    except money.AmountError as exc:
        raise invalid(field, str(exc) + ".") from exc
    if minor <= 0:
        raise invalid(field, f"{field} must be greater than zero.")
    if minor > 10**13:
        raise invalid(field, f"{field} is too large.")
    return minor


def _balance_json(email: str, b: ledger_pb2.AccountBalance, currency_name: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "player_email": email,
        "balance": money.format_units(b.balance_minor),
        "available_balance": money.format_units(b.available_minor),
        "pending": money.format_units(b.pending_minor),
    }
    if currency_name is not None:
        out["currency_name"] = currency_name
    return out


@public.post("/api/item-purchases/purchase-item")
async def purchase_item(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    body = await read_json(request)
    reject_unknown(body, PURCHASE_FIELDS)
    email = _email(body.get("player_email"))
    item_id = get_str(body, "item_id", max_len=255, required=True) or ""
    item_name = get_str(body, "item_name", max_len=255, required=True) or ""
    price = _amount(body, "price")
    quantity = get_int(body, "quantity", lo=1, hi=1000) or 1
    key = _idempotency_key(body, required=True) or ""
    resp = await ctx.purchases.submit(
        ledger_pb2.PurchaseItemRequest(
            tenant_id=tenant.tenant_id,
            player_email=email,
            item_id=item_id,
            item_name=item_name,
            price_minor=price,
            quantity=quantity,
            idempotency=ledger_pb2.Idempotency(namespace="api", key=key),
            metadata_json=_metadata(body),
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
            "partner_amount": money.format_units(resp.partner_amount_minor),
            "network_fee": money.format_units(resp.network_fee_minor),
            "currency_name": tenant.currency_name,
            "duplicate": resp.duplicate,
            "created_at": iso(resp.created_at),
        }
    )


@public.get("/api/players/balance")
async def player_balance(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    email = _email(request.query.get("player_email"))
    balance = await ctx.balances.submit((tenant.tenant_id, email))
    return json_response(_balance_json(email, balance, tenant.currency_name))


@public.post("/api/players/balances")
async def player_balances(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    body = await read_json(request)
    reject_unknown(body, {"player_emails"})
    raw = body.get("player_emails")
    if not isinstance(raw, list) or not raw:
        raise invalid("player_emails", "player_emails must be a non-empty list of emails.")
    if len(raw) > BATCH_EMAILS_MAX:
        raise invalid("player_emails", f"player_emails holds at most {BATCH_EMAILS_MAX} emails.")
    emails = list(dict.fromkeys(_email(e, "player_emails") for e in raw))
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


@public.get("/api/players/balances/export")
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


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "e" or not value.isdigit():
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid("cursor", "cursor is not one this API returned.") from exc


@public.get("/api/ledger/entries")
async def ledger_entries(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    cursor = request.query.get("cursor", "")
    after = _decode_cursor(cursor) if cursor else 0
    limit_text = request.query.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,4}", limit_text) or not 1 <= int(limit_text) <= ENTRIES_LIMIT_MAX:
        raise invalid("limit", f"limit must be a whole number from 1 to {ENTRIES_LIMIT_MAX}.")
    resp = await ctx.backends.call(
        ctx.backends.ledger.ListEntries,
        ledger_pb2.ListEntriesRequest(tenant_id=tenant.tenant_id, after_entry_id=after, limit=int(limit_text)),
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


@public.get("/api/revenue")
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
            "owed_units": money.format_units(r.owed_minor),
            "paid_out_units": money.format_units(r.paid_out_minor),
            "lifetime_units": money.format_units(r.lifetime_minor),
            "currency_name": tenant.currency_name,
        }
    )


# -- admin -------------------------------------------------------------------------------------


async def _adjust(request: web.Request, *, direction: int) -> web.Response:
    ctx = ctx_of(request)
    body = await read_json(request)
    reject_unknown(body, {"tenant_id", "player_email", "amount", "reason", "idempotency_key"})
    tenant_id = get_str(body, "tenant_id", max_len=64, required=True) or ""
    email = _email(body.get("player_email"))
    amount = _amount(body, "amount")
    reason = (get_str(body, "reason", max_len=500, required=True) or "").strip()
    if not reason:
        raise invalid("reason", "reason must say why the balance is adjusted.")
    # Required: an invented key would make a retried request credit twice.
    key = _idempotency_key(body, required=True) or ""
    tenant: tenants_pb2.Tenant = await ctx.backends.call(
        ctx.backends.tenants.GetTenant, tenants_pb2.GetTenantRequest(tenant_id=tenant_id)
    )
    operator_id = request.get("operator_id", BOOTSTRAP_OPERATOR)
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
            "currency_name": tenant.currency_name,
            "reason": reason,
            "duplicate": result.duplicate,
        }
    )


@admin.post("/admin/players/credit")
async def admin_credit(request: web.Request) -> web.Response:
    return await _adjust(request, direction=1)


@admin.post("/admin/players/debit")
async def admin_debit(request: web.Request) -> web.Response:
    return await _adjust(request, direction=-1)


@admin.get("/admin/ledger/check")
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
