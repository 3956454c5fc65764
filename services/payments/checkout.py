"""Hosted checkout sessions (the seed's "Hosted Checkout"): minted with an SDK key, opened and paid
on the hosted page with the session's token (checkout_tokens.py), single use.

Each payment attempt of a session is an order of its own, made by the same `Purchases.purchase` as
the direct API (so the amount range, caps, velocity, declines and the breaker answer the same), with
the purchase_reference `checkout:<session_id>:<attempt>`. A session has one current attempt at a
time, chosen under the session's row lock: while its order is in flight every pay call answers
from it (a double click, a reload, the back button pay once); after a decline the next card makes
the next attempt. The session is completed exactly when its current attempt's order is paid, read
from that order whoever settled it (our answer, confirm, the processor's webhook, the recovery loop).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
import urllib.parse

import asyncpg

from services.common import errors, ids
from services.common.config import Settings
from services.payments import limits
from services.payments.checkout_tokens import CheckoutKeys, Claims, invalid, metadata_hash, same
from services.payments.orders import PAID, UNSETTLED, OrderStore
from services.payments.purchases import Answer, PurchaseRequest, Purchases, canonical_metadata, check_amount
from services.payments.saved_cards import Card, SavedCards

URL_LEN_MAX = 2048
SESSION_ID_PREFIX = "cs"
REFERENCE_PREFIX = "checkout:"
COLUMNS = (
    "session_id, tenant_id, environment, player_email, usd_cents, success_url, cancel_url,"
    " metadata::text AS metadata_json, metadata_hash, kid, cancelled, attempts, purchase_reference,"
    " created_at, expires_at, updated_at, cancelled_at, attempt_payment_method"
)
# An attempt whose order is still not stored after this long died before storing it (a crash
# between the two transactions): its reference, which never charged anything, is taken again.
ATTEMPT_STORE_S = 60
LOOPBACK_NAMES = ("localhost",)


class SessionConsumed(errors.Conflict):
    default_error = "session_already_consumed"
    default_error_code = "SESSION_ALREADY_CONSUMED"


class SessionCancelled(errors.Conflict):
    default_error = "session_cancelled"
    default_error_code = "SESSION_CANCELLED"


class SessionExpired(errors.Gone):
    default_error = "session_expired"
    default_error_code = "SESSION_EXPIRED"


class SessionNotFound(errors.NotFound):
    default_error = "session_not_found"
    default_error_code = "SESSION_NOT_FOUND"


class PaymentInProgress(errors.Conflict):
    default_error = "payment_in_progress"
    default_error_code = "PAYMENT_IN_PROGRESS"


@dataclasses.dataclass(frozen=True)
class Session:
    row: asyncpg.Record
    order: asyncpg.Record | None  # the current attempt's order
    status: str  # open, completed, expired, cancelled


@dataclasses.dataclass(frozen=True)
class View:
    session: Session
    cards: list[Card]


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, param: str, environment: str) -> str:
    """An absolute https URL (http only for a loopback host in development), with no credentials."""

    def refuse(why: str) -> errors.InvalidRequest:
        return errors.InvalidRequest(f"{param} {why}", error_code="INVALID_PARAMETER", extra={"param": param})

    if not url or len(url) > URL_LEN_MAX or not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
        raise refuse(f"must be an absolute URL of at most {URL_LEN_MAX} ASCII characters.")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 (a malformed port raises here)
    except ValueError:
        raise refuse("is not a valid URL.") from None
    if not host:
        raise refuse("must be an absolute URL.")
    if parts.username is not None or parts.password is not None:
        raise refuse("must not carry credentials.")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and environment == "development" and _is_loopback(host):
        return url
    raise refuse("must be an https URL (http is accepted only for a loopback host in development).")


def status_of(row: asyncpg.Record, order: asyncpg.Record | None, *, now_s: float | None = None) -> str:
    if order is not None and order["status"] in PAID:
        return "completed"
    if row["cancelled"]:
        return "cancelled"
    if (time.time() if now_s is None else now_s) >= row["expires_at"].timestamp():
        return "expired"
    return "open"


def refuse_unless_open(s: Session) -> None:
    if s.status == "completed":
        raise SessionConsumed("This checkout session has already been paid.")
    if s.status == "cancelled":
        raise SessionCancelled("This checkout session was cancelled.")
    if s.status == "expired":
        raise SessionExpired("This checkout session has expired; ask for a new one.")


class Checkout:
    def __init__(
        self, purchases: Purchases, cards: SavedCards, keys: CheckoutKeys, settings: Settings, *, ttl_s: int
    ) -> None:
        self.purchases = purchases
        self.store: OrderStore = purchases.store
        self.pool = purchases.pool
        self.cards = cards
        self.keys = keys
        self.settings = settings
        self.ttl_s = ttl_s

    # -- minting and reading with the SDK key ---------------------------------------------

    async def create(
        self,
        lim: limits.Limits,
        *,
        player_email: str,
        usd_cents: int,
        success_url: str,
        cancel_url: str,
        metadata_json: str,
    ) -> tuple[asyncpg.Record, str]:
        """A new open session and its token. The amount range and the player's limits are checked
        now (a clear answer before the player sees a page) and again, authoritatively, at payment."""
        check_amount(usd_cents, self.settings)
        env = self.settings.environment
        success_url = check_url(success_url, param="success_url", environment=env)
        cancel_url = check_url(cancel_url, param="cancel_url", environment=env)
        metadata = canonical_metadata(metadata_json)
        async with self.pool.acquire() as conn:
            await limits.check(conn, self.settings, lim, player_email, usd_cents)
        now_s = int(time.time())
        claims = Claims(
            session_id=ids.new_id(SESSION_ID_PREFIX),
            tenant_id=lim.tenant_id,
            player_email=player_email,
            usd_cents=usd_cents,
            success_url=success_url,
            cancel_url=cancel_url,
            metadata_hash=metadata_hash(metadata),
            kid=self.keys.signing_kid,
            expires_at_s=now_s + self.ttl_s,
        )
        token = self.keys.sign(claims, issued_at_s=now_s)
        row = await self.pool.fetchrow(
            f"INSERT INTO checkout_sessions (session_id, tenant_id, environment, player_email, usd_cents,"
            f" success_url, cancel_url, metadata, metadata_hash, kid, created_at, expires_at)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, to_timestamp($11), to_timestamp($12))"
            f" RETURNING {COLUMNS}",
            claims.session_id,
            lim.tenant_id,
            lim.environment,
            player_email,
            usd_cents,
            success_url,
            cancel_url,
            metadata,
            claims.metadata_hash,
            claims.kid,
            now_s,
            claims.expires_at_s,
        )
        return row, token

    async def get(self, tenant_id: str, session_id: str) -> Session:
        row = None
        if session_id.startswith(SESSION_ID_PREFIX + "_") and len(session_id) <= 64:
            row = await self._row(session_id)
        if row is None or row["tenant_id"] != tenant_id:
            raise SessionNotFound("No such checkout session.")
        return await self._session(row)

    async def _session(self, row: asyncpg.Record) -> Session:
        order = None
        if row["purchase_reference"]:
            async with self.pool.acquire() as conn:
                order = await self.store.by_reference(conn, row["tenant_id"], row["purchase_reference"])
        return Session(row, order, status_of(row, order))

    # -- the page's calls, with the token --------------------------------------------------

    async def _open(self, token: str, tenant_id: str) -> Session:
        """The session a token names, if the token is ours, unaltered and the tenant's."""
        claims = self.keys.verify(token)
        row = await self._row(claims.session_id)
        if row is None or row["tenant_id"] != tenant_id:
            raise invalid()
        stored = Claims(
            session_id=row["session_id"],
            tenant_id=row["tenant_id"],
            player_email=row["player_email"],
            usd_cents=row["usd_cents"],
            success_url=row["success_url"],
            cancel_url=row["cancel_url"],
            metadata_hash=row["metadata_hash"],
            kid=row["kid"],
            expires_at_s=int(row["expires_at"].timestamp()),
        )
        if not same(claims, stored):
            raise invalid()
        return await self._session(row)

    async def view(self, token: str, tenant_id: str) -> View:
        """What the page shows. A session whose 3-D Secure challenge is under way stays usable after
        its 15 minutes, so that the player can finish what the bank started."""
        s = await self._open(token, tenant_id)
        in_flight = s.order is not None and s.order["status"] in UNSETTLED
        # A completed session is shown (the page's poll after "pending" learns its result there;
        # the gateway renders the used-link page, 409, for a browser opening it).
        if s.status != "completed" and not (s.status == "expired" and in_flight):
            refuse_unless_open(s)
        customer = await self.cards.customer(tenant_id, s.row["player_email"], create=False)
        return View(s, await self.cards.list(customer))

    async def pay(
        self,
        token: str,
        lim: limits.Limits,
        *,
        currency_name: str,
        payment_method_id: str,
        save_card: bool,
        deadline: float | None,
    ) -> tuple[Answer, Session]:
        s = await self._open(token, lim.tenant_id)
        if s.order is not None and s.order["status"] in UNSETTLED:
            return await self._resume(s, lim, currency_name, deadline=deadline)
        refuse_unless_open(s)
        email = s.row["player_email"]
        customer = await self.cards.customer(lim.tenant_id, email, create=False)
        card = await self.cards.usable(payment_method_id, customer)
        if card.customer_id:
            save_card = False  # a saved card is saved already
        elif save_card and not customer:
            customer = await self.cards.customer(lim.tenant_id, email, create=True)
        reference = await self._next_attempt(s.row["session_id"], payment_method_id)
        if reference is None:
            # Another call started an attempt while this one looked at the card: answer from it,
            # or, if its order is not stored yet, say a payment is in flight.
            current = await self._session(await self._row(s.row["session_id"]))
            if current.order is None:
                raise PaymentInProgress("A payment is being processed; wait for its answer.")
            return await self._resume(current, lim, currency_name, deadline=deadline)
        answer = await self.purchases.purchase(
            PurchaseRequest(
                limits=lim,
                currency_name=currency_name,
                player_email=email,
                usd_cents=s.row["usd_cents"],
                payment_method_id=payment_method_id,
                purchase_reference=reference,
                metadata_json=s.row["metadata_json"],
                customer_id=customer if (save_card or card.customer_id) else "",
                save_card=save_card,
            ),
            deadline=deadline,
        )
        return answer, await self._session(await self._row(s.row["session_id"]))

    async def _row(self, session_id: str) -> asyncpg.Record:
        """The session's row (None when there is no such session)."""
        return await self.pool.fetchrow(f"SELECT {COLUMNS} FROM checkout_sessions WHERE session_id = $1", session_id)

    async def _next_attempt(self, session_id: str, payment_method_id: str) -> str | None:
        """The reference of a new attempt, under the session's lock; None if the current attempt
        is in flight or paid (someone else's call got there first). The current reference whose
        order is not stored yet is the same click again (same card) or one that died before
        storing it (ATTEMPT_STORE_S): taken again, it never charged anything."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {COLUMNS} FROM checkout_sessions WHERE session_id = $1 FOR UPDATE", session_id
            )
            current = None
            if row["purchase_reference"]:
                current = await self.store.by_reference(conn, row["tenant_id"], row["purchase_reference"])
                if current is None:
                    stale = row["updated_at"].timestamp() < time.time() - ATTEMPT_STORE_S
                    if row["attempt_payment_method"] != payment_method_id and not stale:
                        return None
                    await conn.execute(
                        "UPDATE checkout_sessions SET attempt_payment_method = $2, updated_at = now()"
                        " WHERE session_id = $1",
                        session_id,
                        payment_method_id,
                    )
                    return str(row["purchase_reference"])
            if current is not None and current["status"] in (*UNSETTLED, *PAID):
                return None
            if row["cancelled"] or row["expires_at"].timestamp() <= time.time():
                refuse_unless_open(Session(row, current, status_of(row, current)))
            attempt = row["attempts"] + 1
            reference = f"{REFERENCE_PREFIX}{session_id}:{attempt}"
            await conn.execute(
                "UPDATE checkout_sessions SET attempts = $2, purchase_reference = $3, attempt_payment_method = $4,"
                " updated_at = now() WHERE session_id = $1",
                session_id,
                attempt,
                reference,
                payment_method_id,
            )
            return reference

    async def _resume(
        self, s: Session, lim: limits.Limits, currency_name: str, *, deadline: float | None
    ) -> tuple[Answer, Session]:
        """The answer of the attempt in flight (driving it again if its worker died), or 409 once paid."""
        o = s.order
        if o is None or o["status"] in PAID:
            refuse_unless_open(s)
            raise SessionConsumed("This checkout session has already been paid.")
        answer = await self.purchases.purchase(
            PurchaseRequest(
                limits=lim,
                currency_name=currency_name,
                player_email=o["player_email"],
                usd_cents=o["usd_cents"],
                payment_method_id=o["payment_method_id"],
                purchase_reference=o["purchase_reference"],
                metadata_json=s.row["metadata_json"],
                customer_id=o["processor_customer_id"] or "",
                save_card=o["save_card"],
            ),
            deadline=deadline,
        )
        return answer, await self._session(s.row)

    async def confirm(self, token: str, tenant_id: str, *, deadline: float | None) -> tuple[Answer, Session]:
        """After the 3-D Secure challenge: confirm-payment's own path for the current attempt."""
        s = await self._open(token, tenant_id)
        if s.order is None:
            refuse_unless_open(s)
            raise errors.Conflict("No payment has been started on this checkout session.", error_code="NO_PAYMENT")
        answer = await self.purchases.confirm(tenant_id, s.order["order_id"], "", deadline=deadline)
        return answer, await self._session(s.row)

    async def cancel(self, token: str, tenant_id: str) -> Session:
        """The player gave up: the session is cancelled (a challenge under way is cancelled at the
        processor first); a paid one stays paid, and a charge in flight must finish first."""
        s = await self._open(token, tenant_id)
        if s.status == "completed":
            raise SessionConsumed("This checkout session has already been paid.")
        in_flight = s.order is not None and s.order["status"] in UNSETTLED
        if s.status == "expired" and not in_flight:
            raise SessionExpired("This checkout session has expired; there is nothing to cancel.")
        if s.order is not None and s.order["status"] == "pending_payment":
            raise PaymentInProgress("A payment is being processed; wait for its answer.")
        if s.order is not None and s.order["status"] == "requires_action" and s.order["payment_intent_id"]:
            outcome = await self.purchases.processor.cancel(
                order_id=s.order["order_id"], payment_intent_id=s.order["payment_intent_id"]
            )
            await self.purchases.settlement.apply(s.order, outcome, source="checkout", deadline=None)
            s = await self._session(s.row)
            if s.status == "completed":  # the cardholder finished the challenge at the last moment
                raise SessionConsumed("This checkout session has already been paid.")
        row = await self.pool.fetchrow(
            f"UPDATE checkout_sessions SET cancelled = true, cancelled_at = COALESCE(cancelled_at, now()),"
            f" updated_at = now() WHERE session_id = $1 RETURNING {COLUMNS}",
            s.row["session_id"],
        )
        return await self._session(row)

    async def remove_card(self, token: str, tenant_id: str, card_id: str) -> View:
        s = await self._open(token, tenant_id)
        refuse_unless_open(s)
        customer = await self.cards.customer(tenant_id, s.row["player_email"], create=False)
        await self.cards.remove(card_id, customer)
        return View(s, await self.cards.list(customer))
