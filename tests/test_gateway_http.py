"""The gateway's HTTP surface: the error envelope everywhere, request ids, strict bodies,
health and readiness, and the OpenAPI document in step with the routes."""

from __future__ import annotations

import json
import re
import uuid

from devstack.stack import Stack
from services.common.config import Settings
from services.gateway import surfaces
from services.gateway.app import create_app
from services.gateway.backends import Backends
from services.gateway.context import CTX
from tests import hostile_support as hs
from tests.helpers import Api, assert_envelope, eventually


async def test_request_id_is_echoed_and_carried_to_the_tenants_service(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    resp = await api.get("/api/tenant", key=t["sdk_key"])
    rid = resp.headers["X-Request-Id"]
    assert re.fullmatch(r"req_[0-9a-f]{24}", rid)
    # A fresh tenant, so the gateway's key cache misses and the call goes to the tenants service.
    t = await api.create_tenant()
    mine = "partner-trace-" + t["tenant_id"][-8:]
    resp = await api.get("/api/tenant", key=t["sdk_key"], headers={"X-Request-Id": mine})
    assert resp.headers["X-Request-Id"] == mine

    async def logged() -> bool:
        text = (stack.logs / "tenants.log").read_text()
        return f'"request_id": "{mine}"' in text

    await eventually(logged, timeout_s=5)
    # An unsafe id is replaced, not echoed.
    resp = await api.get("/healthz", headers={"X-Request-Id": "x" * 200})
    assert resp.headers["X-Request-Id"].startswith("req_")


async def test_unknown_route_and_method_use_the_envelope(api: Api) -> None:
    assert_envelope(await api.get("/nope"), 404, "NOT_FOUND")
    assert_envelope(await api.request("DELETE", "/healthz"), 405, "METHOD_NOT_ALLOWED")
    # Under /api the key is checked first, so a stranger learns nothing about routes.
    assert_envelope(await api.get("/api/nope"), 401, "MISSING_API_KEY")


async def test_bad_admin_bodies_are_400_and_change_nothing(api: Api) -> None:
    """Every field problem names its field in `param` (a dotted path when nested)."""
    xy = b'"name": "x", "currency_name": "y"'
    cases: list[tuple[bytes, str, str | None]] = [
        (b"", "INVALID_JSON", None),
        (b"{not json", "INVALID_JSON", None),
        (b"[1, 2]", "INVALID_JSON", None),
        (b"{" + xy + b', "network_fee_percentage": NaN}', "INVALID_JSON", None),
        (b'{"name": "x", "name": "z", "currency_name": "y"}', "INVALID_JSON", None),  # a key twice
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "INVALID_JSON", None),  # nested past any parser's depth
        (b"{" + xy + b', "bogus": 1}', "UNKNOWN_FIELD", "bogus"),
        (b'{"currency_name": "y"}', "MISSING_PARAMETER", "name"),
        (b'{"name": null, "currency_name": "y"}', "MISSING_PARAMETER", "name"),
        (b"{" + xy + b', "network_fee_percentage": "10.005"}', "INVALID_PARAMETER", "network_fee_percentage"),
        (b"{" + xy + b', "network_fee_percentage": "-1"}', "INVALID_PARAMETER", "network_fee_percentage"),
        (b"{" + xy + b', "network_fee_percentage": "101"}', "INVALID_PARAMETER", "network_fee_percentage"),
        (b"{" + xy + b', "network_fee_percentage": 1e400}', "INVALID_PARAMETER", "network_fee_percentage"),
        # The limit is the tenants service's own (services/common/limits.py), answered at the edge.
        (b"{" + xy + b', "transfer_fee_percentage": "7"}', "INVALID_PARAMETER", "transfer_fee_percentage"),
        (b"{" + xy + b', "transfer_fee_percentage": "6.51"}', "INVALID_PARAMETER", "transfer_fee_percentage"),
        (b"{" + xy + b', "universal_transfers": true}', "INVALID_PARAMETER", "universal_transfers"),
        (b"{" + xy + b', "allows_outgoing_transfers": "yes"}', "INVALID_PARAMETER", "allows_outgoing_transfers"),
        (b"{" + xy + b', "environment": "staging"}', "INVALID_PARAMETER", "environment"),
        (b"{" + xy + b', "linked_game_ids": ["not-a-tenant"]}', "INVALID_PARAMETER", "linked_game_ids"),
        (b"{" + xy + b', "spending_caps": {"daily_usd": "1.001"}}', "INVALID_PARAMETER", "spending_caps.daily_usd"),
        (b"{" + xy + b', "spending_caps": {"weekly_usd": "1"}}', "UNKNOWN_FIELD", "spending_caps.weekly_usd"),
        (b"{" + xy + b', "rate_limit_per_second": 0}', "INVALID_PARAMETER", "rate_limit_per_second"),
        (b"{" + xy + b', "rate_limit_per_second": "5"}', "INVALID_PARAMETER", "rate_limit_per_second"),
        (b'{"name": "", "currency_name": "y"}', "INVALID_PARAMETER", "name"),
        (b'{"name": "   ", "currency_name": "y"}', "INVALID_PARAMETER", "name"),
        (
            b"{" + xy + b', "environment": "production", "webhook_url": "http://a.example"}',
            "INVALID_PARAMETER",
            "webhook_url",
        ),
        (b"{" + xy + b', "webhook_url": "ftp://a.example"}', "INVALID_PARAMETER", "webhook_url"),
        (b"{" + xy + b', "webhook_url": "https://user:pw@a.example"}', "INVALID_PARAMETER", "webhook_url"),
    ]
    for body, code, param in cases:
        resp = await api.post("/admin/tenants", admin=True, data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400, (body[:80], resp)
        assert_envelope(resp, 400, code)
        assert resp.body.get("param") == param, (body[:80], resp)


async def test_settings_round_trip_and_patch(api: Api) -> None:
    other = await api.create_tenant()
    t = await api.create_tenant(
        environment="production",
        webhook_url="https://partner.example/hooks",
        network_fee_percentage=12.5,
        transfer_fee_percentage="5",
        allows_incoming_transfers=False,
        universal_transfers="no",
        linked_game_ids=[other["tenant_id"]],
        spending_caps={"hourly_usd": "50.00", "daily_usd": "200", "monthly_usd": None},
        rate_limit_per_second=50,
    )
    got = (await api.get(f"/admin/tenants/{t['tenant_id']}", admin=True)).body
    assert got["environment"] == "production"
    assert got["webhook_url"] == "https://partner.example/hooks"
    assert (got["network_fee_percentage"], got["transfer_fee_percentage"]) == ("12.5", "5")
    assert got["allows_incoming_transfers"] is False and got["allows_outgoing_transfers"] is True
    assert got["universal_transfers"] == "no" and got["linked_game_ids"] == [other["tenant_id"]]
    assert got["spending_caps"] == {"hourly_usd": "50.00", "daily_usd": "200.00", "monthly_usd": None}
    assert got["rate_limit_per_second"] == 50
    patched = await api.patch(
        f"/admin/tenants/{t['tenant_id']}",
        admin=True,
        json={"spending_caps": {"hourly_usd": None}, "webhook_url": None, "currency_name": "Gems"},
    )
    assert patched.status == 200, patched
    assert patched.body["spending_caps"]["hourly_usd"] is None
    assert patched.body["spending_caps"]["daily_usd"] == "200.00"
    assert patched.body["webhook_url"] is None and patched.body["currency_name"] == "Gems"
    # A production tenant's webhook must be https.
    resp = await api.patch(f"/admin/tenants/{t['tenant_id']}", admin=True, json={"webhook_url": "http://x.example"})
    assert_envelope(resp, 400, "INVALID_PARAMETER")
    assert resp.body["param"] == "webhook_url"
    resp = await api.patch(f"/admin/tenants/{t['tenant_id']}", admin=True, json={"status": "closed"})
    assert_envelope(resp, 400, "INVALID_PARAMETER")
    assert resp.body["param"] == "status"
    assert_envelope(await api.get("/admin/tenants/tn_01ABCDEFGHJKMNPQRSTVWXYZ01", admin=True), 404, "TENANT_NOT_FOUND")
    assert_envelope(await api.patch("/admin/tenants/nope", admin=True, json={}), 404, "TENANT_NOT_FOUND")


async def test_oversized_body_is_413(api: Api) -> None:
    resp = await api.post(
        "/admin/tenants",
        admin=True,
        data=b'{"name": "' + b"x" * 70000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert_envelope(resp, 413, "PAYLOAD_TOO_LARGE")


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.get("/healthz")).body == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status == 200 and ready.body["status"] == "ready"
    # Every backend the gateway routes to, and only those.
    assert set(ready.body["services"]) == {
        "tenants",
        "ledger",
        "payments",
        "transfers",
        "payouts",
        "webhooks",
        "subscriptions",
    }


async def test_openapi_document_matches_the_routes(api: Api, stack: Stack) -> None:
    """Every routed (path, method) of every surface is documented, and nothing else is; each
    operation carries its surface's security and the statuses every route can answer."""
    doc = (await api.get("/openapi.json")).body
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    app = create_app(stack_settings(stack), Backends(stack_settings(stack)))
    # The operators' console (/console/) is HTML for a browser over the admin API, not part of the API.
    routed = {(path, method) for path, method in surfaces.routes(app) if not path.startswith("/console/")}
    for prefix in ("/api/", "/admin/", "/webhooks/", "/checkout/"):
        assert any(path.startswith(prefix) for path, _ in routed), f"no {prefix} routes found"
    assert {("/healthz", "GET"), ("/readyz", "GET"), ("/openapi.json", "GET")} <= routed
    assert documented == routed
    await app[CTX].backends.close()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["GameSecretKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Game-Secret-Key",
        "description": schemes["GameSecretKey"]["description"],
    }
    assert schemes["OperatorBearer"]["type"] == "http" and schemes["OperatorBearer"]["scheme"] == "bearer"
    assert schemes["CheckoutSession"]["type"] == "http" and schemes["CheckoutSession"]["scheme"] == "bearer"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            want: list[dict[str, list[str]]] = (
                [{"GameSecretKey": []}]
                if path.startswith("/api/")
                else [{"OperatorBearer": []}]
                if path.startswith("/admin/")
                # The hosted page's own API is opened by the session token; the page and its files by nothing.
                else [{"CheckoutSession": []}]
                if path.startswith("/checkout/api/")
                else []
            )
            assert op["security"] == want, (path, method)
            statuses = set(op["responses"])
            assert {"400", "405"} <= statuses, (path, method)
            if "requestBody" in op:
                assert "413" in statuses, (path, method)
            if want:
                assert {"401", "503"} <= statuses, (path, method)
            if path.startswith("/api/"):
                assert {"403", "429"} <= statuses, (path, method)
    # A limit lives in one place: the document states the tenants service's own.
    settings = doc["components"]["schemas"]["CreateTenant"]["properties"]
    assert "6.5" in settings["transfer_fee_percentage"]["anyOf"][0]["description"]


def stack_settings(stack: Stack) -> Settings:
    return Settings.from_env(stack.env)


async def test_parser_errors_answer_the_envelope_and_log_no_input(stack: Stack) -> None:
    """aiohttp's own parser refusals (issue 11, finding 9): the envelope with a request id, not
    text/plain echoing the input, and the input in no log line (a NUL in an Authorization header
    would have put the token there, at error level)."""
    marker = f"echo{uuid.uuid4().hex}"
    requests = [
        hs.build("GET", "/healthz", [("X-Pad", marker + "A" * 9000)]),
        hs.build("GET", f"/healthz?pad={marker}{'A' * 9000}"),
        hs.build("GET", "/healthz", [("X-Pad", b"a\x00" + marker.encode())]),
        hs.build("GET", "/admin/ledger/check", [("Authorization", b"Bearer " + marker.encode() + b"\x00")]),
        hs.build("GET", b"/heal\xffthz/" + marker.encode()),
    ]
    rids = []
    for raw in requests:
        resp = await hs.send(stack.gateway_url, raw)
        hs.check_refusal(resp, [400], ["INVALID_REQUEST"])
        assert marker.encode() not in resp.raw, resp.raw[:200]
        rids.append(resp.headers["X-Request-Id"])
    log = stack.logs / "gateway.log"

    async def logged() -> bool:
        text = log.read_text()
        return all(f'"request_id": "{rid}"' in text for rid in rids)

    await eventually(logged, timeout_s=5)
    lines = log.read_text().splitlines()
    assert not [line for line in lines if marker in line]
    for rid in rids:
        (line,) = [json.loads(x) for x in lines if f'"request_id": "{rid}"' in x]
        assert line["level"] == "info", line


async def test_a_request_id_is_echoed_only_when_ascii(stack: Stack) -> None:
    for sent in ("caf\u00e9-1".encode(), b"\xff\xfe", "\u0661\u0662".encode()):
        resp = await hs.send(stack.gateway_url, hs.build("GET", "/healthz", [("X-Request-Id", sent)]))
        assert resp.status == 200 and resp.headers["X-Request-Id"].startswith("req_"), resp.headers


async def test_a_write_that_takes_no_body_refuses_a_field_and_changes_nothing(api: Api) -> None:
    """Cancel, approve, redeliver, resume...: a body with a field in it is refused like an
    undeclared field of any body (400 UNKNOWN_FIELD, before the route looks anything up); no body
    and an empty object are the same request."""
    t = await api.create_tenant(webhook_url=hs.SAFE_WEBHOOK_URL)
    session = await api.post(
        "/api/checkout/sessions",
        key=t["sdk_key"],
        json={
            "player_email": f"nobody-{uuid.uuid4().hex[:8]}@example.com",
            "usd_amount": "10.00",
            "success_url": "https://yourgame.example/ok",
            "cancel_url": "https://yourgame.example/no",
        },
    )
    assert session.status == 201, session
    token = session.body["checkout_url"].partition("session=")[2]
    doc = (await api.get("/openapi.json")).body
    routes = [
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if op.get("requestBody", {}).get("description", "").startswith("None:")
    ]
    assert ("POST", "/api/subscriptions/{subscription_id}/resume") in routes and len(routes) >= 9, routes
    for method, path in routes:
        target = re.sub(r"\{[a-z_]+\}", "x_" + "0" * 26, path)
        auth: dict[str, object] = {"key": t["sdk_key"]} if path.startswith("/api/") else {"admin": True}
        if path.startswith("/checkout/"):
            auth = {"headers": {"Authorization": f"Bearer {token}"}}
        resp = await api.request(method, target, json={"at_once": True}, **auth)  # type: ignore[arg-type]
        assert_envelope(resp, 400, "UNKNOWN_FIELD")
        assert resp.body["param"] == "at_once", (method, path, resp.body)

    async def deliveries() -> list[str]:
        got = await api.get("/api/webhooks/deliveries?limit=100", key=t["sdk_key"])
        return sorted(d["delivery_id"] for d in got.body["data"])

    before = await deliveries()
    assert_envelope(await api.post("/api/webhooks/test", key=t["sdk_key"], json={"event": "x"}), 400, "UNKNOWN_FIELD")
    assert await deliveries() == before
    assert (await api.post("/api/webhooks/test", key=t["sdk_key"])).status == 201
    assert (await api.post("/api/webhooks/test", key=t["sdk_key"], json={})).status == 201
    assert len(await deliveries()) == len(before) + 2
