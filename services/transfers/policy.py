"""Transfer policy (the seed's "Transfer policy on your tenant"): whether a user of one tenant may
move currency to another, under both tenants' flags. One rule, used by the destinations list and
by every transfer call, so the two can never disagree.

A destination is reachable from a source when both are active and in the same environment (a
sandbox tenant never reaches production money), they are two tenants, and:
- the source allows outgoing transfers and the destination incoming ones;
- a source with `universal_transfers` off lists the destination in its `linked_game_ids`;
- a destination with `universal_transfers` off lists the source in its own.
A refusal names the side and the flag that refused (`code`); the transfer calls will answer it as a
403 with that error code.
"""

from __future__ import annotations

import dataclasses

from invo.v1 import tenants_pb2


@dataclasses.dataclass(frozen=True)
class TransferRefused:
    message: str
    code: str


def refusal(source: tenants_pb2.Tenant, destination: tenants_pb2.Tenant) -> TransferRefused | None:
    """Why `source`'s users may not send to `destination` (None: they may)."""
    if source.tenant_id == destination.tenant_id:
        return TransferRefused("A transfer goes to another tenant; this is the source itself.", code="SAME_TENANT")
    if destination.status != "active" or destination.environment != source.environment:
        return TransferRefused(
            "The destination tenant is not active in this environment.", code="DESTINATION_UNAVAILABLE"
        )
    if not source.allows_outgoing_transfers:
        return TransferRefused(
            "This tenant does not allow outgoing transfers (allows_outgoing_transfers).",
            code="SOURCE_OUTGOING_DISABLED",
        )
    if not destination.allows_incoming_transfers:
        return TransferRefused(
            "The destination tenant does not allow incoming transfers (allows_incoming_transfers).",
            code="DESTINATION_INCOMING_DISABLED",
        )
    if not source.universal_transfers and destination.tenant_id not in source.linked_game_ids:
        return TransferRefused(
            "This tenant sends only to its linked_game_ids (universal_transfers is off), and the destination"
            " is not one of them.",
            code="SOURCE_NOT_LINKED",
        )
    if not destination.universal_transfers and source.tenant_id not in destination.linked_game_ids:
        return TransferRefused(
            "The destination takes transfers only from its linked_game_ids (universal_transfers is off), and"
            " this tenant is not one of them.",
            code="DESTINATION_NOT_LINKED",
        )
    return None
