"""Every limit a request is held to, in one place: the gateway's declarations (and so the OpenAPI
document) and the services that own the data import them from here, so the edge can never allow
what a service refuses, nor the document promise what neither accepts.

Names carry their unit last. A service still checks what it owns (it may be called by more than
the gateway); it checks it against the same number.
"""

from __future__ import annotations

import re
import urllib.parse

# -- identifiers --------------------------------------------------------------------------------
TENANT_ID_PATTERN = r"^tn_[0-9A-Z]{26}$"
TENANT_ID_RE = re.compile(TENANT_ID_PATTERN)
KEY_ID_PATTERN = r"^key_[0-9A-Z]{26}$"
KEY_ID_RE = re.compile(KEY_ID_PATTERN)
ID_LEN_MAX = 64  # any id we mint (tn_, key_, ord_, dlv_, txn_ ...) is shorter

# -- tenants ------------------------------------------------------------------------------------
TENANT_NAME_LEN_MAX = 200
CURRENCY_NAME_LEN_MAX = 64
WEBHOOK_URL_LEN_MAX = 2048
NETWORK_FEE_BPS_MAX = 10_000  # 100%: a tenant may negotiate any item-purchase fee
# The user pays 10% on a transfer and the destination keeps 3.5%: the source can take at most
# the 6.5% left (money.split_transfer_fee refuses more).
TRANSFER_FEE_BPS_MAX = 650
LINKED_GAME_IDS_MAX = 1000
RATE_LIMIT_PER_SECOND_MAX = 100_000
CAP_USD_CENTS_MAX = 100_000_000_00  # $100M: a typo guard, not a business rule
ROTATION_OVERLAP_S_MAX = 30 * 86400
SDK_KEY_PREFIX = "ivsdk_"
SDK_KEY_LEN_MAX = 100
# What every SDK key looks like (the prefix, then base62; URL-safe base64 allowed too): anything
# else is refused without a lookup.
SDK_KEY_RE = re.compile(rf"{SDK_KEY_PREFIX}[A-Za-z0-9_-]{{1,{SDK_KEY_LEN_MAX - len(SDK_KEY_PREFIX)}}}")

# -- players, purchases, adjustments ---------------------------------------------------------------
EMAIL_LEN_MAX = 254
IDEMPOTENCY_KEY_LEN_MAX = 255
PURCHASE_REFERENCE_LEN_MAX = 255
PAYMENT_METHOD_ID_LEN_MAX = 255
ITEM_ID_LEN_MAX = 255
ITEM_NAME_LEN_MAX = 255
QUANTITY_MAX = 1000
REASON_LEN_MAX = 500
# Amounts in minor units (1/100 unit). The ledger refuses any posting above LEDGER_AMOUNT_MINOR_MAX,
# so a price may be at most that over the largest quantity; an operator's adjustment stops lower
# (a hundred billion units), a typo guard.
LEDGER_AMOUNT_MINOR_MAX = 10**15
PRICE_MINOR_MAX = LEDGER_AMOUNT_MINOR_MAX // QUANTITY_MAX
ADJUSTMENT_MINOR_MAX = 10**13
# Payouts: a typo guard on the amount ($1B), the holder's name as the bank takes it (NACHA: 22
# characters are sent, a longer name is cut by the provider).
PAYOUT_USD_CENTS_MAX = 100_000_000_000
ACCOUNT_HOLDER_LEN_MAX = 100
PAYOUTS_LIMIT_MAX = 100
REVIEW_REASON_LEN_MAX = 500
# A transfer's amount (what the recipient gets; the sender pays 10% on top): a typo guard.
TRANSFER_AMOUNT_MINOR_MAX = 10**11 - 10  # 999,999,999.9 units
METADATA_KEYS_MAX = 50
METADATA_KEY_LEN_MAX = 40
METADATA_BYTES_MAX = 8192  # the seed's 8 KB, as compact JSON text

# -- request shape ---------------------------------------------------------------------------------
# A body is an object of fields, a field at most an object or list of a few levels (metadata): 32
# levels is far past any request we take, and far short of a recursion limit in any parser or
# walker behind the gateway.
JSON_DEPTH_MAX = 32
# Ledger entry ids are PostgreSQL bigints, so a cursor names at most this.
CURSOR_ENTRY_ID_MAX = 2**63 - 1

# -- authentication ---------------------------------------------------------------------------------
# An unknown, revoked or expired credential is remembered as such this long (at most the cache's
# own TTL), so that a flood of one bad key costs one lookup. A key issued later is never one that
# was refused before (keys are random), and this gateway forgets its misses when it issues one; a
# miss outlives an issue through another replica by this much at most.
AUTH_MISS_TTL_S = 2.0
# Failed authentications per client address: a burst, then a steady rate; past it, a request that
# would need a lookup or a token comparison is 429 with Retry-After.
AUTH_FAILURES_BURST = 20
AUTH_FAILURES_PER_S = 1.0
AUTH_FAILURE_ADDRESSES_MAX = 10_000  # bounded memory: refilled buckets go first, then the oldest

# -- reads ----------------------------------------------------------------------------------------
BATCH_EMAILS_MAX = 1000
ENTRIES_LIMIT_MAX = 1000
DELIVERIES_LIMIT_MAX = 100
EVENT_TYPE_LEN_MAX = 100
TRANSFERS_LIMIT_MAX = 100
DEV_SMS_LIMIT_MAX = 100
PHONE_LEN_MAX = 32  # as typed: "+1 (415) 555-0123" and the like; normalised to E.164
CLAIM_CODE_LEN_MAX = 64  # as typed: spaces and hyphens are forgiven


def webhook_url_problem(url: str, *, environment: str) -> str | None:
    """Why `url` cannot be a tenant's webhook endpoint, or None. ("" clears the endpoint.)"""
    if url == "":
        return None
    if len(url) > WEBHOOK_URL_LEN_MAX:
        return f"webhook_url must be at most {WEBHOOK_URL_LEN_MAX} characters."
    try:
        parsed = urllib.parse.urlsplit(url)
        hostname = parsed.hostname
    except ValueError:
        return "webhook_url must be an absolute http(s) URL."
    if parsed.scheme not in ("https", "http") or not hostname:
        return "webhook_url must be an absolute http(s) URL."
    if parsed.username or parsed.password:
        return "webhook_url must not carry credentials."
    if environment == "production" and parsed.scheme != "https":
        return "webhook_url must use https for a production tenant."
    return None
