"""The transfers' check, after each phase: every transfer the workload made, held to exactly once
against what the client was told and the ledger's own entries (`faults.transfers` makes them).

- Each transfer is read (`GET /api/transfers/{id}`, the source's view) once it is not `claiming`
  or `returning`: the sweep finishes what a crash left there, and is waited on (at most
  SWEEP_WAIT_S); one still there is a finding.
- It reads `completed` iff the client was told a claim succeeded, with that claim's transaction,
  and the destination reads it completed to that player; `cancelled` iff told a cancel succeeded,
  with its return's transaction; open (waiting for its PIN or its claim) otherwise. Its amount,
  fee (10%), total debited and hold are the ones the client asked and was answered.
- In the ledger: the hold moved exactly amount + fee out of the sender's wallet, the settlement
  exactly the amount into the recipient's (on the destination's side), a return amount + fee
  back to the sender, each once; and every transaction of a transfer's kinds that moved a wallet
  of the run's tenants is one that a transfer of the run names: a second settlement, or a credit
  dressed as one, names none.
- A step refused (verify, claim, cancel) is a finding: the client drives each transfer as the API
  says, so no refusal is right.
"""

from __future__ import annotations

import time
from typing import Any

from faults.client import Stats
from faults.flows import World
from faults.model import ABANDONED, ACKED, REFUSED, UNRESOLVED, Op, minor
from faults.transfers import CANCEL_FLOW, CLAIM_FLOW, ENDING, KINDS, OPEN, read_settled

# What each operation of a transfer wrote in the ledger: its name, and its transaction's kind.
WRITES = {CLAIM_FLOW: ("settlement", "transfer_settle"), CANCEL_FLOW: ("return", "transfer_return")}
HOLD = ("hold", "transfer_hold")
SWEEP_WAIT_S = 60.0  # a crashed worker's lease (INVO_RPC_TIMEOUT_S * 2 + 5) and the sweep's rounds, with room

PlayerTxns = dict[tuple[int, str], dict[str, int]]  # (tenant, transaction) -> {player: minor moved}
TxnKinds = dict[tuple[int, str], str]  # (tenant, transaction) -> its kind, for those that moved a wallet


async def check_transfers(
    world: World, ops: list[Op], moved: PlayerTxns, kinds: TxnKinds, deadline: float, stats: Stats
) -> tuple[int, list[dict[str, Any]]]:
    """The transfers `ops` started, each against its operations, its reads and the ledger; then the
    ledger's transfer transactions that no transfer names (reported with transfer_id "")."""
    transfers = world.model.transfers()
    until = min(deadline, time.monotonic() + SWEEP_WAIT_S)
    wrong: list[dict[str, Any]] = []
    checked = 0
    for transfer_id in dict.fromkeys(op.transfer_id for op in ops if op.transfer_id):
        main, *steps = transfers[transfer_id]
        if any(op.outcome == UNRESOLVED for op in (main, *steps)):
            continue  # already a violation (unresolved), and the model cannot say what to expect
        checked += 1
        src = world.tenants[main.tenant]
        status, view = await read_settled(world, src, transfer_id, until, stats=stats)
        problems = [f"the source's read answered {status}"] if status != 200 else []
        problems += _against_client(main, steps, view)
        problems += await _destination(world, steps, transfer_id, deadline, stats)
        problems += _against_ledger(main, steps, moved, kinds)
        if problems:
            wrong.append({**main.summary(), "problems": problems, "read": _brief(view), "steps": _steps(steps)})
    return checked, wrong + unnamed(world, moved, kinds)


