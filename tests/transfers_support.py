"""What the transfer tests share: two (or three) tenants, funded players, unique phone numbers, the
development SMS outbox (PINs and claim codes are read there, as a player reads their phone), each
call of both flows, the events on JetStream, the ledger check, and moving a transfer's clock.

Time: a PIN lives 10 minutes and a claim code 24 hours or 14 days. Tests do not wait for them;
`shift` moves a transfer's deadlines into the past in the transfers schema (the service compares
them with the database's clock), then `sweep` runs one round of the service's own sweep over gRPC,
the same code its background loop runs.
"""

from __future__ import annotations

import random
import re
import uuid
from typing import Any

import asyncpg
from invo.v1 import transfers_pb2, transfers_pb2_grpc

from devstack.stack import Stack
from services.common import grpcutil
from services.common.config import Settings
from tests import payments_support
from tests.helpers import Api, Response, eventually
from tests.stream_support import Seen, read_events

INITIATE_TRANSFER = "/api/transfers/initiate-transfer"
INITIATE_SEND = "/api/transfers/initiate-send"
VERIFY = "/api/transfers/verify-sms"
RESEND = "/api/transfers/resend-sms"
CLAIM_TRANSFER = "/api/transfers/claim-transfer"
CLAIM_CURRENCY = "/api/transfers/claim-currency"
DESTINATIONS = "/api/transfers/available-destinations"
PIN_RE = re.compile(r"^(\d{6}) is your INVO transfer PIN")
CODE_RE = re.compile(r"([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})")
# Area codes phonenumbers knows as valid; an exchange never N11 (those are service codes).
_AREAS = ("415", "212", "312", "617", "206", "303", "512", "404")


def phone() -> str:
    """A valid US mobile number of this test's own: limits count texts per phone number."""
    exchange = random.choice([n for n in range(200, 1000) if n % 100 != 11])
    return f"+1{random.choice(_AREAS)}{exchange}{random.randint(0, 9999):04d}"


def email() -> str:
    return f"p-{uuid.uuid4().hex[:10]}@example.com"


def key() -> str:
    return f"trf-{uuid.uuid4().hex}"


async def tenants(api: Api, n: int = 2, **settings: Any) -> list[dict[str, Any]]:
    """`n` new sandbox tenants (transfer policy open by default), each with its own SDK key."""
    return [await api.create_tenant(name=f"Transfer {i}", currency_name=f"Coins {i}", **settings) for i in range(n)]


async def fund(api: Api, t: dict[str, Any], player: str, amount: str) -> None:
    resp = await api.credit(t["tenant_id"], player, amount)
    assert resp.status == 200, resp


balance = payments_support.balance  # the one balance read, under the name these tests use


async def check_ledger(api: Api) -> dict[str, Any]:
    resp = await api.get("/admin/ledger/check", admin=True)
    assert resp.status == 200, resp
    assert resp.body["ok"] is True, resp.body
    assert resp.body["total_balance"] == "0", resp.body
    return dict(resp.body)


# -- the SMS outbox ---------------------------------------------------------------------------------


async def texts(api: Api, to: str, limit: int = 20) -> list[str]:
    """The texts `to` received, newest first."""
    resp = await api.get(f"/admin/dev/sms?phone={to.replace('+', '%2B')}&limit={limit}", admin=True)
    assert resp.status == 200, resp
    return [m["body"] for m in resp.body["data"]]


async def pin_of(api: Api, to: str, *, after: int = 0) -> str:
    """The newest PIN texted to `to`, once at least `after` + 1 PINs have arrived."""

    async def found() -> str:
        pins = [m.group(1) for m in (PIN_RE.match(b) for b in await texts(api, to)) if m]
        return pins[0] if len(pins) > after else ""

    return await eventually(found, timeout_s=15)


async def code_of(api: Api, to: str) -> str:
    """The newest claim code texted to `to`."""

    async def found() -> str:
        codes = [m.group(1) for m in (CODE_RE.search(b) for b in await texts(api, to)) if m]
        return codes[0] if codes else ""

    return await eventually(found, timeout_s=15)


# -- the calls ----------------------------------------------------------------------------------------


async def initiate_transfer(
    api: Api,
    src: dict[str, Any],
    dst: dict[str, Any],
    player: str,
    amount: str,
    sender_phone: str,
    *,
    idempotency_key: str | None = None,
    **extra: Any,
) -> Response:
    body = {
        "player_email": player,
        "destination_tenant_id": dst["tenant_id"],
        "amount": amount,
        "sender_phone": sender_phone,
        "idempotency_key": idempotency_key or key(),
        **extra,
    }
    return await api.post(INITIATE_TRANSFER, key=src["sdk_key"], json=body)


async def initiate_send(
    api: Api,
    src: dict[str, Any],
    player: str,
    amount: str,
    sender_phone: str,
    recipient_phone: str,
    *,
    idempotency_key: str | None = None,
    **extra: Any,
) -> Response:
    body = {
        "player_email": player,
        "recipient_phone": recipient_phone,
        "sender_phone": sender_phone,
        "amount": amount,
        "idempotency_key": idempotency_key or key(),
        **extra,
    }
    return await api.post(INITIATE_SEND, key=src["sdk_key"], json=body)


