"""Pure pieces: strict amount parsing, the error mapping, sealing, key hashing, rate limits, ids."""

from __future__ import annotations

import re
from decimal import Decimal

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common import crypto, errors, ids, money
from services.common.config import ConfigError, Settings
from services.gateway.ratelimit import RateLimiter


@given(st.integers(min_value=0, max_value=10**15), st.integers(min_value=0, max_value=4))
def test_amounts_round_trip_exactly(value: int, places: int) -> None:
    text = money.format_scaled(value, places=places)
    assert money.parse_scaled(text, places=places, field="x") == value
    trimmed = money.format_scaled(value, places=places, trim=True)
    assert money.parse_scaled(trimmed, places=places, field="x") == value


@given(st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False, allow_infinity=False))
def test_json_decimals_parse_like_strings(value: Decimal) -> None:
    assert money.parse_scaled(value, places=2, field="x") == money.parse_scaled(str(value), places=2, field="x")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " ",
        "-1",
        "+1",
        "1.",
        ".5",
        "01",
        "1e3",
        "1,00",
        "10.001",
        "NaN",
        "inf",
        "0x10",
        "1 000",
        "\uff11",  # a full-width digit one
        True,
        None,
        1.5,
        [],
        {},
        Decimal("NaN"),
        Decimal("-0.01"),
        "9" * 19,
    ],
)
def test_malformed_amounts_are_refused_never_rounded(bad: object) -> None:
    with pytest.raises(money.AmountError):
        money.parse_scaled(bad, places=2, field="usd_amount")


def test_amount_examples() -> None:
    assert money.parse_scaled("10.00", places=2, field="x") == 1000
    assert money.parse_scaled("0.35", places=2, field="x") == 35
    assert money.parse_scaled("3.5", places=2, field="x") == 350
    assert money.parse_scaled(100, places=2, field="x") == 10000
    assert money.format_scaled(350, places=2) == "3.50"
    assert money.format_scaled(350, places=2, trim=True) == "3.5"
    assert money.format_scaled(-5, places=2) == "-0.05"
    assert money.format_scaled(1000, places=2, trim=True) == "10"


@pytest.mark.parametrize(
    "cls",
    [
        errors.InvalidRequest,
        errors.Unauthenticated,
        errors.PaymentRequired,
        errors.Forbidden,
        errors.NotFound,
        errors.Conflict,
        errors.RateLimited,
        errors.Unavailable,
        errors.Timeout,
    ],
)
def test_errors_survive_the_grpc_round_trip(cls: type[errors.InvoError]) -> None:
    sent = cls(
        "something precise", error="custom_error", error_code="CUSTOM_CODE", retry_after_s=7, extra={"param": "x"}
    )
    back = errors.from_grpc(sent.grpc_code, sent.message, errors.to_grpc_metadata(sent))
    assert type(back) is cls
    assert back.extra == {"param": "x"}
    assert (back.error, back.error_code, back.message, back.retry_after_s, back.http_status) == (
        "custom_error",
        "CUSTOM_CODE",
        "something precise",
        7,
        cls.http_status,
    )


def test_unexpected_statuses_never_leak_details() -> None:
    back = errors.from_grpc(grpc.StatusCode.INTERNAL, "Traceback: secret stuff at 10.0.0.3", ())
    assert type(back) is errors.Internal and "secret" not in back.message
    back = errors.from_grpc(grpc.StatusCode.UNKNOWN, "boom", ())
    assert back.http_status == 500


def test_envelope_shape() -> None:
    body = errors.RateLimited("slow down", retry_after_s=2).envelope("req_1")
    assert body == {
        "status": "error",
        "error": "rate_limited",
        "error_code": "RATE_LIMITED",
        "message": "slow down",
        "request_id": "req_1",
    }


