"""Phone normalisation and code generation/parsing/hashing; pure functions, no servers needed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidRequest
from services.transfers import codes, phones

ALL = frozenset({"US", "GB", "DE", "IN"})


@given(st.integers(0, 10**6))
def test_claim_code_round_trip(_: int) -> None:
    code = codes.new_claim_code()
    assert len(code) == 19
    assert codes.parse_claim_code(code) == code


@given(st.data())
def test_mangled_claim_code_parses_same(data: st.DataObject) -> None:
    # Drawn, not new_claim_code(): hypothesis must replay the same code when it shrinks.
    raw = data.draw(st.text(alphabet=codes.CROCKFORD, min_size=16, max_size=16))
    code = "-".join(raw[i : i + 4] for i in range(0, 16, 4))
    back = {"1": "IiLl1", "0": "Oo0"}
    out = []
    for ch in code.replace("-", ""):
        ch = data.draw(st.sampled_from(back.get(ch, ch + ch.lower())))
        out.append(ch + data.draw(st.sampled_from(["", " ", "-"])))
    assert codes.parse_claim_code("".join(out)) == code


@given(st.text(max_size=80))
def test_random_strings_refused_unless_valid(s: str) -> None:
    got = codes.parse_claim_code(s)
    if got is not None:
        assert codes.parse_claim_code(got) == got


def test_claim_code_refusals() -> None:
    assert codes.parse_claim_code("UUUU-AAAA-AAAA-AAAA") is None
    assert codes.parse_claim_code("AAAA-AAAA-AAAA-AAA") is None
    assert codes.parse_claim_code("A" * 16 + " " * 60) is None


def test_pins() -> None:
    pins = [codes.new_pin() for _ in range(10_000)]
    assert all(len(p) == 6 and p.isdigit() for p in pins)
    assert any(p.startswith("0") for p in pins)


def test_hasher() -> None:
    with pytest.raises(ValueError):
        codes.CodeHasher(b"x" * 31)
    h = codes.CodeHasher(b"k" * 32)
    d = h.digest("pin", "123456", context="t1")
    assert h.matches(d, "pin", "123456", context="t1")
    assert not h.matches(d, "pin", "123456", context="t2")
    assert not h.matches(d, "claim", "123456", context="t1")
    assert not codes.CodeHasher(b"j" * 32).matches(d, "pin", "123456", context="t1")


@pytest.mark.parametrize(
    ("raw", "region", "want"),
    [
        ("(415) 555-0123", "US", "+14155550123"),
        ("+1 415 555 0123", None, "+14155550123"),
        ("020 7946 0018", "GB", "+442079460018"),
        ("+44 20 7946 0018", None, "+442079460018"),
        ("030 123456", "DE", "+4930123456"),
        ("+49 30 123456", None, "+4930123456"),
        ("98765 43210", "IN", "+919876543210"),
        ("+91 98765 43210", None, "+919876543210"),
    ],
)
def test_normalize(raw: str, region: str | None, want: str) -> None:
    assert phones.normalize(raw, allowed_countries=ALL, default_region=region) == want


def test_country_not_allowed() -> None:
    with pytest.raises(InvalidRequest) as e:
        phones.normalize("+14155550123", allowed_countries=frozenset({"GB"}), param="to")
    assert e.value.error_code == "PHONE_COUNTRY_NOT_ALLOWED"
    assert e.value.extra == {"param": "to"}


@pytest.mark.parametrize("raw", ["junk", "+1" + "5" * 40, "+1 415 555 O123", "+1 555 0100", "", "+1\x00415"])
def test_invalid_numbers(raw: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        phones.normalize(raw, allowed_countries=ALL)
    assert e.value.error_code == "INVALID_PHONE_NUMBER"
    assert e.value.extra == {"param": "phone"}


def test_mask() -> None:
    assert phones.mask("+14155550123") == "+1415•••0123"
