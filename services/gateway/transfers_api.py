"""Cross-tenant transfers (the Platform Partners seed). Today: where the calling tenant's users may
send currency, under both tenants' transfer policy (`services/transfers/policy.py`)."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from invo.v1 import tenants_pb2, transfers_pb2
from pydantic import Field

from services.gateway import answers, declare
from services.gateway.context import ctx_of
from services.gateway.fields import Request
from services.gateway.http import json_response

public = declare.Table(security=declare.SDK_KEY)

LIMIT_MAX = 100
TenantId = Annotated[str, Field(pattern=r"^tn_[0-9A-Z]{26}$", examples=["tn_01JD3Q7Z8X9Y0A1B2C3D4E5F6G"])]


class Destinations(Request):
    limit: Annotated[int, Field(ge=1, le=LIMIT_MAX)] = Field(
        default=LIMIT_MAX, examples=[LIMIT_MAX], description=f"At most this many (1 to {LIMIT_MAX})."
    )
    starting_after: TenantId | None = Field(
        default=None, description="The next page: the previous answer's next_starting_after."
    )


class Destination(answers.Answer):
    tenant_id: str
    name: str
    currency_name: str


class DestinationList(answers.Answer):
    """The active tenants reachable from yours, in tenant_id order; more when has_more."""

    data: list[Destination]
    has_more: bool
    next_starting_after: str | None


@public.declare(
    "POST",
    "/api/transfers/available-destinations",
    summary="The tenants your users may transfer to, under both tenants' transfer policy.",
    body=Destinations,
    body_required=False,
    answers={200: DestinationList},
)
async def available_destinations(request: web.Request, body: Destinations) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    resp: transfers_pb2.ListDestinationsResponse = await ctx.backends.call(
        ctx.backends.transfers.ListDestinations,
        transfers_pb2.ListDestinationsRequest(
            source_tenant_id=tenant.tenant_id, after_tenant_id=body.starting_after or "", limit=body.limit
        ),
    )
    return json_response(
        {
            "data": [
                {"tenant_id": d.tenant_id, "name": d.name, "currency_name": d.currency_name} for d in resp.destinations
            ],
            "has_more": resp.has_more,
            "next_starting_after": resp.next_after_tenant_id or None,
        }
    )