def _against_client(main: Op, steps: list[Op], view: dict[str, Any]) -> list[str]:
    amount = -main.delta_minor * 10 // 11
    claims = [op for op in steps if op.flow == CLAIM_FLOW and op.outcome == ACKED]
    cancels = [op for op in steps if op.flow == CANCEL_FLOW and op.outcome == ACKED]
    state = view.get("status")
    problems = []
    if state in ENDING:
        problems.append(f"left {state} after the sweep had its time")
    want = "completed" if claims else "cancelled" if cancels else ""
    if len(claims) + len(cancels) > 1:
        problems.append(f"{len(claims)} claims and {len(cancels)} cancels acknowledged")
    if want and state != want:
        problems.append(f"reads {state}, the client was told {want}")
    if not want and state not in OPEN and state not in ENDING:
        problems.append(f"reads {state}, but the client was told of no claim and no cancel")
    fee = view.get("fee_breakdown") or {}
    asked = (amount, amount // 10, amount + amount // 10)
    read = tuple(minor(v or "0") for v in (view.get("amount"), fee.get("total"), view.get("total_debited")))
    if read != asked:
        problems.append(f"amount, fee, total debited read {read} minor, the client asked {asked}")
    if view.get("hold_transaction_id") != main.transaction_id:
        problems.append(f"holds {view.get('hold_transaction_id')}, the client was answered {main.transaction_id}")
    for end in (claims + cancels)[:1]:
        if view.get("transaction_id") != end.transaction_id:
            problems.append(f"ended by {view.get('transaction_id')}, the client was told {end.transaction_id}")
    if cancels and view.get("end_reason") != "cancelled_by_tenant":
        problems.append(f"cancelled for {view.get('end_reason')}")
    for op in (main, *steps):
        if op.outcome == REFUSED or op.error_code:
            problems.append(f"{op.flow} refused: {op.status} {op.error_code}")
        if op.outcome == ABANDONED:
            problems.append(f"{op.flow} never settled: {op.note.strip('; ')}")
    return problems


async def _destination(world: World, steps: list[Op], transfer_id: str, deadline: float, stats: Stats) -> list[str]:
    """A claimed transfer as its destination reads it: completed, to the player the client named."""
    problems = []
    for claim in (op for op in steps if op.flow == CLAIM_FLOW and op.outcome == ACKED):
        status, view = await read_settled(world, world.tenants[claim.tenant], transfer_id, deadline, stats=stats)
        seen = (status, view.get("role"), view.get("status"), view.get("recipient_email"), view.get("transaction_id"))
        if seen != (200, "destination", "completed", claim.player, claim.transaction_id):
            problems.append(f"the destination reads {seen}")
    return problems


def _against_ledger(main: Op, steps: list[Op], moved: PlayerTxns, kinds: TxnKinds) -> list[str]:
    """The hold, and the settlement or return the client was told of, each moved exactly its
    amount on its one wallet, as a transaction of its kind."""
    problems = []
    for op in (main, *(s for s in steps if s.outcome == ACKED)):
        what, kind = WRITES.get(op.flow, HOLD)
        key = (op.tenant, op.transaction_id)
        if moved.get(key) != {op.player: op.delta_minor}:
            want = {op.player: op.delta_minor}
            problems.append(f"its {what} {op.transaction_id} moved {moved.get(key)} minor, not {want}")
        elif kinds.get(key) != kind:
            problems.append(f"its {what} {op.transaction_id} is a {kinds.get(key)}, not a {kind}")
    return problems


def unnamed(world: World, moved: PlayerTxns, kinds: TxnKinds) -> list[dict[str, Any]]:
    """Transactions of a transfer's kinds that moved a wallet, named by no transfer of the run."""
    named = {(op.tenant, op.transaction_id) for ops in world.model.transfers().values() for op in ops}
    return [
        {
            "transfer_id": "",
            "tenant": key[0],
            "transaction_id": key[1],
            "kind": kind,
            "moved_minor": moved.get(key),
            "problems": [f"a {kind} that moved a wallet, which no transfer of the run names"],
        }
        for key, kind in kinds.items()
        if kind in KINDS and key not in named
    ]


def _brief(view: dict[str, Any]) -> dict[str, Any]:
    keys = ("status", "type", "amount", "total_debited", "hold_transaction_id", "transaction_id", "end_reason")
    return {k: view.get(k) for k in keys}


def _steps(steps: list[Op]) -> list[dict[str, Any]]:
    return [
        {"flow": op.flow, "outcome": op.outcome, "status": op.status, "error_code": op.error_code}
        | {"transaction_id": op.transaction_id, "delta_minor": op.delta_minor, "note": op.note}
        for op in steps
    ]
