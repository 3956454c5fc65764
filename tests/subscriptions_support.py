"""Helpers of the subscription tests: a funded player, a subscription made through the API, the
test clock (the subscriptions service's own time, moved by its SetTestClock RPC, shared by every
replica), one renewal round, the subscription's events and the player's balance."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from invo.v1 import subscriptions_pb2, subscriptions_pb2_grpc

from devstack.stack import Stack
from services.common.config import Settings
from tests.helpers import Api, Response
from tests.payments_support import balance
from tests.stream_support import read_events

UTC = datetime.UTC
__all__ = ["balance"]  # the player's balance read, payments_support's


@pytest.fixture(autouse=True)
async def _ledger_checked(api: Api) -> AsyncIterator[None]:
    """The ledger check after each test of every module that imports it (autouse there)."""
    yield
    check = await api.get("/admin/ledger/check", admin=True)
    assert check.status == 200 and check.body["ok"] is True, check


async def db(stack: Stack, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of `sql` on the network's database (name tables with `schema`)."""
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def schema(stack: Stack, service: str) -> str:
    """`service`'s schema in the network's database."""
    return Settings.from_env(stack.env).schema(service)


def key() -> str:
    return f"sub-{uuid.uuid4().hex}"


def player() -> str:
    return f"p-{uuid.uuid4().hex[:10]}@example.com"


def body(email: str, price: str = "10", interval: str = "month", **extra: Any) -> dict[str, Any]:
    return {
        "player_email": email,
        "plan_id": "gold",
        "plan_name": "Gold Pass",
        "price": price,
        "interval": interval,
        "idempotency_key": key(),
        **extra,
    }


async def tenant(api: Api) -> dict[str, Any]:
    return await api.create_tenant(name="Subscribing Game", currency_name="Gems")


async def funded(api: Api, t: dict[str, Any], units: str) -> str:
    email = player()
    if units != "0":
        assert (await api.credit(t["tenant_id"], email, units)).status == 200
    return email


async def create(api: Api, t: dict[str, Any], sent: dict[str, Any]) -> Response:
    return await api.post("/api/subscriptions", key=t["sdk_key"], json=sent)


async def get(api: Api, t: dict[str, Any], subscription_id: str) -> dict[str, Any]:
    resp = await api.get(f"/api/subscriptions/{subscription_id}", key=t["sdk_key"])
    assert resp.status == 200, resp
    return dict(resp.body)


def _stub(stack: Stack) -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(stack.env["INVO_SUBSCRIPTIONS_ADDR"].split(",")[0])
    return channel, subscriptions_pb2_grpc.SubscriptionsServiceStub(channel)


async def set_clock(stack: Stack, at: datetime.datetime) -> None:
    """The subscriptions service's time is `at` from now on (until set again)."""
    channel, stub = _stub(stack)
    try:
        ts = Timestamp()
        ts.FromDatetime(at)
        await stub.SetTestClock(subscriptions_pb2.SetTestClockRequest(now=ts), timeout=10)
    finally:
        await channel.close()


async def renew(stack: Stack) -> subscriptions_pb2.RenewDueResponse:
    """One renewal round, as the background loop runs it (which may run at the same time)."""
    channel, stub = _stub(stack)
    try:
        return await stub.RenewDue(subscriptions_pb2.RenewDueRequest(), timeout=30)
    finally:
        await channel.close()


def parse(iso: str) -> datetime.datetime:
    return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


async def events(stack: Stack, tenant_id: str, subscription_id: str, count: int) -> list[dict[str, Any]]:
    """The subscription's subscription.* events, once there are `count`, in stream order."""

    def mine(found: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for _, e in sorted(found.items()) if e["data"].get("subscription_id") == subscription_id]

    return mine(await read_events(stack, tenant_id, "subscription", lambda f: len(mine(f)) >= count))
