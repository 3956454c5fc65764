"""The card processor as the faults suite sees it: the cardholder's 3-D Secure answer (the
simulator's `/_sim/three_d_secure` control), and the processor's own record of PaymentIntents and
of Refunds.

The record is read the way one would read Stripe's: `GET /v1/payment_intents?limit=100
&starting_after=<last id>` with the secret key, following `has_more`. A simulator without that
endpoint (404) is read through its test control `/_sim/state` instead, which holds the same
objects but only those since its last start; `source` says which one answered. Refunds are read
only as Stripe's (`GET /v1/refunds`, the same pagination): the simulator's state does not list them.
"""

from __future__ import annotations

from typing import Any

from faults.client import Answer, Gateway, Stats

PAGE_LIMIT = 100  # Stripe's largest page
PAGES_MAX = 2000  # 200,000 objects: far beyond any run; a listing that does not end is a defect


class Processor:
    def __init__(self, gateway: Gateway, *, base_url: str, secret_key: str) -> None:
        self.gateway = gateway
        self.base_url = base_url.rstrip("/")
        self.secret_key = secret_key
        self.source = ""

    async def three_d_secure(self, payment_intent: str, result: str, *, deadline: float, stats: Stats) -> Answer:
        return await self.gateway.until_definite(
            "POST",
            f"{self.base_url}/_sim/three_d_secure",
            body={"payment_intent": payment_intent, "result": result},
            deadline=deadline,
            stats=stats,
        )

    async def payment_intents(self, *, deadline: float, stats: Stats) -> list[dict[str, Any]]:
        """Every PaymentIntent the processor knows, newest first. Raises if it cannot be read."""
        found = await self._list("payment_intents", deadline, stats)
        if found is None:
            return await self._from_state(deadline, stats)
        self.source = "GET /v1/payment_intents"
        return found

    async def refunds(self, *, deadline: float, stats: Stats) -> list[dict[str, Any]]:
        """Every Refund the processor knows (ours, and any made in its dashboard), newest first."""
        found = await self._list("refunds", deadline, stats)
        if found is None:
            raise RuntimeError("the processor does not list its refunds (GET /v1/refunds answered 404)")
        return found

    async def _list(self, kind: str, deadline: float, stats: Stats) -> list[dict[str, Any]] | None:
        """`GET /v1/<kind>` page after page; None when the processor has no such list (404)."""
        headers = {"Authorization": f"Bearer {self.secret_key}"}
        found: list[dict[str, Any]] = []
        after = ""
        for _ in range(PAGES_MAX):
            params = {"limit": str(PAGE_LIMIT)}
            if after:
                params["starting_after"] = after
            answer = await self._get(f"{self.base_url}/v1/{kind}", headers, params, deadline, stats)
            if answer.status == 404 and not found:
                return None
            if answer.status != 200 or not isinstance(answer.body, dict):
                raise RuntimeError(f"the processor's {kind}: {answer.status} {answer.body!r:.300}")
            page = answer.body.get("data") or []
            found.extend(page)
            if not answer.body.get("has_more") or not page:
                return found
            after = str(page[-1]["id"])
        raise RuntimeError(f"the processor listed more than {PAGES_MAX} pages of {kind}")

    async def _from_state(self, deadline: float, stats: Stats) -> list[dict[str, Any]]:
        answer = await self._get(f"{self.base_url}/_sim/state", {}, None, deadline, stats)
        if answer.status != 200 or not isinstance(answer.body, dict):
            raise RuntimeError(f"the simulator's state: {answer.status} {answer.body!r:.300}")
        self.source = "/_sim/state (no GET /v1/payment_intents: since the simulator's last start only)"
        return list(answer.body.get("intents") or [])

    async def _get(
        self, url: str, headers: dict[str, str], params: dict[str, str] | None, deadline: float, stats: Stats
    ) -> Answer:
        return await self.gateway.until_definite(
            "GET", url, params=params, headers=headers, deadline=deadline, stats=stats
        )