async def verify(api: Api, src: dict[str, Any], transfer_id: str, pin: str) -> Response:
    return await api.post(VERIFY, key=src["sdk_key"], json={"transfer_id": transfer_id, "pin": pin})


async def resend(api: Api, src: dict[str, Any], transfer_id: str) -> Response:
    return await api.post(RESEND, key=src["sdk_key"], json={"transfer_id": transfer_id})


async def claim(api: Api, t: dict[str, Any], code: str, player: str, *, send: bool = False) -> Response:
    return await api.post(
        CLAIM_CURRENCY if send else CLAIM_TRANSFER, key=t["sdk_key"], json={"claim_code": code, "player_email": player}
    )


async def cancel(api: Api, t: dict[str, Any], transfer_id: str) -> Response:
    return await api.post(f"/api/transfers/{transfer_id}/cancel", key=t["sdk_key"])


async def get(api: Api, t: dict[str, Any], transfer_id: str) -> Response:
    return await api.get(f"/api/transfers/{transfer_id}", key=t["sdk_key"])


async def self_transfer_to_claimable(
    api: Api, src: dict[str, Any], dst: dict[str, Any], player: str, amount: str
) -> tuple[str, str, str]:
    """A funded self-transfer verified: (transfer_id, claim code, sender phone)."""
    sender_phone = phone()
    started = await initiate_transfer(api, src, dst, player, amount, sender_phone)
    assert started.status == 201, started
    tid = started.body["transfer_id"]
    verified = await verify(api, src, tid, await pin_of(api, sender_phone))
    assert verified.status == 200, verified
    assert verified.body["status"] == "claimable"
    return tid, str(verified.body["claim_code"]), sender_phone


async def send_to_claimable(api: Api, src: dict[str, Any], player: str, amount: str) -> tuple[str, str, str, str]:
    """A funded send verified: (transfer_id, claim code read from the recipient's phone, sender
    phone, recipient phone)."""
    sender_phone, recipient_phone = phone(), phone()
    started = await initiate_send(api, src, player, amount, sender_phone, recipient_phone)
    assert started.status == 201, started
    tid = started.body["transfer_id"]
    verified = await verify(api, src, tid, await pin_of(api, sender_phone))
    assert verified.status == 200, verified
    assert verified.body["claim_code"] is None  # a send's code goes to the recipient's phone only
    return tid, await code_of(api, recipient_phone), sender_phone, recipient_phone


# -- the service's clock and sweep ------------------------------------------------------------------

# The deadlines a test may move into the past.
SHIFTABLE = ("pin_expires_at", "verify_by", "claim_expires_at", "pin_sent_at")


async def shift(stack: Stack, transfer_id: str, *columns: str, seconds: float = 1.0) -> None:
    """Set each of `columns` of the transfer to `seconds` before now (the database's clock)."""
    bad = set(columns) - set(SHIFTABLE)
    assert not bad, bad
    settings = Settings.from_env(stack.env)
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        sets = ", ".join(f"{c} = now() - make_interval(secs => $2)" for c in columns)
        done = await conn.execute(
            f'UPDATE "{settings.schema("transfers")}".transfers SET {sets} WHERE transfer_id = $1',
            transfer_id,
            seconds,
        )
        assert done == "UPDATE 1", done
    finally:
        await conn.close()


async def sweep(stack: Stack) -> transfers_pb2.SweepResponse:
    """One round of the transfers service's sweep (expiries, unfinished work, texts)."""
    channel = grpcutil.channel(stack.env["INVO_TRANSFERS_ADDR"])
    try:
        stub = transfers_pb2_grpc.TransfersServiceStub(channel)
        resp: transfers_pb2.SweepResponse = await grpcutil.call(stub.Sweep, transfers_pb2.SweepRequest(), timeout_s=30)
        return resp
    finally:
        await channel.close()


async def transfer_row(stack: Stack, transfer_id: str) -> dict[str, Any] | None:
    """The stored row (to check what is kept: only HMACs of codes, never the codes)."""
    settings = Settings.from_env(stack.env)
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        row = await conn.fetchrow(
            f'SELECT * FROM "{settings.schema("transfers")}".transfers WHERE transfer_id = $1', transfer_id
        )
        return dict(row) if row is not None else None
    finally:
        await conn.close()


# -- events -------------------------------------------------------------------------------------------


async def transfer_events(
    stack: Stack, tenant_id: str, transfer_id: str, *, count: int = 1, timeout_s: float = 20
) -> list[dict[str, Any]]:
    """The transfer.* events of one tenant about one transfer on JetStream, once there are at least
    `count` of them (distinct event ids), in the stream's order."""

    def mine(found: Seen) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}  # event id -> its first copy, in stream order
        for _, e in sorted(found.items()):
            if e["data"].get("transfer_id") == transfer_id:
                out.setdefault(e["event_id"], e)
        return list(out.values())

    return mine(await read_events(stack, tenant_id, "transfer", lambda f: len(mine(f)) >= count, timeout_s=timeout_s))
