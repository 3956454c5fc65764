"""The fault suite's short version on the session's network, and proof that its checks can fail.

`make faults` runs every fault on a network of its own; here two phases (the ledger and the
payments service SIGKILLed under load) run on the test session's network, which must be healthy
afterwards. The checks are then shown to catch what they exist to catch: a credit nobody was
told of (doubled), an acknowledged write that is not in the ledger (lost), a webhook that never
comes (missing), a forged signature, a second charge for one order at the processor, and a
process that died on its own; and a second delivery of one event is counted as a duplicate. A
hosted checkout session is held to its orders: a second charge on one session is caught. A
refunded order is held to the refunds the operator was told: a second processor refund is caught.
A transfer is held to exactly once: a second settlement to its recipient, and a transfer left
claiming past the sweep's time, are caught. Payouts: test_faults_payouts.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import asyncpg
from invo.v1 import ledger_pb2, ledger_pb2_grpc

from devstack.stack import Stack
from faults import phases, report, runner
from faults.checkout import CheckoutPurchase
from faults.checks import Checker
from faults.flows import CardPurchase
from faults.model import ACKED, REFUSED
from faults.proxy import TcpProxy
from faults.refunds import RefundPurchase, usd
from faults.transfers import CANCEL_FLOW, CLAIM_FLOW, SELF, SEND, Transfer
from faults.workload import Settings, Workload
from services.common import grpcutil
from services.common.config import Settings as InvoSettings
from services.common.signing import signature_header
from tests.helpers import eventually

SHORT = Settings(
    tenants=2,
    players_per_tenant=30,  # the session's velocity rule (10 purchases a minute per player) stays out of the way
    clients=6,
    rate_per_s=40.0,
    load_s=6.0,
    warm_s=2.0,
    after_heal_s=2.0,
    op_deadline_s=45.0,
    check_deadline_s=60.0,
    webhook_bound_s=30.0,
    replay_max=150,
)


async def test_cut_database_connections_of_the_ledger_never_answer_500(stack: Stack) -> None:
    """The phase that found the ledger answering 500 when its connections to PostgreSQL were cut
    (a batch retried op by op on dead connections; a transaction's exit on a closed connection):
    under load, every 5xx is a 503 with Retry-After, and nothing is lost or doubled."""
    result = await runner.run(stack, SHORT, [phases.by_name("cut-postgres:ledger")])
    rows = result["phases"]
    assert result["violations"] == 0, report.table(rows) + "\n" + report.violations_text(rows)
    [row] = [r for r in rows if r["phase"] == "cut-postgres:ledger"]
    assert row["answers_5xx"] > 0 and row["answers_5xx_bad"] == 0, row  # the cut was felt, and answered 503


async def test_two_faults_under_load_lose_nothing_and_double_nothing(stack: Stack) -> None:
    started = time.monotonic()
    result = await runner.run(stack, SHORT, [phases.by_name(n) for n in phases.SHORT])
    rows = result["phases"]
    assert result["violations"] == 0, report.table(rows) + "\n" + report.violations_text(rows)
    by_phase = {r["phase"]: r for r in rows}
    for name in phases.SHORT:
        row = by_phase[name]
        # The fault happened under load, and the load went on through it.
        assert row["heal_s"] is not None and row["heal_s"] > 0, row
        assert row["acknowledged"] > 50 and row["requests"] >= row["operations"], row
        assert row["unresolved"] == 0, row
        assert row["findings"]["replayed"] > 0 and row["findings"]["webhooks"]["expected"] > 0, row
        assert row["findings"]["sessions_checked"] > 0, row  # hosted checkout was in the mix
    # Operators' refunds were in the mix (a few a phase: counted over both).
    assert sum(by_phase[n]["findings"]["refunds_checked"] for n in phases.SHORT) > 0, rows
    assert result["processor_source"], result
    assert time.monotonic() - started < 120, "the short version must stay well under 2 minutes"
    # The session's network is whole again for the tests after this one.
    assert stack.dead() == []
    async with aiohttp.ClientSession() as http, http.get(stack.gateway_url + "/readyz") as resp:
        assert resp.status == 200


async def test_the_checks_catch_a_double_a_loss_a_missing_webhook_a_forgery_a_second_charge_and_a_death(
    stack: Stack,
) -> None:
    settings = Settings(tenants=1, players_per_tenant=2, replay_max=10, check_deadline_s=30, webhook_bound_s=10)
    async with Workload(stack, settings) as wl:
        checker = Checker(wl.world, wl.receivers, stack, replay_max=settings.replay_max)
        setup = await wl.setup()
        paid = await CardPurchase("card_purchase", "pm_card_visa").run(wl.world, "sabotage")
        assert paid.outcome == ACKED, paid
        clean = await checker.run(phase_ops=[*setup, paid], deadline_s=30, webhook_bound_s=10)
        assert clean.violations == 0, clean.summary()

        tenant, player = wl.world.tenants[0], wl.world.tenants[0].players[0]
        # 1. Money moved that no client was told of: an operator's credit behind the model's back.
        status, body, _ = await wl.gateway.once(
            "POST",
            "/admin/players/credit",
            headers=wl.gateway.headers(admin=True),
            body={
                "tenant_id": tenant.tenant_id,
                "player_email": player,
                "amount": "7",
                "reason": "not in the model",
                "idempotency_key": f"sabotage-{wl.run_id}",
            },
        )
        assert status == 200, body
        # 2. An acknowledged write the ledger never saw, whose webhook will never come.
        forged = wl.world.model.new(phase="sabotage", flow="item_purchase", tenant=0, player=tenant.players[1])
        forged.outcome, forged.transaction_id, forged.delta_minor = ACKED, "txn_forged", -100
        forged.events = [("item.purchased", "txn_forged")]
        # 3. A delivery whose signature is not the tenant's.
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                wl.receivers.url(0),
                data=b'{"event_id": "evt_x", "event_type": "item.purchased"}',
                headers={"X-Invo-Signature": f"t={int(time.time())},v1={'0' * 64}"},
            ) as resp,
        ):
            assert resp.status == 400
        # 4. A second charge at the processor for an order that was charged and credited once.
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                stack.env["INVO_PROCESSOR_API_BASE"] + "/v1/payment_intents",
                data={
                    "amount": "100",
                    "currency": "usd",
                    "payment_method": "pm_card_visa",
                    "confirm": "true",
                    "metadata[tenant_id]": tenant.tenant_id,
                    "metadata[order_id]": paid.order_id,
                },
                headers={"Authorization": f"Bearer {stack.env['INVO_PROCESSOR_SECRET_KEY']}"},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()

        # 5. One event delivered twice (at least once: counted, not a failure), validly signed.
        first = next(iter(wl.receivers.events.values()))
        again = json.dumps({"event_id": first.event_id, "event_type": first.event_type, "tenant_id": tenant.tenant_id})
        signed = signature_header(again.encode(), [tenant.signing_secret], timestamp=int(time.time()))
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                wl.receivers.url(0),
                data=again.encode(),
                headers={"X-Invo-Signature": signed, "X-Invo-Event-Id": first.event_id},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
        # 6. A process that dies on its own (no fault of ours restarts it).
        victim = stack.procs["transfers"]
        victim.kill()
        await asyncio.to_thread(victim.wait, 10)

        async def sabotage_seen() -> bool:
            # The operator's balance.adjusted is on its way: wait for it, so the phantom is seen.
            return any(r.key == "not in the model" for r in wl.receivers.events.values())

        await eventually(sabotage_seen, timeout_s=20)
        found = await checker.run(phase_ops=[forged], deadline_s=30, webhook_bound_s=1)

    assert [d["moved_minor"] for d in found.doubled] == [{player: 700}], found.doubled
    assert [lost["key"] for lost in found.lost] == [forged.key], found.lost
    assert {w["player"] for w in found.wallets} == set(tenant.players), found.wallets
    assert found.webhooks["missing"] == 1 and found.webhooks["bad_signatures_or_tenant"] == 1, found.webhooks
    assert found.webhooks["duplicates"] == 1, found.webhooks
    assert [p["key"] for p in found.webhooks["phantom"]] == ["not in the model"], found.webhooks
    assert [d["order_id"] for d in found.processor["double_charges"]] == [paid.order_id], found.processor
    assert [d["order_id"] for d in found.processor["orders_with_several_intents"]] == [paid.order_id]
    assert found.ledger["ok"] is True  # the ledger itself is consistent: only the clients' story is not
    assert [d["process"] for d in found.dead] == ["transfers"] and stack.dead() == [], found.dead
    # doubled, lost, two wallets, missing, forged, phantom, charged twice, a second PaymentIntent, a death
    assert found.violations == 10, found.summary()


async def test_a_checkout_session_declined_then_paid_is_clean_and_a_second_charge_on_it_is_caught(
    stack: Stack,
) -> None:
    settings = Settings(tenants=1, players_per_tenant=1, replay_max=10, check_deadline_s=30, webhook_bound_s=10)
    async with Workload(stack, settings) as wl:
        checker = Checker(wl.world, wl.receivers, stack, replay_max=settings.replay_max)
        setup = await wl.setup()
        flow = CheckoutPurchase("checkout_declined_then_paid", ("pm_card_chargeDeclined", "pm_card_visa"))
        op = await flow.run(wl.world, "sabotage")
        assert op.outcome == ACKED and len(op.orders) == 2 and op.order_id == op.orders[1], op.summary()
        assert [t for t, _ in op.events] == ["purchase.failed", "purchase.completed"], op.events
        clean = await checker.run(phase_ops=[*setup, op], deadline_s=30, webhook_bound_s=10)
        assert clean.violations == 0 and clean.sessions_checked == 1, clean.summary()
        assert clean.replayed == 2 and clean.replays == []  # paying the paid session again: 409, nothing charged

        # A charge at the processor for another attempt of the same, paid, session: for the order
        # checks it is an attempt of an acknowledged operation, for the amount it is right; only the
        # session's check sees the player charged twice.
        tenant = wl.world.tenants[0]
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                stack.env["INVO_PROCESSOR_API_BASE"] + "/v1/payment_intents",
                data={
                    "amount": "100",
                    "currency": "usd",
                    "payment_method": "pm_card_visa",
                    "confirm": "true",
                    "metadata[tenant_id]": tenant.tenant_id,
                    "metadata[order_id]": f"ord_sabotage{wl.run_id}",
                    "metadata[purchase_reference]": f"checkout:{op.session_id}:3",
                },
                headers={"Authorization": f"Bearer {stack.env['INVO_PROCESSOR_SECRET_KEY']}"},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
        found = await checker.run(phase_ops=[op], deadline_s=30, webhook_bound_s=1)

    assert [w["session_id"] for w in found.sessions] == [op.session_id], found.sessions
    assert found.sessions[0]["problems"] == ["charged more than once"], found.sessions
    assert found.violations == 1, found.summary()


async def test_refunds_a_part_then_the_rest_are_clean_and_a_second_processor_refund_is_caught(
    stack: Stack,
) -> None:
    settings = Settings(tenants=1, players_per_tenant=1, replay_max=20, check_deadline_s=30, webhook_bound_s=10)
    async with Workload(stack, settings) as wl:
        checker = Checker(wl.world, wl.receivers, stack, replay_max=settings.replay_max)
        setup = await wl.setup()
        whole = await RefundPurchase(plans=("partial_then_rest",)).run(wl.world, "sabotage")
        part = await RefundPurchase(plans=("partial",)).run(wl.world, "sabotage")
        asked = wl.world.model.refunds()
        # The rest refunded, one more cent is refused: the order is refunded, nothing remains.
        assert [(op.outcome, op.error_code) for op in asked[whole.order_id]] == [
            (ACKED, ""),
            (ACKED, ""),
            (REFUSED, "ORDER_NOT_REFUNDABLE"),
        ], [op.summary() for op in asked[whole.order_id]]
        assert sum(op.delta_minor for op in asked[whole.order_id]) == -whole.delta_minor
        [partial] = asked[part.order_id]
        assert partial.outcome == ACKED and partial.delta_minor == -partial.usd_cents * 10, partial.summary()
        ops = [op for op in wl.world.model.ops if op.phase == "sabotage"]
        clean = await checker.run(phase_ops=[*setup, *ops], deadline_s=30, webhook_bound_s=10)
        assert clean.violations == 0 and clean.refunds_checked == 2, clean.summary()
        assert clean.replayed == 7 and clean.replays == []  # a funding, 2 purchases, 3 refunds, the refusal
        refunded = [k for k in wl.receivers.by_key() if k[1] == "purchase.refunded"]
        assert sorted(k[2] for k in refunded) == sorted(op.refund_id for op in ops if op.events and op.refund_of)

        # The processor refunds a cent more of the partly refunded order under our refund's own
        # metadata: payments ties it to the refund it applied already (no money moves, the order
        # reads the same), so only the processor's record shows the player refunded twice.
        order = await wl.gateway.until_definite(
            "GET", f"/admin/orders/{part.order_id}", admin=True, deadline=time.monotonic() + 10
        )
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                stack.env["INVO_PROCESSOR_API_BASE"] + "/v1/refunds",
                data={
                    "payment_intent": order.body["payment_intent_id"],
                    "amount": "1",
                    "metadata[order_id]": part.order_id,
                    "metadata[refund_id]": partial.refund_id,
                },
                headers={"Authorization": f"Bearer {stack.env['INVO_PROCESSOR_SECRET_KEY']}"},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
        found = await checker.run(phase_ops=[partial], deadline_s=30, webhook_bound_s=1)

    assert [w["order_id"] for w in found.refunds] == [part.order_id], found.refunds
    assert found.refunds[0]["problems"] == [
        "the processor holds 2 refunds for 1 succeeded of ours",
        f"the processor refunded {usd(partial.usd_cents + 1)} USD, our succeeded refunds say otherwise",
    ], found.refunds
    assert found.violations == 1, found.summary()


async def test_transfers_claimed_and_cancelled_are_clean_and_a_second_settlement_and_a_stuck_claim_are_caught(
    stack: Stack,
) -> None:
    settings = Settings(tenants=2, players_per_tenant=2, replay_max=20, check_deadline_s=30, webhook_bound_s=10)
    async with Workload(stack, settings) as wl:
        checker = Checker(wl.world, wl.receivers, stack, replay_max=settings.replay_max)
        setup = await wl.setup()
        own = await Transfer("self_transfer", SELF, "claim").run(wl.world, "sabotage")
        gift = await Transfer("send", SEND, "claim").run(wl.world, "sabotage")
        back = await Transfer("self_transfer_cancelled", SELF, "cancel").run(wl.world, "sabotage")
        steps = wl.world.model.transfers()
        flows = [[(op.flow, op.outcome) for op in steps[t.transfer_id]] for t in (own, gift, back)]
        assert flows == [
            [("self_transfer", ACKED), (CLAIM_FLOW, ACKED)],
            [("send", ACKED), (CLAIM_FLOW, ACKED)],
            [("self_transfer_cancelled", ACKED), (CANCEL_FLOW, ACKED)],
        ], [op.summary() for t in (own, gift, back) for op in steps[t.transfer_id]]
        own_claim, gift_claim, back_cancel = (steps[t.transfer_id][1] for t in (own, gift, back))
        # The sender paid amount + 10%, the recipient got the amount, the cancel gave it all back.
        assert own_claim.delta_minor * 11 == -own.delta_minor * 10 and own_claim.tenant != own.tenant
        assert gift_claim.delta_minor * 11 == -gift.delta_minor * 10
        assert back_cancel.delta_minor == -back.delta_minor and back_cancel.tenant == back.tenant
        ops = [op for op in wl.world.model.ops if op.phase == "sabotage"]
        clean = await checker.run(phase_ops=[*setup, *ops], deadline_s=30, webhook_bound_s=10)
        assert clean.violations == 0 and clean.transfers_checked == 3, clean.summary()
        assert clean.replayed == 10 and clean.replays == []  # 4 fundings, 3 holds, 2 claims, a cancel
        # transfer.completed to both tenants of each claimed transfer, transfer.cancelled to both
        # tenants of the cancelled self-transfer: each once.
        told = sorted((k[1], k[2]) for k in wl.receivers.by_key() if k[1].startswith("transfer."))
        assert told == sorted(
            [("transfer.completed", own.transfer_id)] * 2
            + [("transfer.completed", gift.transfer_id)] * 2
            + [("transfer.cancelled", back.transfer_id)] * 2
        ), told

        # 1. A second settlement of the self-transfer to its recipient: a transaction of the
        # settlement's kind, with the amount, that the transfers service never asked for.
        recipient = wl.world.tenants[own_claim.tenant]
        channel = grpcutil.channel(stack.env["INVO_LEDGER_ADDR"])
        try:
            forged = await grpcutil.call(
                ledger_pb2_grpc.LedgerServiceStub(channel).Transfer,
                ledger_pb2.TransferRequest(
                    tenant_id=recipient.tenant_id,
                    kind="transfer_settle",
                    postings=[
                        ledger_pb2.Posting(account="world:adjustments", amount_minor=-own_claim.delta_minor),
                        ledger_pb2.Posting(
                            account=f"player:{recipient.tenant_id}:{own_claim.player}",
                            amount_minor=own_claim.delta_minor,
                        ),
                    ],
                    idempotency=ledger_pb2.Idempotency(namespace="admin", key=f"sabotage-settle-{wl.run_id}"),
                ),
                timeout_s=30,
            )
        finally:
            await channel.close()
        # 2. The claimed send put back in `claiming` under a lease nobody will let go of within the
        # check: the sweep never gets to finish it.
        schema = InvoSettings.from_env(stack.env).schema("transfers")
        conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
        try:
            stuck = f'UPDATE "{schema}".transfers SET status = $2, processing_until = $3 WHERE transfer_id = $1'
            far = "now() + interval '1 hour'"
            await conn.execute(stuck.replace("$3", far), gift.transfer_id, "claiming")
            found = await checker.run(phase_ops=[own, gift], deadline_s=8, webhook_bound_s=1)
        finally:
            await conn.execute(stuck.replace("$3", "NULL"), gift.transfer_id, "completed")
            await conn.close()

    assert [d["transaction_id"] for d in found.doubled] == [forged.transaction_id], found.doubled
    assert [w["player"] for w in found.wallets] == [own_claim.player], found.wallets
    by_transfer = {w["transfer_id"]: w for w in found.transfers}
    assert set(by_transfer) == {"", gift.transfer_id}, found.transfers
    assert by_transfer[""]["transaction_id"] == forged.transaction_id, found.transfers
    assert by_transfer[""]["problems"] == ["a transfer_settle that moved a wallet, which no transfer of the run names"]
    assert by_transfer[gift.transfer_id]["problems"][:2] == [
        "left claiming after the sweep had its time",
        "reads claiming, the client was told completed",
    ], by_transfer[gift.transfer_id]
    assert found.ledger["ok"] is True  # the ledger itself is consistent: only the transfers' story is not
    # doubled, the recipient's wallet, the settlement nobody names, the transfer left claiming
    assert found.violations == 4, found.summary()


async def test_the_proxy_cuts_every_connection_then_forwards_again() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = TcpProxy("127.0.0.1", int(server.sockets[0].getsockname()[1]))
    port = await proxy.start()
    writers: list[asyncio.StreamWriter] = []
    try:

        async def roundtrip() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            writer.write(b"ping")
            await writer.drain()
            return reader, writer, await asyncio.wait_for(reader.read(4), timeout=5)

        async def reset(reader: asyncio.StreamReader) -> bool:
            try:
                return await asyncio.wait_for(reader.read(4), timeout=5) == b""
            except ConnectionResetError:
                return True

        reader, _writer, echoed = await roundtrip()
        assert echoed == b"ping"
        assert proxy.cut(hold_s=0.5) == 1
        # The open connection is reset, and so is a new one during the hold.
        assert await reset(reader)
        refused_reader, refused_writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(refused_writer)
        assert await reset(refused_reader)

        async def forwards_again() -> bool:
            try:
                return (await roundtrip())[2] == b"ping"
            except (ConnectionError, TimeoutError):
                return False

        assert await eventually(forwards_again, timeout_s=5)
    finally:
        for w in writers:
            w.close()
        await proxy.stop()
        server.close()
        await server.wait_closed()
