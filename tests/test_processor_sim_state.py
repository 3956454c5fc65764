"""The processor simulator keeps its state across restarts, as Stripe would (processor_sim/state.py).

A new simulator on the same journal knows every PaymentIntent, charge and idempotency record the
old one acknowledged, and still owes the webhooks it had not delivered; a line cut short by a kill
is ignored; the journal is compacted at start and private to the user.
"""

from __future__ import annotations

import json
import pathlib
import stat
from typing import Any

from devstack.processor_sim.resources import StripeResources
from devstack.processor_sim.state import Journal


def simulator(path: pathlib.Path) -> StripeResources:
    # No webhook URL: events are owed, and recorded, but nothing is sent.
    return StripeResources(secret_key="sk_test_x", webhook_secret="whsec_x", webhook_url="", journal=Journal(path))


def intent(sim: StripeResources, *, confirm: bool, pm: str = "pm_card_visa") -> dict[str, Any]:
    params: dict[str, Any] = {"amount": "1000", "currency": "usd", "payment_method": pm, "metadata": {"order_id": "o1"}}
    if confirm:
        params["confirm"] = "true"
    return sim._create_intent(params)


async def test_a_restarted_simulator_knows_everything_it_acknowledged(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sim" / "state.jsonl"
    first = simulator(path)
    charged = intent(first, confirm=True)
    waiting = intent(first, confirm=False)
    three_ds = intent(first, confirm=True, pm="pm_card_authenticationRequired")
    first.idempotency["k1"] = [9e18, "fp", 200, charged]
    first.journal.put("idempotency", "k1", first.idempotency["k1"])
    await first.close()  # its delivery tasks cancelled: the event stays owed
    first.journal.close()

    second = simulator(path)
    assert second.intents[charged["id"]]["status"] == "succeeded"
    assert second.intents[waiting["id"]]["status"] == "requires_confirmation"
    assert second.intents[three_ds["id"]]["status"] == "requires_action"
    assert second.charges[charged["latest_charge"]]["amount"] == 1000
    assert second.idempotency["k1"][2] == 200
    # The succeeded event was never delivered (no URL, no delivery task ran): still owed.
    assert [e["type"] for e in second.owed_events] == ["payment_intent.succeeded"]
    # Newest first, as Stripe lists them.
    listed = second._list(second.intents, {"limit": "2"}, url="/v1/payment_intents")
    assert [pi["id"] for pi in listed["data"]] == [three_ds["id"], waiting["id"]] and listed["has_more"]
    rest = second._list(second.intents, {"starting_after": waiting["id"]}, url="/v1/payment_intents")
    assert [pi["id"] for pi in rest["data"]] == [charged["id"]] and not rest["has_more"]
    await second.close()
    second.journal.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_line_cut_short_by_a_kill_is_ignored_and_compacted_away(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "state.jsonl"
    good = json.dumps({"k": "intents", "id": "pi_1", "o": {"id": "pi_1", "status": "succeeded"}})
    newer = json.dumps({"k": "intents", "id": "pi_1", "o": {"id": "pi_1", "status": "canceled"}})
    gone = json.dumps({"k": "charges", "id": "ch_1", "o": None})
    path.write_text(good + "\n" + newer + "\n" + gone + "\n" + '{"k": "intents", "id": "pi_2", "o": {"id"')
    journal = Journal(path)
    state = journal.load()
    journal.close()
    assert state["intents"] == {"pi_1": {"id": "pi_1", "status": "canceled"}}
    assert state["charges"] == {}
    assert path.read_text().count("\n") == 1  # compacted: one line per object left


def test_expired_idempotency_records_are_dropped_at_start(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "state.jsonl"
    journal = Journal(path)
    journal.load()
    journal.put("idempotency", "old", [1.0, "fp", 200, {}])
    journal.put("idempotency", "new", [9e18, "fp", 200, {}])
    journal.close()
    again = Journal(path)
    assert set(again.load()["idempotency"]) == {"new"}
    again.close()


def test_a_long_run_compacts_its_journal_as_it_goes(tmp_path: pathlib.Path, monkeypatch: Any) -> None:
    from devstack.processor_sim import state as state_module

    monkeypatch.setattr(state_module, "COMPACT_LINES_MIN", 50)
    path = tmp_path / "state.jsonl"
    journal = Journal(path)
    journal.load()
    for i in range(1000):  # one object changed again and again, and one owed event kept
        journal.put("intents", "pi_1", {"id": "pi_1", "status": f"s{i}"})
    journal.put("events", "evt_1", {"id": "evt_1"})
    journal.close()
    assert path.read_text().count("\n") <= 50 * state_module.COMPACT_RATIO  # not 1,001 lines
    again = Journal(path)
    loaded = again.load()
    again.close()
    assert loaded["intents"] == {"pi_1": {"id": "pi_1", "status": "s999"}}
    assert loaded["events"] == {"evt_1": {"id": "evt_1"}}
