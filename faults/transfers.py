"""Cross-tenant transfers in the workload: self-transfers and sends through the gateway, each one
operation initiate -> verify the PIN -> claim (or cancel), and the check that holds every transfer
the workload made to exactly once.

- initiate: one idempotency key per operation, resent on every retry (409 TRANSFER_IN_PROGRESS,
  the first request still holding the row, is asked again); the hold (amount + 10%) leaves the
  sender's wallet: the operation itself (flow `self_transfer`, `send`, ...), under the hold's
  transaction.
- verify: the PIN is read from the development outbox (`GET /admin/dev/sms?phone=`, as the
  player reads their phone); a lost answer or a 503 is sent again, and a 409
  TRANSFER_NOT_AWAITING_PIN after a retry means the earlier try went through: the transfer is read
  (`GET /api/transfers/{id}`), and a self-transfer's claim code, then only in the sender's texts,
  is read there (a send's is always read from the recipient's).
- claim (an operation of its own, flow `transfer_claim`, on the destination's player): the same
  code and player on every retry (200 `duplicate` is the same claim; 409 CLAIM_IN_PROGRESS is
  asked again); or cancel (flow `transfer_cancel`, on the sender), before or after the PIN. A
  cancel answered `returning` (the ledger's return left to the sweep) is read until it ends.

Phone numbers are the run's own (one pair per operation), so each PIN and code is found by its phone.
The check is `faults.transfer_checks`.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from typing import Any

from faults.client import Answer, Stats
from faults.flows import Tenant, World, body_of, settle
from faults.model import ABANDONED, ACKED, REFUSED, UNRESOLVED, Op, Replay, minor

SELF, SEND = "self_transfer", "send"
INITIATE = {SELF: "/api/transfers/initiate-transfer", SEND: "/api/transfers/initiate-send"}
CLAIM = {SELF: "/api/transfers/claim-transfer", SEND: "/api/transfers/claim-currency"}
VERIFY = "/api/transfers/verify-sms"
DEV_SMS = "/admin/dev/sms"
CLAIM_FLOW, CANCEL_FLOW = "transfer_claim", "transfer_cancel"
STEP_FLOWS = (CLAIM_FLOW, CANCEL_FLOW)
KINDS = ("transfer_hold", "transfer_settle", "transfer_return")  # the ledger's transactions of a transfer
AMOUNTS_MINOR = (100, 250, 500, 1230)  # multiples of 0.1 unit; 12.3 splits its fee unevenly
OPEN = ("pending_verification", "claimable")
ENDING = ("claiming", "returning")  # the ledger's write in flight: the sweep finishes what a crash left
IN_PROGRESS = ("TRANSFER_IN_PROGRESS", "CLAIM_IN_PROGRESS")  # 409s that say "the first request is at it"
PIN_RE = re.compile(r"^(\d{6}) is your INVO transfer PIN")
CODE_RE = re.compile(r"\b([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})\b")
POLLS_MAX = 40  # reads of the outbox or of a transfer while waiting on it (capped backoff, within the deadline)
TEXTS_READ = "10"
# Valid US mobile numbers (phonenumbers' metadata): area codes it knows, exchanges never N11.
AREAS = ("415", "212", "312", "617", "206", "303", "512", "404")
EXCHANGES = tuple(n for n in range(200, 1000) if n % 100 != 11)
NUMBERS = 10_000 * len(EXCHANGES) * len(AREAS)


def phone_of(run_id: str, n: int) -> str:
    """The run's n-th phone number: distinct within a run, and runs start far apart."""
    v = (zlib.crc32(run_id.encode()) * 15 + n) % NUMBERS
    line, v = v % 10_000, v // 10_000
    exchange, v = EXCHANGES[v % len(EXCHANGES)], v // len(EXCHANGES)
    return f"+1{AREAS[v % len(AREAS)]}{exchange}{line:04d}"


def units(amount_minor: int) -> str:
    return f"{amount_minor // 100}.{amount_minor % 100:02d}"


