"""The OpenAPI 3.1 document of the public API (/api/*). A test keeps it in step with the routes."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Bad input; nothing changed.",
        401: "Missing, unknown, expired or revoked X-Game-Secret-Key.",
        402: "Insufficient funds or a card decline.",
        403: "The tenant is suspended.",
        404: "No such resource.",
        409: "Conflict.",
        429: "Rate limited; see the Retry-After header.",
        503: "A backend is unavailable; retry with the same idempotency key.",
    }
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    """A required JSON request body."""
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_STR = {"type": "string"}
_UNITS = {"type": "string", "description": 'currency units as a decimal string, e.g. "100" or "0.35"'}
_BALANCE = {
    "type": "object",
    "properties": {
        "player_email": _STR,
        "balance": _UNITS,
        "available_balance": _UNITS,
        "pending": _UNITS,
        "currency_name": _STR,
    },
}


def _ledger_paths() -> dict[str, Any]:
    return {
        "/api/item-purchases/purchase-item": {
            "post": {
                "operationId": "purchaseItem",
                "summary": "Debit a player for an item; split the price between the partner and the network.",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["player_email", "item_id", "item_name", "price", "idempotency_key"],
                        "properties": {
                            "player_email": {"type": "string", "format": "email"},
                            "item_id": {"type": "string", "maxLength": 255},
                            "item_name": {"type": "string", "maxLength": 255},
                            "price": _UNITS,
                            "quantity": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
                            "idempotency_key": {"type": "string", "maxLength": 255},
                            "metadata": {"type": "object", "maxProperties": 50},
                        },
                    }
                ),
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "status": {"const": "success"},
                                "transaction_id": _STR,
                                "new_balance": _UNITS,
                                "partner_amount": _UNITS,
                                "network_fee": _UNITS,
                                "total": _UNITS,
                                "duplicate": {"type": "boolean"},
                            },
                        },
                        "Purchased (or, with duplicate: true, the replay of the first result for this key).",
                    ),
                    **_errors(400, 401, 402, 403, 429, 503),
                },
            }
        },
        "/api/players/balance": {
            "get": {
                "operationId": "getPlayerBalance",
                "parameters": [{"name": "player_email", "in": "query", "required": True, "schema": _STR}],
                "responses": {
                    "200": _json(_BALANCE, "The balance; an unknown player reads as zero."),
                    **_errors(400, 401, 403, 429),
                },
            }
        },
        "/api/players/balances": {
            "post": {
                "operationId": "getPlayerBalances",
                "requestBody": _body(
                    {
                        "type": "object",
                        "properties": {"player_emails": {"type": "array", "items": _STR, "maxItems": 1000}},
                    }
                ),
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"currency_name": _STR, "balances": {"type": "array", "items": _BALANCE}},
                        },
                        "Balances in the order asked; unknown players read as zero.",
                    ),
                    **_errors(400, 401, 403, 429),
                },
            }
        },
        "/api/players/balances/export": {
            "get": {
                "operationId": "exportPlayerBalances",
                "summary": "Every player balance as of one snapshot, as NDJSON; the last line: count, snapshot_at.",
                "responses": {
                    "200": {"description": "NDJSON stream", "content": {"application/x-ndjson": {"schema": _BALANCE}}},
                    **_errors(401, 403, 429),
                },
            }
        },
        "/api/ledger/entries": {
            "get": {
                "operationId": "listLedgerEntries",
                "summary": "Every ledger entry of the tenant's transactions, in order, by cursor.",
                "parameters": [
                    {"name": "cursor", "in": "query", "schema": _STR},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "data": {"type": "array", "items": {"type": "object"}},
                                "has_more": {"type": "boolean"},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        },
                        "A page of entries.",
                    ),
                    **_errors(400, 401, 403, 429),
                },
            }
        },
        "/api/revenue": {
            "get": {
                "operationId": "getRevenue",
                "summary": "Partner revenue: owed, paid out and lifetime, in USD.",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {k: _STR for k in ("owed_usd", "paid_out_usd", "lifetime_usd")},
                        },
                        "Revenue.",
                    ),
                    **_errors(401, 403, 429),
                },
            }
        },
    }


def _payments_paths() -> dict[str, Any]:
    outcome = {
        "type": "object",
        "properties": {
            "status": {"enum": ["success", "requires_action", "pending"]},
            "transaction_id": _STR,
            "order_id": _STR,
            "new_balance": {"type": ["string", "null"]},
            "client_secret": _STR,
            "payment_intent_id": _STR,
            "duplicate": {"type": "boolean"},
            "already_processed": {"type": "boolean"},
        },
    }
    return {
        "/api/currency-purchases/purchase-currency": {
            "post": {
                "operationId": "purchaseCurrency",
                "summary": "Charge a tokenised card and credit the player's branded currency (1 USD = 10 units).",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["player_email", "usd_amount", "payment_method_id", "purchase_reference"],
                        "properties": {
                            "player_email": {"type": "string", "format": "email"},
                            "usd_amount": {"type": "string", "examples": ["10.00"]},
                            "payment_method_id": _STR,
                            "purchase_reference": {"type": "string", "maxLength": 255},
                            "client_request_id": {"type": "string", "maxLength": 255, "deprecated": True},
                            "metadata": {"type": "object"},
                        },
                    }
                ),
                "responses": {
                    "200": _json(outcome, "success (or its replay, duplicate: true) or requires_action (3-D Secure)."),
                    "409": _json(outcome, "status: pending, duplicate: true: this purchase_reference is in flight."),
                    **_errors(400, 401, 402, 403, 429, 503),
                },
            }
        },
        "/api/currency-purchases/confirm-payment": {
            "post": {
                "operationId": "confirmPayment",
                "summary": "After 3-D Secure: credit the purchase (idempotent; already_processed on a repeat).",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["payment_intent_id", "order_id"],
                        "properties": {"payment_intent_id": _STR, "order_id": _STR},
                    }
                ),
                "responses": {"200": _json(outcome, "Credited."), **_errors(400, 401, 402, 403, 404, 409, 429, 503)},
            }
        },
        "/api/currency-purchases/order-details": {
            "get": {
                "operationId": "getOrderDetails",
                "parameters": [{"name": "order_id", "in": "query", "required": True, "schema": _STR}],
                "responses": {
                    "200": _json({"type": "object"}, "The order, its timestamps and its audit trail (history)."),
                    **_errors(400, 401, 403, 404, 429),
                },
            }
        },
    }


def _webhooks_paths() -> dict[str, Any]:
    delivery = {
        "type": "object",
        "properties": {
            "delivery_id": _STR,
            "event_id": _STR,
            "event_type": _STR,
            "url": _STR,
            "status": {"enum": ["pending", "delivered", "failed"]},
            "attempts": {"type": "integer"},
            "attempt_log": {"type": "array", "items": {"type": "object"}},
        },
    }
    page = {
        "type": "object",
        "properties": {
            "data": {"type": "array", "items": delivery},
            "has_more": {"type": "boolean"},
            "next_cursor": {"type": ["string", "null"]},
        },
    }
    one = {"200": _json(delivery, "The delivery."), **_errors(401, 403, 404, 429)}
    query = [
        {"name": n, "in": "query", "schema": _STR}
        for n in ("event_type", "status", "since", "until", "cursor", "limit")
    ]
    return {
        "/api/webhooks/deliveries": {
            "get": {
                "operationId": "listWebhookDeliveries",
                "parameters": query,
                "responses": {"200": _json(page, "Newest first."), **_errors(400, 401, 403, 429)},
            }
        },
        "/api/webhooks/deliveries/{delivery_id}": {
            "get": {
                "operationId": "getWebhookDelivery",
                "parameters": [{"name": "delivery_id", "in": "path", "required": True, "schema": _STR}],
                "responses": one,
            }
        },
        "/api/webhooks/deliveries/{delivery_id}/redeliver": {
            "post": {
                "operationId": "redeliverWebhook",
                "parameters": [{"name": "delivery_id", "in": "path", "required": True, "schema": _STR}],
                "responses": one,
            }
        },
        "/api/webhooks/redeliver-failed": {
            "post": {
                "operationId": "redeliverFailedWebhooks",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["since"],
                        "properties": {"since": {"type": "string", "format": "date-time"}},
                    }
                ),
                "responses": {
                    "200": _json({"type": "object"}, "How many were queued again."),
                    **_errors(400, 401, 403, 429),
                },
            }
        },
        "/api/webhooks/test": {
            "post": {
                "operationId": "sendTestWebhook",
                "responses": {
                    "201": _json(delivery, "A webhook.test event on its way."),
                    **_errors(400, 401, 403, 429),
                },
            }
        },
        "/api/webhooks/rotate-secret": {
            "post": {
                "operationId": "rotateWebhookSecret",
                "summary": "A new signing secret (shown once); the old one keeps signing for overlap_seconds.",
                "responses": {"201": _json({"type": "object"}, "The new secret."), **_errors(400, 401, 403, 429)},
            }
        },
    }


def document(server_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "INVO Network API",
            "version": "1.0.0",
            "description": "Branded in-app currencies: purchases, balances, transfers, payouts, webhooks.",
        },
        "servers": [{"url": server_url}],
        "security": [{"GameSecretKey": []}],
        "paths": {
            "/api/tenant": {
                "get": {
                    "operationId": "getTenant",
                    "summary": "The calling tenant's own configuration (no secrets).",
                    "responses": {
                        "200": {
                            "description": "The tenant.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Tenant"}}},
                        },
                        **_errors(401, 403, 429, 503),
                    },
                }
            },
            **_ledger_paths(),
            **_payments_paths(),
            **_webhooks_paths(),
        },
        "components": {
            "securitySchemes": {"GameSecretKey": {"type": "apiKey", "in": "header", "name": "X-Game-Secret-Key"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["status", "error", "error_code", "message", "request_id"],
                    "properties": {
                        "status": {"const": "error"},
                        "error": {"type": "string", "description": "snake_case error"},
                        "error_code": {"type": "string", "description": "UPPER_SNAKE error code"},
                        "message": {"type": "string"},
                        "request_id": {"type": "string"},
                    },
                },
                "Tenant": {
                    "type": "object",
                    "properties": {
                        "tenant_id": {"type": "string"},
                        "name": {"type": "string"},
                        "currency_name": {"type": "string"},
                        "environment": {"enum": ["sandbox", "production"]},
                        "status": {"enum": ["active", "suspended"]},
                        "webhook_url": {"type": ["string", "null"]},
                        "network_fee_percentage": {"type": "string", "examples": ["10"]},
                        "transfer_fee_percentage": {"type": "string", "examples": ["3.5"]},
                        "allows_outgoing_transfers": {"type": "boolean"},
                        "allows_incoming_transfers": {"type": "boolean"},
                        "universal_transfers": {"enum": ["yes", "no"]},
                        "linked_game_ids": {"type": "array", "items": {"type": "string"}},
                        "spending_caps": {
                            "type": "object",
                            "properties": {
                                k: {"type": ["string", "null"]} for k in ("hourly_usd", "daily_usd", "monthly_usd")
                            },
                        },
                        "rate_limit_per_second": {"type": "integer"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    }
