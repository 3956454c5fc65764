"""The README stays true to the code: every setting is documented, the two commands are there."""

from __future__ import annotations

import pathlib

from services.common.config import documented_variables

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_environment_variable_is_in_the_readme() -> None:
    missing = [name for name in documented_variables() if f"`{name}`" not in README]
    assert not missing, f"README.md does not document {missing}: run .venv/bin/python tools/readme_env.py"


def test_the_two_commands() -> None:
    assert "make run" in README and "make test" in README


def test_the_receiver_guide_verifies_our_signatures() -> None:
    """The README's standard-library verifier accepts what the webhooks service signs (with either
    secret of a rotation) and refuses a tampered body and a stale timestamp."""
    import json
    import re
    import time

    import pytest

    from services.common.signing import signature_header

    match = re.search(r"Verifying, with the Python standard library only:\n\n```python\n(.*?)```", README, re.S)
    assert match, "the receiver guide's code block is missing"
    ns: dict[str, object] = {}
    exec(match.group(1), ns)  # our own README
    verify = ns["verify"]
    assert callable(verify)
    body = json.dumps({"event_id": "evt_1", "event_type": "webhook.test"}).encode()
    header = signature_header(body, ["whsec_new", "whsec_old"], timestamp=int(time.time()))
    assert verify(body, header, "whsec_new")["event_id"] == "evt_1"
    assert verify(body, header, "whsec_old")["event_id"] == "evt_1"
    with pytest.raises(ValueError, match="bad signature"):
        verify(body + b" ", header, "whsec_new")
    with pytest.raises(ValueError, match="bad signature"):
        verify(body, header, "whsec_other")
    stale = signature_header(body, ["whsec_new"], timestamp=int(time.time()) - 301)
    with pytest.raises(ValueError, match="older than 5 minutes"):
        verify(body, stale, "whsec_new")


# Codes that only services see of each other (a caller's programming error, never a partner's):
# the gateway never lets them through, so the README need not list them.
INTERNAL_ERROR_CODES = {
    "TEST_CLOCK_OFF",  # the subscriptions service's SetTestClock RPC, never on the public API
    "ACCOUNT_NOT_OWNED",
    "CONFLICT",
    "DEADLINE_REQUIRED",
    "FORBIDDEN",
    "HOLD_EXPIRED",
    "HOLD_NOT_FOUND",
    "ACTION_NOT_FOUND",  # the gateway's own FinishAction, never answered to a client
    "HOLD_NOT_PENDING",
    "INTERNAL_ERROR",
    "INVALID_TENANT_ID",
    "PAYMENT_REQUIRED",
    "PREREQUISITE_MISMATCH",
    "PREREQUISITE_NOT_FOUND",
    "TRANSACTION_NOT_FOUND",
    "UNAUTHORIZED",
    "UNBALANCED_TRANSACTION",
    "UNKNOWN_ACCOUNT",
}


def test_the_readme_lists_every_error_code_the_api_answers() -> None:
    import re

    root = pathlib.Path(__file__).resolve().parent.parent / "services"
    codes: set[str] = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        codes.update(re.findall(r'error_code(?:=| = )"([A-Z_]+)"', text))
    assert {"CARD_DECLINED", "ORDER_NOT_FOUND", "INSUFFICIENT_BALANCE"} <= codes  # the scan works
    missing = sorted(c for c in codes - INTERNAL_ERROR_CODES if f"`{c}`" not in README)
    assert not missing, f"README.md's error table does not list {missing}"