def count(op: Op, answer: Answer) -> None:
    """An answer's bookkeeping on `op` without taking it as the operation's answer (a read, a PIN step)."""
    op.attempts += answer.attempts
    op.indefinite += answer.indefinite
    op.elapsed_s += answer.elapsed_s


async def backoff(i: int) -> None:
    await asyncio.sleep(min(1.0, 0.05 * 2**i))  # a retry's pace, while waiting on a condition


async def call(world: World, op: Op, method: str, path: str, *, deadline: float, **kw: Any) -> Answer:
    """One request until a definite answer that is not "in progress" (asked again, the same), or the deadline."""
    for i in range(POLLS_MAX):
        answer = await world.gateway.until_definite(method, path, deadline=deadline, **kw)
        if answer.error_code not in IN_PROGRESS or time.monotonic() >= deadline or i == POLLS_MAX - 1:
            return answer
        count(op, answer)
        await backoff(i)
    raise RuntimeError("unreachable")


async def read_text(world: World, op: Op, phone: str, pattern: re.Pattern[str], deadline: float) -> str:
    """The newest match of `pattern` in the texts `phone` received, once one arrived (or "")."""
    for i in range(POLLS_MAX):
        answer = await world.gateway.until_definite(
            "GET", DEV_SMS, admin=True, params={"phone": phone, "limit": TEXTS_READ}, deadline=deadline
        )
        count(op, answer)
        texts = [str(t.get("body")) for t in body_of(answer).get("data") or []]
        found = [m.group(1) for m in map(pattern.search, texts) if m]
        if found or time.monotonic() >= deadline:
            return found[0] if found else ""
        await backoff(i)  # a text goes out after its commit, or with the sweep's next round
    return ""


async def read_settled(
    world: World, tenant: Tenant, transfer_id: str, until: float, op: Op | None = None, stats: Stats | None = None
) -> tuple[int, dict[str, Any]]:
    """The transfer as `tenant` reads it, once it is not `claiming` or `returning` (or at `until`)."""
    status, view = 0, {}
    for i in range(POLLS_MAX * 4):
        answer = await world.gateway.until_definite(
            "GET", f"/api/transfers/{transfer_id}", key=tenant.sdk_key, deadline=until, stats=stats
        )
        if op is not None:
            count(op, answer)
        status, view = answer.status, body_of(answer)
        if status != 200 or view.get("status") not in ENDING or time.monotonic() >= until:
            break
        await backoff(i)
    return status, view


