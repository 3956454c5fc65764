"""The declarations of the ledger routes (`ledger_api.py`): request bodies, queries, answers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from services.common import limits
from services.gateway import answers, fields
from services.gateway.answers import Time, UnitsOut
from services.gateway.fields import Email, IdempotencyKey, Metadata, Query, Request, TenantRef

DEBT = (
    "What the player owes (0 when nothing): a refund or a lost dispute took back currency already"
    " spent, so the balance is below zero by this much; the player's next currency purchase repays it"
    " first, and no spending passes until it is repaid (402 PLAYER_IN_DEBT)."
)
# The item purchase's refusals, in its OpenAPI description (the 402s differ in what the player can do).
PURCHASE_ITEM_REFUSALS = (
    "402 `INSUFFICIENT_BALANCE`: the player's available balance is below the total; nothing changed."
    " 402 `PLAYER_IN_DEBT`: the player's wallet is below zero (a refund or lost dispute took back"
    " currency already spent); no spending until a currency purchase repays the debt; nothing changed."
)


class PurchaseItem(Request):
    player_email: Email
    item_id: Annotated[str, fields.non_blank(limits.ITEM_ID_LEN_MAX)]
    item_name: Annotated[str, fields.non_blank(limits.ITEM_NAME_LEN_MAX)]
    price: Annotated[int, fields.units(limits.PRICE_MINOR_MAX)]
    quantity: Annotated[int, Field(ge=1, le=limits.QUANTITY_MAX)] | None = Field(
        default=None, description="1 if absent."
    )
    idempotency_key: IdempotencyKey
    metadata: Metadata | None = None


class PurchaseItemAnswer(answers.Answer):
    """Purchased, or (duplicate: true) the first result for this idempotency key."""

    status: Literal["success"]
    transaction_id: str
    player_email: str
    item_id: str
    quantity: int
    price: UnitsOut
    total: UnitsOut
    new_balance: UnitsOut
    debt: UnitsOut = Field(description=DEBT)
    partner_amount: UnitsOut
    network_fee: UnitsOut
    currency_name: str
    duplicate: bool
    created_at: Time


class BalanceQuery(Query):
    player_email: Email


class BalancesBody(Request):
    player_emails: Annotated[list[Email], Field(min_length=1, max_length=limits.BATCH_EMAILS_MAX)]


class BalanceLine(answers.BalanceLine):
    """A player's balance; `balance` is negative while the player carries a debt."""

    debt: UnitsOut = Field(description=DEBT)


class Balance(BalanceLine):
    """The balance; an unknown player reads as zero."""

    currency_name: str


class Balances(answers.Answer):
    """Balances in the order asked; unknown players read as zero."""

    currency_name: str
    balances: list[BalanceLine]


class ExportSummary(answers.Answer):
    count: int
    snapshot_at: Time
    currency_name: str


class EntriesQuery(Query):
    cursor: str | None = Field(default=None, description="next_cursor of the page before (opaque).")
    limit: Annotated[int, fields.query_int(1, limits.ENTRIES_LIMIT_MAX)] = 100


class Entry(answers.Answer):
    entry_id: str
    transaction_id: str
    account: str
    player_email: str | None = None
    amount: UnitsOut
    balance_after: UnitsOut | None
    kind: str
    created_at: Time


class Entries(answers.Answer):
    """A page of entries, oldest first: follow next_cursor while has_more."""

    data: list[Entry]
    has_more: bool
    next_cursor: str | None


class Revenue(answers.Answer):
    """Partner revenue, in USD and in units: owed (not yet paid out), of which held (by payouts
    not yet paid or voided) and available (owed - held: what a new payout may take); paid out
    (less what ACH returns credited back), returned (credited back) and lifetime (earned)."""

    owed_usd: str
    paid_out_usd: str
    lifetime_usd: str
    held_usd: str
    available_usd: str
    returned_usd: str
    owed_units: UnitsOut
    paid_out_units: UnitsOut
    lifetime_units: UnitsOut
    held_units: UnitsOut
    available_units: UnitsOut
    returned_units: UnitsOut
    currency_name: str


class Adjust(Request):
    tenant_id: TenantRef
    player_email: Email
    amount: Annotated[int, fields.units(limits.ADJUSTMENT_MINOR_MAX)]
    reason: Annotated[str, fields.printable(limits.REASON_LEN_MAX)]
    # Required: a key invented by the server would make a retried request move money twice.
    idempotency_key: IdempotencyKey


class Adjusted(answers.Answer):
    """Adjusted, or (duplicate: true) the first result for this idempotency key."""

    status: Literal["success"]
    transaction_id: str
    tenant_id: str
    player_email: str
    amount: UnitsOut
    new_balance: UnitsOut | None
    debt: UnitsOut | None = Field(description=DEBT)
    currency_name: str
    reason: str
    duplicate: bool


class NegativeAccount(answers.Answer):
    account: str
    balance: UnitsOut
    pending: UnitsOut


class LedgerCheck(answers.Answer):
    """ok is true only when every check is clean."""

    ok: bool
    total_balance: UnitsOut
    negative_accounts: list[NegativeAccount]
    unbalanced_transactions: list[str]
    drifted_accounts: list[str]
    player_debts: int
    accounts: int
    transactions: int
