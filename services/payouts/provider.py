"""The ACH provider: Modern Treasury's payment orders through its official SDK (`modern-treasury`,
async client), pointed at the simulator in development and tests by base address only, behind the
shared circuit breaker.

The SDK's own retries are off (`max_retries=0`): the breaker must see every failure, and every
retry of ours resends the same idempotency key (`invo-payout-<payout_id>`), so a payout is one
payment order however often it is sent. The provider replays a key's first answer rather than
refusing another body with it, so an answer is checked against what was asked (amount, payout id).

Nothing here logs a request body: the SDK logs whole bodies (the account number) at DEBUG, so its
loggers are pinned at INFO, and provider errors are logged by their code only.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import modern_treasury
from modern_treasury import AsyncModernTreasury
from modern_treasury.types.payment_order_create_params import ReceivingAccount

from services.common import errors
from services.common.breaker import CircuitBreaker

log = logging.getLogger("invo.payouts.provider")
for _name in ("modern_treasury", "httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# The provider's statuses, as the payout's: an order on its way is `processing`; the ends are ours too.
IN_FLIGHT = ("pending", "needs_approval", "approved", "processing", "sent", "held")
FAILED = ("failed", "denied", "cancelled", "stopped", "reversed")


class ProviderUnavailable(errors.Unavailable):
    default_error = "ach_provider_unavailable"
    default_error_code = "ACH_PROVIDER_UNAVAILABLE"


class ProviderRefused(Exception):
    """The provider refused the payment order for good (its answer, not an outage)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class Order:
    order_id: str
    status: str
    amount: int | None
    payout_id: str
    return_code: str = ""
    return_reason: str = ""
    failure_reason: str = ""


def order_of(po: dict[str, Any]) -> Order:
    """A payment order as the provider renders it (an API answer or a webhook's `data`)."""
    ret = po.get("current_return") or {}
    metadata = po.get("metadata") or {}
    amount = po.get("amount")
    return Order(
        order_id=str(po.get("id") or ""),
        status=str(po.get("status") or ""),
        amount=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
        payout_id=str(metadata.get("payout_id") or "") if isinstance(metadata, dict) else "",
        return_code=str(ret.get("code") or "") if isinstance(ret, dict) else "",
        return_reason=str(ret.get("reason") or "") if isinstance(ret, dict) else "",
        failure_reason=str(po.get("vendor_failure_reason") or ""),
    )


def _code(exc: modern_treasury.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("errors"), dict):
        return str(body["errors"].get("code") or "")[:64]
    return ""


class AchProvider:
    def __init__(
        self,
        *,
        api_base: str,
        organization_id: str,
        api_key: str,
        originating_account_id: str,
        timeout_s: float,
        failures_max: int,
        cooldown_s: float,
    ) -> None:
        self.client = AsyncModernTreasury(
            organization_id=organization_id,
            api_key=api_key,
            base_url=api_base or None,
            timeout=timeout_s,
            max_retries=0,
        )
        self.originating_account_id = originating_account_id
        self.breaker = CircuitBreaker(
            name="ach",
            failures_max=failures_max,
            cooldown_s=cooldown_s,
            error=ProviderUnavailable,
            message="The ACH provider is unavailable; the payout is sent as soon as it is back.",
        )

    async def close(self) -> None:
        await self.client.close()

    async def _guarded(self, call: Any) -> Any:
        self.breaker.before_call()
        try:
            result = await call
        except (
            modern_treasury.APIConnectionError,
            modern_treasury.InternalServerError,
            modern_treasury.RateLimitError,
        ) as exc:
            self.breaker.record_failure()
            log.warning("ACH provider failed: %s", type(exc).__name__)
            raise ProviderUnavailable("The ACH provider did not answer; retry shortly.") from None
        except modern_treasury.APIStatusError as exc:
            status = exc.status_code
            if status in (401, 403):  # our credentials: ours to fix, the payout waits
                self.breaker.record_failure()
                log.error("ACH provider refused our credentials (%d)", status)
                raise ProviderUnavailable("The ACH provider refused INVO's credentials.") from None
            self.breaker.record_success()  # it answered
            if status in (408, 409, 425):  # a duplicate still in flight there: ask again later
                raise ProviderUnavailable("The ACH provider is still working on this payment order.") from None
            raise ProviderRefused(_code(exc) or f"http_{status}", f"the ACH provider refused: {status}") from None
        except BaseException:
            self.breaker.abandon()
            raise
        self.breaker.record_success()
        return result

    async def create(
        self,
        *,
        payout_id: str,
        usd_cents: int,
        holder: str,
        routing_number: str,
        account_number: str,
        account_type: str,
    ) -> Order:
        po = await self._guarded(
            self.client.payment_orders.create(
                type="ach",
                direction="credit",
                amount=usd_cents,
                currency="USD",
                originating_account_id=self.originating_account_id,
                receiving_account=ReceivingAccount(
                    account_details=[{"account_number": account_number}],
                    routing_details=[{"routing_number": routing_number, "routing_number_type": "aba"}],
                    party_name=holder,
                    account_type="savings" if account_type == "savings" else "checking",
                    party_type="business",
                ),
                description="INVO partner payout",
                metadata={"payout_id": payout_id},
                idempotency_key=f"invo-payout-{payout_id}",
            )
        )
        order = order_of(po.to_dict())
        if order.payout_id != payout_id or order.amount != usd_cents or not order.order_id:
            # Our key answered with another payment order: never treat it as this payout's.
            raise errors.Conflict(
                "The ACH provider answered this payout's key with another payment order; an operator must look.",
                error_code="ACH_ORDER_MISMATCH",
            )
        return order

    async def retrieve(self, order_id: str) -> Order:
        po = await self._guarded(self.client.payment_orders.retrieve(order_id))
        return order_of(po.to_dict())

    async def find(self, payout_id: str) -> Order | None:
        """The payment order made for a payout, if any (a create whose answer was lost)."""
        page = await self._guarded(self.client.payment_orders.list(metadata={"payout_id": payout_id}, per_page=2))
        orders = [order_of(po.to_dict()) for po in page.items]
        mine = [o for o in orders if o.payout_id == payout_id]
        return mine[0] if mine else None
