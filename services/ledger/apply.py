"""One write applied in memory, inside a batch (`engine.py` loads the state and writes the batch).

An `Op` is checked completely before it changes anything, so an op that fails (insufficient funds,
an unknown hold) leaves the batch's state as it found it and does not affect the others.

Kinds of op:

- "transfer": balanced postings, posted now. With `hold_id` (a clawback that ends a dispute), that
  hold is voided first, in the same transaction, so the currency it froze is never spendable.
- "hold": postings reserved (the debits pending) until posted, voided or expired (never, without
  `expires_in_ms`: a payout's hold).
- "freeze": a hold of at most what its postings name, clamped to the debited account's available
  balance as the op is applied (a dispute's freeze: a spend queued just before it cannot race it),
  with no expiry. Nothing available: status "none", nothing written but the idempotency record.
- "post" / "void": resolve a hold (`quiet`: one no longer pending answers its status).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from services.common import errors, ids
from services.common.logs import request_id_var
from services.ledger import chart

if TYPE_CHECKING:
    from services.ledger.writes import Batch


class InsufficientBalance(errors.PaymentRequired):
    default_error = "insufficient_balance"
    default_error_code = "INSUFFICIENT_BALANCE"


class PlayerInDebt(errors.PaymentRequired):
    """A player wallet below zero (a clawback of spent currency): no debit until it is repaid."""

    default_error = "player_in_debt"
    default_error_code = "PLAYER_IN_DEBT"


EventBuilder = Callable[[dict[str, Any]], tuple[str, dict[str, Any]] | None]


@dataclasses.dataclass
class Op:
    """One write. `kind` is "transfer", "hold", "freeze", "post" or "void"."""

    kind: str
    tenant_id: str
    scope: str
    key: str
    request_hash: bytes
    txn_kind: str = ""
    postings: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    # The hold a "post" or "void" resolves, or a "transfer" voids first.
    hold_id: str = ""
    # The kind that hold must have (a dispute's "dispute_hold"); any other is HOLD_NOT_FOUND.
    hold_kind: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    allow_debt: frozenset[str] = frozenset()
    expires_in_ms: int = 0
    # Stored with the result (and so answered again on a replay): e.g. a purchase's split.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Builds the outbox event from the result, inside the same database transaction.
    event: EventBuilder | None = None
    # A hold that is no longer pending is answered, not an error (the expiry loop, a release).
    quiet: bool = False
    # Another write this one depends on, by its idempotency (scope, key): it must have been applied
    # (in an earlier batch or earlier in this one), and `requires_check` (given its stored result)
    # answers None or why this op does not fit it. A transfer's release requires its hold.
    requires: tuple[str, str] | None = None
    requires_check: Callable[[dict[str, Any]], str | None] | None = None
    # A payout's settlement or release: the hold it posts or voids is the transaction of the write
    # it requires (the engine sets `hold_id` from that write's result; the caller never names it).
    hold_of_required: bool = False
    # A payout's return: its postings built from the required write's result (what the settlement
    # posted); until then `postings` name its accounts with zero amounts.
    postings_of_required: Callable[[dict[str, Any]], list[tuple[str, int]]] | None = None
    # The request that asked for it, recorded with the transaction.
    request_id: str = dataclasses.field(default_factory=request_id_var.get)


@dataclasses.dataclass
class AccountState:
    id: int
    info: chart.AccountInfo
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    dirty: bool = False

    @property
    def balance(self) -> int:
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        return self.balance - self.debits_pending

    def snapshot(self) -> dict[str, int]:
        return {"balance": self.balance, "pending": self.debits_pending, "available": self.available}


@dataclasses.dataclass
class HoldState:
    id: str
    tenant_id: str
    kind: str
    status: str
    postings: list[tuple[str, int]]
    expires_at: datetime.datetime | None


def nets(postings: list[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for code, amount in postings:
        out[code] = out.get(code, 0) + amount
    return {code: n for code, n in out.items() if n != 0}


def _credits(moves: dict[str, int]) -> int:
    """What a write moves: the sum of its credits (equal to its debits)."""
    return sum(n for n in moves.values() if n > 0)


def check_debits(op: Op, moves: dict[str, int], b: Batch, *, releasing: dict[str, int]) -> None:
    """Every constrained account debited keeps available >= 0, unless the op may leave a debt.
    `releasing` is what this op takes off an account's pending debits (posting or voiding a hold)."""
    for code, net in moves.items():
        acct = b.accounts[code]
        if net >= 0 or not acct.info.constrained or code in op.allow_debt:
            continue
        if acct.available + releasing.get(code, 0) + net < 0:
            if acct.info.kind == "player" and acct.balance < 0:
                # Its own code: a player with a debt is told to repay it, not to top up "a bit".
                raise PlayerInDebt("The player's wallet carries a debt; no spending until it is repaid.")
            if acct.info.kind == "player":
                raise InsufficientBalance("The player's available balance is too low for this.")
            raise InsufficientBalance(f"Insufficient funds in {acct.info.kind} account.")