def test_sealed_secrets_open_only_with_the_right_key_and_tenant() -> None:
    ring = crypto.Keyring(crypto.Keyring.generate_spec("k1"))
    kid, blob = ring.seal("whsec_abc", aad="tn_1")
    assert kid == "k1" and b"whsec_abc" not in blob
    assert ring.open(kid, blob, aad="tn_1") == "whsec_abc"
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        ring.open(kid, blob, aad="tn_2")
    rotated = crypto.Keyring(crypto.Keyring.generate_spec("k2") + "," + crypto.Keyring.generate_spec("k1"))
    with pytest.raises(Exception):  # noqa: B017 - a different k1: the tag does not verify
        rotated.open(kid, blob, aad="tn_1")
    for spec in ("", "k1", "k1:notbase64!", "k1:" + "QUJD"):
        with pytest.raises(crypto.KeyringError):
            crypto.Keyring(spec)


def test_key_hash_depends_on_the_pepper() -> None:
    assert crypto.keyed_hash("p1", "ivsdk_x") != crypto.keyed_hash("p2", "ivsdk_x")
    assert crypto.constant_time_equal(crypto.keyed_hash("p", "k"), crypto.keyed_hash("p", "k"))
    keys = {crypto.random_base62(32) for _ in range(200)}
    assert len(keys) == 200 and all(len(k) == 43 and k.isalnum() for k in keys)


def test_rate_limiter_refills_with_time() -> None:
    now = [1000.0]
    limiter = RateLimiter(burst_s=1.0, clock=lambda: now[0])
    assert [limiter.take("t", 2) for _ in range(3)] == [0, 0, 1]
    now[0] += 0.5
    assert limiter.take("t", 2) == 0
    assert limiter.take("t", 2) >= 1
    assert limiter.take("other", 2) == 0


def test_ids_are_prefixed_sortable_and_unique() -> None:
    made = [ids.new_id("evt") for _ in range(1000)]
    assert len(set(made)) == 1000
    assert all(re.fullmatch(r"evt_[0-9A-HJKMNP-TV-Z]{26}", i) for i in made)


def test_settings_from_env_are_typed_and_checked() -> None:
    s = Settings.from_env({"INVO_RPC_TIMEOUT_S": "2.5", "INVO_GATEWAY_PORT": "9000"})
    assert (s.rpc_timeout_s, s.gateway_port) == (2.5, 9000)
    with pytest.raises(ConfigError):
        Settings.from_env({"INVO_GATEWAY_PORT": "eighty"})
    with pytest.raises(ConfigError):
        Settings.from_env({"INVO_ENVIRONMENT": "staging"})
    with pytest.raises(ConfigError):
        Settings.from_env({"INVO_DB_POOL_MAX": "-1"})
    with pytest.raises(ConfigError):
        Settings.from_env({}).require("database_url")


def test_the_secret_cache_is_bounded_in_size_and_age_and_never_holds_the_secret() -> None:
    from services.gateway.auth import SecretCache

    cache: SecretCache[str] = SecretCache(ttl_s=60.0, size_max=2)
    cache.put("ivsdk_a", "A")
    cache.put("ivsdk_b", "B")
    assert cache.get("ivsdk_a") == "A"  # now the most recently used
    cache.put("ivsdk_c", "C")  # over the bound: the least recently used (b) goes
    assert (cache.get("ivsdk_a"), cache.get("ivsdk_b"), cache.get("ivsdk_c")) == ("A", None, "C")
    cache.put("ivsdk_d", "D", ttl_s=-1.0)  # already expired (a rotated key past its end)
    assert cache.get("ivsdk_d") is None
    cache.forget(lambda v: v == "A")
    assert cache.get("ivsdk_a") is None
    assert not any("ivsdk" in repr(k) for k in cache._entries)


def test_a_wallet_keyed_before_nfc_is_still_read_but_never_written() -> None:
    """An account stored under an NFD email (before emails were NFC-normalised) reads back as it
    is, so the export and the ledger check never fail on it; a new write must use the NFC form."""
    from services.ledger import chart

    code = "player:tn_" + "0" * 26 + ":jose\u0301@example.com"
    assert chart.parse(code, stored=True).player_email == "jose\u0301@example.com"
    with pytest.raises(errors.InvalidRequest):
        chart.parse(code)