class Transfer:
    """One transfer of `kind` ("self_transfer" or "send") ended by `end`: "claim", or "cancel"
    (before or after the PIN, drawn)."""

    def __init__(self, name: str, kind: str, end: str) -> None:
        self.name = name
        self.kind = kind
        self.end = end

    async def run(self, world: World, phase: str) -> Op:
        src, sender = world.pick()
        op = world.model.new(phase=phase, flow=self.name, tenant=src.index, player=sender)
        others = [t for t in world.tenants if t is not src]
        if not others:
            op.outcome, op.note = REFUSED, "one tenant: nowhere to transfer to"
            return op
        dst = world.rng.choice(others)
        recipient = world.rng.choice(dst.players)
        amount = world.rng.choice(AMOUNTS_MINOR)
        sender_phone = phone_of(world.model.run_id, 2 * op.op_id)
        recipient_phone = phone_of(world.model.run_id, 2 * op.op_id + 1)
        body: dict[str, Any] = {
            "player_email": sender,
            "amount": units(amount),
            "sender_phone": sender_phone,
            "idempotency_key": op.key,
            "metadata": {"op": op.key},
        }
        if self.kind == SELF:
            body["destination_tenant_id"] = dst.tenant_id
        else:
            body["recipient_phone"] = recipient_phone
        deadline = time.monotonic() + world.op_deadline_s
        path = INITIATE[self.kind]
        answer = await call(world, op, "POST", path, key=src.sdk_key, body=body, deadline=deadline)
        if not settle(op, answer):
            return op
        b = body_of(answer)
        if answer.status not in (200, 201) or not b.get("transfer_id") or not b.get("hold_transaction_id"):
            op.outcome = UNRESOLVED if answer.error_code in IN_PROGRESS else REFUSED
            return op
        op.outcome, op.transfer_id = ACKED, str(b["transfer_id"])
        op.transaction_id, op.delta_minor = str(b["hold_transaction_id"]), -(amount + amount // 10)
        if minor(b.get("total_debited", "0")) != -op.delta_minor or b.get("status") != "pending_verification":
            op.note = f"initiate answered {b.get('status')}, {b.get('total_debited')} debited for {body['amount']}"
        fields = {"transfer_id": op.transfer_id, "hold_transaction_id": op.transaction_id, "duplicate": True}
        op.replay = Replay("POST", path, body, src.index, fields=fields)

        plan = self.end if self.end == "claim" else world.rng.choice(("before_pin", "after_pin"))
        if plan == "before_pin":
            await self.cancel(world, op, src, dst, deadline)
            return op
        code = await self.verify(world, op, src, sender_phone, recipient_phone, deadline)
        if code is None:
            return op  # the PIN step never settled: left as the checks will find it
        if plan == "claim":
            claim = await self.claim(world, op, dst, code, recipient, deadline)
            if claim.outcome != REFUSED:
                return op
        await self.cancel(world, op, src, dst, deadline)  # nothing claimed it: the sender takes it back
        return op

    async def verify(
        self, world: World, op: Op, src: Tenant, sender_phone: str, recipient_phone: str, deadline: float
    ) -> str | None:
        """The claim code once the PIN is verified ("" when the verify was refused; None when it never
        settled, recorded as an unresolved step)."""
        pin = await read_text(world, op, sender_phone, PIN_RE, deadline)
        answer = Answer(0, None, 0, 0, 0.0)
        if pin:
            body = {"transfer_id": op.transfer_id, "pin": pin}
            answer = await call(world, op, "POST", VERIFY, key=src.sdk_key, body=body, deadline=deadline)
            count(op, answer)
        b = body_of(answer)
        if answer.status == 409 and answer.error_code == "TRANSFER_NOT_AWAITING_PIN":
            # The earlier try went through (its answer was lost): the transfer says so.
            if not answer.indefinite:
                op.note += "; verify-sms answered TRANSFER_NOT_AWAITING_PIN at its first try"
            status, b = await read_settled(world, src, op.transfer_id, deadline, op)
            if status != 200 or b.get("status") != "claimable":
                self.step_refused(op, answer, f"after the retry the transfer reads {status} {b.get('status')}")
                return ""
            b["claim_code"] = None  # answered once only: the sender's texts have it
        elif answer.status != 200:
            if not answer.definite:
                unresolved = world.model.new(phase=op.phase, flow=CLAIM_FLOW, tenant=op.tenant, player=op.player)
                unresolved.transfer_id = op.transfer_id
                settle(unresolved, answer)
                unresolved.note = "verify-sms never answered" if pin else "no PIN texted to the sender"
                return None
            self.step_refused(op, answer, "verify-sms refused")
            return ""
        if self.kind == SELF:
            return str(b.get("claim_code") or "") or await read_text(world, op, sender_phone, CODE_RE, deadline)
        return await read_text(world, op, recipient_phone, CODE_RE, deadline)

    @staticmethod
    def step_refused(op: Op, answer: Answer, why: str) -> None:
        """A refusal the flow did not expect: the operation keeps it (the check reports it)."""
        op.status, op.error_code = answer.status, answer.error_code or f"HTTP_{answer.status}"
        op.note += f"; {why}: {answer.status} {answer.error_code}"

    async def claim(self, world: World, main: Op, dst: Tenant, code: str, recipient: str, deadline: float) -> Op:
        op = world.model.new(phase=main.phase, flow=CLAIM_FLOW, tenant=dst.index, player=recipient)
        op.transfer_id = main.transfer_id
        if not code:
            op.outcome, op.note = (REFUSED if main.error_code else UNRESOLVED), "no claim code to claim with"
            return op
        body = {"claim_code": code, "player_email": recipient}
        path = CLAIM[self.kind]
        answer = await call(world, op, "POST", path, key=dst.sdk_key, body=body, deadline=deadline)
        if not settle(op, answer):
            return op
        b = body_of(answer)
        if answer.status == 200 and b.get("status") == "completed" and b.get("transaction_id"):
            claimed(op, b, main.tenant)
            fields = {"transfer_id": op.transfer_id, "status": "completed", "transaction_id": op.transaction_id}
            op.replay = Replay("POST", path, body, dst.index, fields={**fields, "duplicate": True})
        elif answer.error_code == "CLAIM_IN_PROGRESS":
            op.outcome, op.note = ABANDONED, "still being settled at the deadline"
        else:
            op.outcome = REFUSED
        return op

    async def cancel(self, world: World, main: Op, src: Tenant, dst: Tenant, deadline: float) -> Op:
        op = world.model.new(phase=main.phase, flow=CANCEL_FLOW, tenant=src.index, player=main.player)
        op.transfer_id = main.transfer_id
        path = f"/api/transfers/{main.transfer_id}/cancel"
        answer = await call(world, op, "POST", path, key=src.sdk_key, deadline=deadline)
        if not settle(op, answer):
            return op
        b = body_of(answer)
        if answer.status == 200 and b.get("status") == "returning":
            _, b = await read_settled(world, src, main.transfer_id, deadline, op)  # the sweep gives it back
        if answer.status == 200 and b.get("status") == "cancelled" and b.get("transaction_id"):
            cancelled(op, b, dst.index if self.kind == SELF else None)
            fields = {"status": "cancelled", "transaction_id": op.transaction_id, "duplicate": True}
            op.replay = Replay("POST", path, {}, src.index, fields=fields)
        elif answer.status == 200:
            op.outcome, op.note = ABANDONED, f"cancel answered, the transfer still reads {b.get('status')}"
        else:
            op.outcome = REFUSED
        return op


def claimed(op: Op, view: dict[str, Any], source: int) -> None:
    """A claim acknowledged: the recipient credited the amount; both tenants hear transfer.completed."""
    op.outcome, op.transaction_id = ACKED, str(view["transaction_id"])
    op.delta_minor = minor(view.get("amount", "0"))
    if str(view.get("recipient_email")) != op.player:
        op.note += f"; completed to {view.get('recipient_email')}"
    op.events = [("transfer.completed", op.transfer_id)]
    op.other_events = [(source, "transfer.completed", op.transfer_id)]


def cancelled(op: Op, view: dict[str, Any], destination: int | None) -> None:
    """A cancel acknowledged: amount and fee back to the sender; the source (and a self-transfer's
    destination) hear transfer.cancelled."""
    op.outcome, op.transaction_id = ACKED, str(view["transaction_id"])
    op.delta_minor = minor(view.get("total_debited", "0"))
    op.events = [("transfer.cancelled", op.transfer_id)]
    if destination is not None:
        op.other_events = [(destination, "transfer.cancelled", op.transfer_id)]


async def resolve(world: World, op: Op, until: float, stats: Stats) -> str:
    """A claim or cancel left in flight, read again once the sweep had its time: its new outcome."""
    tenant = world.tenants[op.tenant]
    status, view = await read_settled(world, tenant, op.transfer_id, until, stats=stats)
    index = {t.tenant_id: t.index for t in world.tenants}
    if status != 200:
        return op.outcome
    if op.flow == CLAIM_FLOW:
        if view.get("status") == "completed" and view.get("recipient_email") == op.player:
            claimed(op, view, index[str(view.get("source_tenant_id"))])
            op.note += "; settled after the client gave up (the transfer's read)"
        elif view.get("status") in (*OPEN, "cancelled", "expired"):
            op.outcome = REFUSED
    elif view.get("status") == "cancelled" and view.get("transaction_id"):
        destination = view.get("destination_tenant_id") if view.get("type") == SELF else None
        cancelled(op, view, index.get(str(destination)) if destination else None)
        op.note += "; returned after the client gave up (the transfer's read)"
    return op.outcome
