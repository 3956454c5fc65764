"""The console's session cookie and the address its sign-ins count against, without a browser."""

from __future__ import annotations

import time
from typing import Any

from aiohttp.test_utils import make_mocked_request

from services.common.crypto import Keyring
from services.gateway.console_session import Session, new_session
from services.gateway.operators import CONSOLE_CLIENT_HEADER, client_address


def test_a_session_opens_only_sealed_by_a_listed_key_unaltered_and_unexpired() -> None:
    k1, k2 = Keyring(Keyring.generate_spec("k1")), Keyring(Keyring.generate_spec("k2"))
    s = new_session("invo_op_secret", "op_X", "viewer", 60)
    sealed = s.seal(k1)
    assert "invo_op_secret" not in sealed
    assert Session.open(k1, sealed) == s
    assert Session.open(k2, sealed) is None  # its key no longer listed
    kid, _, text = sealed.partition(".")
    flipped = text[:-2] + ("A" if text[-2] != "A" else "B") + text[-1]
    assert Session.open(k1, f"{kid}.{flipped}") is None  # altered
    for junk in (None, "", "nodot", "k1.!!!", "k1." + "A" * 5000):
        assert Session.open(k1, junk) is None
    old = Session("c", "op_X", "viewer", "t", int(time.time()) - 1)
    assert Session.open(k1, old.seal(k1)) is None  # expired


def test_failed_sign_ins_count_against_the_browser_only_when_the_console_names_it() -> None:
    """The console's loopback calls name the browser's address; nobody else chooses their bucket."""

    def req(remote: str, named: str | None) -> Any:
        headers = {CONSOLE_CLIENT_HEADER: named} if named is not None else {}
        r = make_mocked_request("GET", "/admin/me", headers=headers)
        return r.clone(remote=remote)

    assert client_address(req("127.0.0.1", "203.0.113.9")) == "203.0.113.9"
    assert client_address(req("::1", "203.0.113.9")) == "203.0.113.9"
    assert client_address(req("198.51.100.7", "203.0.113.9")) == "198.51.100.7"  # not loopback: itself
    assert client_address(req("127.0.0.1", "")) == "127.0.0.1"
    assert client_address(req("127.0.0.1", "x" * 65)) == "127.0.0.1"
