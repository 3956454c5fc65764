"""What the texts say. A PIN text starts with the PIN (phones offer it for autofill); a claim text
names the amount and the source tenant's currency, never the sender."""

from __future__ import annotations

import datetime

import asyncpg

from services.common import money
from services.transfers.store import SELF


def pin_text(pin: str, *, ttl_s: float) -> str:
    minutes = max(1, round(ttl_s / 60))
    return (
        f"{pin} is your INVO transfer PIN. It expires in {minutes} minutes. Never share it: nobody from INVO or"
        " your app will ever ask for it."
    )


def claim_text(row: asyncpg.Record, code: str, *, currency_name: str, expires_at: datetime.datetime) -> str:
    amount = money.format_units(row["amount_minor"])
    when = expires_at.strftime("%Y-%m-%d %H:%M UTC")
    if row["kind"] == SELF:
        return f"INVO: your transfer of {amount} {currency_name} is ready. Claim code: {code} (until {when})."
    return (
        f"INVO: you were sent {amount} {currency_name}. Claim it in any app on the INVO Network with the code {code}"
        f" (until {when})."
    )
