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
