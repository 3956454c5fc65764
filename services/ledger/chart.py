"""The chart of accounts (design.md, Ledger): what each account code means and whether it may go
below zero.

| code                          | kind    | may go negative                                   |
|-------------------------------|---------|---------------------------------------------------|
| `world:processor`             | world   | yes: money in and out through the card processor  |
| `world:adjustments`           | world   | yes: operators' manual credits and debits         |
| `world:payouts`               | payouts | yes: revenue paid out by ACH                      |
| `player:<tenant>:<email>`     | player  | only by a clawback, which leaves a debt           |
| `tenant:<tenant>:revenue`     | revenue | no                                                |
| `network:fees`                | network | no                                                |
| `transfers:held`              | held    | no                                                |

A clawback's currency returns to `world:processor` (a dispute's freeze is a pending hold of the
player's currency towards it); a player's debt refuses every debit until it is repaid
(`PLAYER_IN_DEBT`).

Only the ledger spells these codes: every other service asks for a domain write (a purchase
credit, a clawback, a transfer, a payout) and the ledger builds its postings here. A posting may
touch only accounts of the request's tenant or the network's own (`world:*`, `network:fees`,
`transfers:held`); a transfer between two tenants is built by the ledger itself.
Each entry is tagged with its account's tenant (the transaction's tenant for the network's own
accounts), so a movement between two tenants shows in both tenants' entries.
"""

from __future__ import annotations

import dataclasses
import re

from services.common import errors
from services.common.players import normalize_email

WORLD_PROCESSOR = "world:processor"
WORLD_ADJUSTMENTS = "world:adjustments"
WORLD_PAYOUTS = "world:payouts"
NETWORK_FEES = "network:fees"
TRANSFERS_HELD = "transfers:held"

_FIXED = {
    WORLD_PROCESSOR: ("world", False),
    WORLD_ADJUSTMENTS: ("world", False),
    WORLD_PAYOUTS: ("payouts", False),
    NETWORK_FEES: ("network", True),
    TRANSFERS_HELD: ("held", True),
}
_TENANT_ID = r"tn_[0-9A-Z]{26}"
_PLAYER = re.compile(rf"^player:({_TENANT_ID}):(.+)$")
_REVENUE = re.compile(rf"^tenant:({_TENANT_ID}):revenue$")


@dataclasses.dataclass(frozen=True)
class AccountInfo:
    code: str
    kind: str
    constrained: bool
    tenant_id: str | None = None
    player_email: str | None = None


# How an entry's account is shown to a partner (`GET /api/ledger/entries`).
PUBLIC_KIND = {
    WORLD_PROCESSOR: "processor",
    WORLD_ADJUSTMENTS: "world",  # as partners have always seen operators' adjustments
    WORLD_PAYOUTS: "payouts",
    NETWORK_FEES: "network_fee",
    TRANSFERS_HELD: "transfers_held",
}


def player(tenant_id: str, email: str) -> str:
    return f"player:{tenant_id}:{normalize_email(email)}"


def player_info(tenant_id: str, email: str) -> AccountInfo:
    """A player's wallet, built from its parts (what `parse` would answer for its code, without
    parsing it back: the balance reads build one per player asked)."""
    normal = normalize_email(email)
    return AccountInfo(f"player:{tenant_id}:{normal}", "player", True, tenant_id=tenant_id, player_email=normal)


def revenue(tenant_id: str) -> str:
    return f"tenant:{tenant_id}:revenue"


def parse(code: str, *, stored: bool = False) -> AccountInfo:
    """What an account code names. A code that will be written must name a normalised email; one
    read back from the database (`stored`) may predate the current rule (an address in Unicode NFD
    kept before emails were NFC-normalised) and is read as it is, never refused."""
    fixed = _FIXED.get(code)
    if fixed is not None:
        return AccountInfo(code, fixed[0], fixed[1])
    m = _PLAYER.match(code)
    if m:
        email = m.group(2)
        if not stored and normalize_email(email) != email:
            raise errors.InvalidRequest(f"account {code[:80]!r}: the email must be normalised")
        return AccountInfo(code, "player", True, tenant_id=m.group(1), player_email=email)
    m = _REVENUE.match(code)
    if m:
        return AccountInfo(code, "revenue", True, tenant_id=m.group(1))
    raise errors.InvalidRequest(f"unknown account {code[:80]!r}", error_code="UNKNOWN_ACCOUNT")


def is_network(info: AccountInfo) -> bool:
    """The network's own accounts: no tenant owns them."""
    return info.tenant_id is None


def check_owned(codes: list[str] | set[str], tenant_id: str) -> None:
    """Refuse a posting to another tenant's account: a caller acting for one tenant can move only
    that tenant's money (and the network's)."""
    for code in codes:
        info = parse(code)
        if info.tenant_id is not None and info.tenant_id != tenant_id:
            raise errors.Forbidden("A posting names an account of another tenant.", error_code="ACCOUNT_NOT_OWNED")


def entry_tenant(info: AccountInfo, txn_tenant_id: str) -> str:
    """The tenant an entry is tagged with: its account's, or the transaction's for the network's own."""
    return info.tenant_id or txn_tenant_id


def public_kind(info: AccountInfo) -> str:
    return PUBLIC_KIND.get(info.code, info.kind)