def _post(txn_id: str, tenant_id: str, moves: dict[str, int], b: Batch) -> None:
    for code in sorted(moves):
        acct = b.accounts[code]
        net = moves[code]
        if net < 0:
            acct.debits_posted -= net
        else:
            acct.credits_posted += net
        acct.dirty = True
        # Tagged with the account's tenant: both sides of a movement between tenants see it.
        b.entry_rows.append((txn_id, chart.entry_tenant(acct.info, tenant_id), acct.id, net, acct.balance))


def _pend(moves: dict[str, int], b: Batch, sign: int) -> None:
    """Reserve (sign 1) or release (sign -1) a hold's postings as pending totals."""
    for code, net in moves.items():
        acct = b.accounts[code]
        if net < 0:
            acct.debits_pending -= sign * net
        else:
            acct.credits_pending += sign * net
        acct.dirty = True


def _found_hold(op: Op, b: Batch) -> HoldState:
    hold = b.holds.get(op.hold_id)
    if hold is None or hold.tenant_id != op.tenant_id or (op.hold_kind and hold.kind != op.hold_kind):
        raise errors.NotFound("No such hold.", error_code="HOLD_NOT_FOUND")
    return hold


def _result(txn_id: str, status: str, touched: set[str], moved: int, op: Op, b: Batch) -> dict[str, Any]:
    return {
        "transaction_id": txn_id,
        "status": status,
        "created_at": b.now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "balances": {code: b.accounts[code].snapshot() for code in sorted(touched)},
        "moved_minor": moved,
        **op.extra,
    }


def apply_op(op: Op, b: Batch) -> dict[str, Any]:
    if op.kind in ("post", "void"):
        return _resolve(op, b)
    postings = op.postings
    if op.kind == "freeze":
        # (debited, -most), (credited, most): hold what the debited account has, at most `most`.
        (debited, debit), (credited, _) = postings
        held = min(-debit, max(0, b.accounts[debited].available))
        if held == 0:
            return _result("", "none", {debited}, 0, op, b)
        postings = [(debited, -held), (credited, held)]
    moves = nets(postings)
    if sum(moves.values()) != 0 or not moves:
        raise errors.InvalidRequest("postings must sum to zero and move something")
    freed = _hold_to_free(op, moves, b) if op.hold_id else None
    releasing = {code: -n for code, n in freed[1].items() if n < 0} if freed else {}
    check_debits(op, moves, b, releasing=releasing)

    # Checked: from here on the op changes the batch's state.
    touched = set(moves)
    if freed is not None:
        hold, hold_moves = freed
        _pend(hold_moves, b, -1)
        hold.status = "voided"
        b.txn_status_updates.append((hold.id, hold.status))
        touched |= set(hold_moves)
    txn_id = ids.new_id("txn")
    expires_at = None
    if op.kind == "transfer":
        status = "posted"
        _post(txn_id, op.tenant_id, moves, b)
    else:
        status = "pending"
        _pend(moves, b, 1)
        if op.kind == "hold" and op.expires_in_ms:
            expires_at = b.now + datetime.timedelta(milliseconds=op.expires_in_ms)
        # A later op of this batch may resolve it (a payout's hold and its release sent at once).
        b.holds[txn_id] = HoldState(txn_id, op.tenant_id, op.txn_kind, status, postings, expires_at)
    postings_json = json.dumps([{"account": c, "amount": a} for c, a in postings])
    # The request id joins the stored metadata for the audit trail; it is not part of the
    # idempotency hash, so a retry (a new request id) still replays.
    stored = {**op.metadata, "request_id": op.request_id} if op.request_id else op.metadata
    b.txn_rows.append((txn_id, op.tenant_id, op.txn_kind, status, postings_json, json.dumps(stored), expires_at))
    return _result(txn_id, status, touched, _credits(moves), op, b)


def _hold_to_free(op: Op, moves: dict[str, int], b: Batch) -> tuple[HoldState, dict[str, int]] | None:
    """The hold a transfer voids first (None if it is no longer pending): it must reserve only
    accounts this transfer debits (a clawback's: its own player's)."""
    hold = _found_hold(op, b)
    hold_moves = nets(hold.postings)
    if any(n < 0 and moves.get(code, 0) >= 0 for code, n in hold_moves.items()):
        raise errors.NotFound("No such hold of this player.", error_code="HOLD_NOT_FOUND")
    return (hold, hold_moves) if hold.status == "pending" else None


def _resolve(op: Op, b: Batch) -> dict[str, Any]:
    hold = _found_hold(op, b)
    if hold.status != "pending":
        if op.quiet:
            return {"transaction_id": hold.id, "status": hold.status, "balances": {}, "moved_minor": 0, **op.extra}
        raise errors.Conflict(f"The hold is already {hold.status}.", error_code="HOLD_NOT_PENDING")
    moves = nets(hold.postings)
    if op.kind == "post":
        if hold.expires_at is not None and hold.expires_at <= b.now:
            raise errors.Conflict("The hold has expired.", error_code="HOLD_EXPIRED")
        check_debits(op, moves, b, releasing={code: -net for code, net in moves.items() if net < 0})
    _pend(moves, b, -1)
    if op.kind == "post":
        _post(hold.id, hold.tenant_id, moves, b)
    hold.status = "posted" if op.kind == "post" else "voided"
    b.txn_status_updates.append((hold.id, hold.status))
    return _result(hold.id, hold.status, set(moves), _credits(moves), op, b)
