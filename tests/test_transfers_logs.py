"""No PIN, claim code or phone number in any log line: after both transfer flows (a wrong PIN, a
claim with an unknown code, a refused phone number among them) every log of the session's network
is read for them, whole and in their other spellings."""

from __future__ import annotations

import re

from devstack.stack import Stack
from tests import transfers_support as ts
from tests.helpers import Api


def _all_logs(stack: Stack) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(stack.logs.glob("*.log")))


async def test_no_pin_code_or_phone_number_reaches_a_log(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "100")

    sender_phone = ts.phone()
    started = await ts.initiate_transfer(api, src, dst, player, "10", sender_phone)
    assert started.status == 201, started
    tid = started.body["transfer_id"]
    pin = await ts.pin_of(api, sender_phone)
    wrong = f"{(int(pin) + 1) % 10**6:06d}"
    assert (await ts.verify(api, src, tid, wrong)).status == 400
    verified = await ts.verify(api, src, tid, pin)
    assert verified.status == 200, verified
    code = str(verified.body["claim_code"])
    assert (await ts.claim(api, dst, "ZZZZ-ZZZZ-ZZZZ-ZZZZ", ts.email())).status == 404
    assert (await ts.claim(api, dst, code, ts.email())).status == 200

    send_id, send_code, send_sender, recipient = await ts.send_to_claimable(api, src, player, "10")
    send_pin = await ts.pin_of(api, send_sender)
    assert (await ts.claim(api, dst, send_code, ts.email(), send=True)).status == 200
    refused = await ts.initiate_send(api, src, player, "10", ts.phone(), "+74951234567")
    assert refused.status == 400, refused

    text = _all_logs(stack)
    assert tid in text or send_id in text or "transfers" in text  # the logs were read, and are the network's
    secrets = {
        "PIN": [pin, wrong, send_pin],
        "claim code": [code, code.replace("-", ""), send_code, send_code.replace("-", "")],
        "phone number": [sender_phone, sender_phone.lstrip("+"), send_sender, recipient, "+74951234567"],
    }
    for what, values in secrets.items():
        for value in values:
            # As a whole token: six digits also occur inside hex ids by chance.
            found = re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", text)
            assert found is None, f"a {what} is in a log"
    await ts.check_ledger(api)
