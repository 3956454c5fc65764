"""Where a tenant's users may send currency: `POST /api/transfers/available-destinations` and the
policy rule behind it (services/transfers/policy.py), over every combination of the three flags on
both sides."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from invo.v1 import tenants_pb2

from services.transfers.policy import refusal
from tests.helpers import Api, assert_envelope

DESTINATIONS = "/api/transfers/available-destinations"
COMBOS = list(itertools.product([True, False], repeat=6))


def oracle(out: bool, src_universal: bool, src_links: bool, inc: bool, dst_universal: bool, dst_links: bool) -> str:
    """The refusal the seed's three flags on both sides call for, in the order the rule checks them."""
    if not out:
        return "SOURCE_OUTGOING_DISABLED"
    if not inc:
        return "DESTINATION_INCOMING_DISABLED"
    if not src_universal and not src_links:
        return "SOURCE_NOT_LINKED"
    if not dst_universal and not dst_links:
        return "DESTINATION_NOT_LINKED"
    return ""


def tenant(tid: str, **kw: Any) -> tenants_pb2.Tenant:
    base: dict[str, Any] = {
        "status": "active",
        "environment": "sandbox",
        "allows_outgoing_transfers": True,
        "allows_incoming_transfers": True,
        "universal_transfers": True,
    }
    return tenants_pb2.Tenant(tenant_id=tid, **{**base, **kw})


@pytest.mark.parametrize("combo", COMBOS)
def test_the_rule_names_the_side_and_flag_that_refused(combo: tuple[bool, ...]) -> None:
    out, src_universal, src_links, inc, dst_universal, dst_links = combo
    src_id, dst_id = "tn_" + "A" * 26, "tn_" + "B" * 26
    src = tenant(
        src_id,
        allows_outgoing_transfers=out,
        universal_transfers=src_universal,
        linked_game_ids=[dst_id] if src_links else [],
    )
    dst = tenant(
        dst_id,
        allows_incoming_transfers=inc,
        universal_transfers=dst_universal,
        linked_game_ids=[src_id] if dst_links else [],
    )
    refused = refusal(src, dst)
    expected = oracle(*combo)
    assert (refused.code if refused else "") == expected


def test_a_tenant_never_reaches_itself_another_environment_or_a_suspended_one() -> None:
    src = tenant("tn_" + "A" * 26)
    assert (r := refusal(src, src)) is not None and r.code == "SAME_TENANT"
    for other in (
        tenant("tn_" + "B" * 26, environment="production"),
        tenant("tn_" + "B" * 26, status="suspended"),
    ):
        assert (r := refusal(src, other)) is not None and r.code == "DESTINATION_UNAVAILABLE"


async def reachable(api: Api, t: dict[str, Any], *, limit: int = 100) -> list[str]:
    """Every destination of `t`, page after page (bounded)."""
    found: list[str] = []
    body: dict[str, Any] = {"limit": limit}
    for _ in range(200):
        resp = await api.post(DESTINATIONS, key=t["sdk_key"], json=body)
        assert resp.status == 200, resp
        assert set(resp.body) == {"data", "has_more", "next_starting_after"}
        found.extend(d["tenant_id"] for d in resp.body["data"])
        if not resp.body["has_more"]:
            return found
        body = {"limit": limit, "starting_after": resp.body["next_starting_after"]}
    raise AssertionError("the destinations never ended")


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


# Eight combinations through the running network (the 64 of the rule are above): each flag of each
# side alone turned off, and the two linked cases.
LIVE = [
    (True, True, False, True, True, False),
    (False, True, False, True, True, False),
    (True, True, False, False, True, False),
    (True, False, False, True, True, False),
    (True, False, True, True, True, False),
    (True, True, False, True, False, False),
    (True, True, False, True, False, True),
    (True, False, True, True, False, True),
]


@pytest.mark.parametrize("combo", LIVE)
async def test_the_list_honours_both_sides(api: Api, combo: tuple[bool, ...]) -> None:
    out, src_universal, src_links, inc, dst_universal, dst_links = combo
    src = await api.create_tenant(allows_outgoing_transfers=out, universal_transfers=yes_no(src_universal))
    dst = await api.create_tenant(
        name="Destination Game",
        currency_name="Stars",
        allows_incoming_transfers=inc,
        universal_transfers=yes_no(dst_universal),
    )
    for me, other, links in ((src, dst, src_links), (dst, src, dst_links)):
        patched = await api.patch(
            f"/admin/tenants/{me['tenant_id']}",
            admin=True,
            json={"linked_game_ids": [other["tenant_id"]] if links else []},
        )
        assert patched.status == 200, patched
    found = await reachable(api, src)
    assert (dst["tenant_id"] in found) == (oracle(*combo) == ""), (combo, oracle(*combo))
    assert src["tenant_id"] not in found
    assert len(found) == len(set(found)) and found == sorted(found)
    if dst["tenant_id"] in found:
        resp = await api.post(DESTINATIONS, key=src["sdk_key"], json={"limit": 100})
        entries = [d for d in resp.body["data"] if d["tenant_id"] == dst["tenant_id"]]
        assert not entries or entries == [
            {"tenant_id": dst["tenant_id"], "name": "Destination Game", "currency_name": "Stars"}
        ]


async def test_suspended_and_linked_only_destinations(api: Api) -> None:
    src = await api.create_tenant(universal_transfers="no")
    linked, suspended, unlinked = [await api.create_tenant() for _ in range(3)]
    patched = await api.patch(
        f"/admin/tenants/{src['tenant_id']}",
        admin=True,
        json={"linked_game_ids": [linked["tenant_id"], suspended["tenant_id"]]},
    )
    assert patched.status == 200, patched
    assert (
        await api.patch(f"/admin/tenants/{suspended['tenant_id']}", admin=True, json={"status": "suspended"})
    ).status == 200
    assert await reachable(api, src) == [linked["tenant_id"]]
    # One a page: the cursor goes on from the last one and ends.
    assert await reachable(api, src, limit=1) == [linked["tenant_id"]]
    # Linked-only works both ways: the linked tenant reaches the source, the unlinked one does not.
    assert src["tenant_id"] in await reachable(api, linked)
    assert src["tenant_id"] not in await reachable(api, unlinked)


async def test_bad_bodies_are_refused(api: Api) -> None:
    t = await api.create_tenant()
    for body, param in (
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"starting_after": "not-a-tenant"}, "starting_after"),
        ({"destination": "x"}, "destination"),
    ):
        resp = await api.post(DESTINATIONS, key=t["sdk_key"], json=body)
        assert resp.status == 400 and resp.body["param"] == param, (body, resp)
    no_key = await api.post(DESTINATIONS, json={})
    assert_envelope(no_key, 401, "MISSING_API_KEY")
    # No body at all is the defaults.
    assert (await api.post(DESTINATIONS, key=t["sdk_key"])).status == 200
