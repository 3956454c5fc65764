"""What the ledger-read tests through the public gateway share: funding players with admin
credits, purchases, and reading balances, the entries feed and the export.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import urllib.parse
from typing import Any

import aiohttp

from services.common import ids
from tests.helpers import Api, Response

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
BALANCE_KEYS = {"player_email", "balance", "available_balance", "pending", "debt"}

# -- helpers ------------------------------------------------------------------------------------


async def credit(api: Api, tenant_id: str, email: str, amount: str = "50", **extra: Any) -> Response:
    return await api.credit(tenant_id, email, amount, **extra)


def with_key(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """An adjustment body with a fresh idempotency key (the admin API requires one)."""
    return {**body, **changes, "idempotency_key": ids.new_id("adj")}


async def funded(api: Api, tenant_id: str, email: str, amount: str = "50") -> dict[str, Any]:
    resp = await credit(api, tenant_id, email, amount)
    assert resp.status == 200, resp
    return dict(resp.body)


async def purchase(api: Api, key: str, email: str, price: str, quantity: int = 1) -> dict[str, Any]:
    body = {
        "player_email": email,
        "item_id": "sword",
        "item_name": "Sword",
        "price": price,
        "quantity": quantity,
        "idempotency_key": ids.new_id("test"),
    }
    resp = await api.post("/api/item-purchases/purchase-item", key=key, json=body)
    assert resp.status == 200, resp
    return dict(resp.body)


async def balance(api: Api, key: str, email: str) -> Response:
    return await api.get("/api/players/balance?" + urllib.parse.urlencode({"player_email": email}), key=key)


async def balance_of(api: Api, key: str, email: str) -> str:
    resp = await balance(api, key, email)
    assert resp.status == 200, resp
    return str(resp.body["balance"])


async def entries_page(api: Api, key: str, *, cursor: str | None = None, limit: int | None = None) -> Response:
    params: dict[str, Any] = {}
    if cursor is not None:
        params["cursor"] = cursor
    if limit is not None:
        params["limit"] = limit
    return await api.get("/api/ledger/entries?" + urllib.parse.urlencode(params), key=key)


async def all_entries(api: Api, key: str) -> list[dict[str, Any]]:
    resp = await entries_page(api, key, limit=1000)
    assert resp.status == 200, resp
    assert resp.body["has_more"] is False
    return list(resp.body["data"])


def entry_seq(entry_id: str) -> int:
    """The opaque entry id is base64 of "e:<n>"; decoded only to check the order."""
    text = base64.urlsafe_b64decode(entry_id + "=" * (-len(entry_id) % 4)).decode()
    kind, _, value = text.partition(":")
    assert kind == "e", entry_id
    return int(value)


async def export(api: Api, key: str) -> tuple[aiohttp.ClientResponse, list[Any]]:
    assert api.session is not None
    async with api.session.get(
        api.base_url + "/api/players/balances/export", headers={"X-Game-Secret-Key": key}
    ) as resp:
        raw = await resp.read()
    assert resp.status == 200, raw[:500]
    text = raw.decode()
    assert text.endswith("\n")
    return resp, [json.loads(line) for line in text.split("\n")[:-1]]


def assert_summary(line: dict[str, Any], count: int) -> None:
    assert line["count"] == count
    assert ISO.match(line["snapshot_at"]), line
    snapshot = datetime.datetime.strptime(line["snapshot_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert abs((datetime.datetime.now(datetime.UTC) - snapshot).total_seconds()) < 300
    assert line["currency_name"] == "Gold Coins"


def minor_text(minor: int) -> str:
    """What the API shows for an amount of `minor` hundredths: "3", "0.35", "12.50"."""
    whole, frac = divmod(minor, 100)
    return str(whole) if frac == 0 else f"{whole}.{frac:02d}"
