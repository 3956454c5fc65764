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
SDK_KEY_LEN_MAX = 100

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
METADATA_KEYS_MAX = 50
METADATA_KEY_LEN_MAX = 40
METADATA_BYTES_MAX = 8192  # the seed's 8 KB, as compact JSON text

# -- reads ----------------------------------------------------------------------------------------
BATCH_EMAILS_MAX = 1000
ENTRIES_LIMIT_MAX = 1000
DELIVERIES_LIMIT_MAX = 100
EVENT_TYPE_LEN_MAX = 100


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
