"""The development simulators in the stack: the card processor's (`devstack/processor_sim`, Stripe's
API, for payments) and the ACH provider's (`devstack/ach_sim`, Modern Treasury's, for payouts).

Each runs unless a real provider's API base is configured (INVO_PROCESSOR_API_BASE,
INVO_ACH_API_BASE). `configure` gives each one that runs a free port and its development secrets
(generated once and kept in `.invo/secrets.json` by the Stack, `SECRETS`), points every process at
it, and points its webhooks at the gateway.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping

from devstack import devservers

# The development secrets the simulators use, by their name in secrets.json.
SECRETS: dict[str, Callable[[], str]] = {
    "processor_secret_key": lambda: "sk_test_sim_" + secrets.token_urlsafe(18),
    "processor_webhook_secret": lambda: "whsec_sim_" + secrets.token_urlsafe(24),
    "processor_publishable_key": lambda: "pk_test_sim_" + secrets.token_urlsafe(18),
    # The ACH simulator's Modern Treasury organization, API key, webhook key and internal account.
    "ach_organization_id": lambda: str(uuid.uuid4()),
    "ach_api_key": lambda: "test-sim-" + secrets.token_urlsafe(24),
    "ach_webhook_key": lambda: secrets.token_urlsafe(32),
    "ach_originating_account_id": lambda: str(uuid.uuid4()),
}
# A simulator serves once its port is open.
LISTEN = {"processor_sim": "INVO_PROCESSOR_SIM_LISTEN", "ach_sim": "INVO_ACH_SIM_LISTEN"}
API_BASE = {"processor_sim": "INVO_PROCESSOR_API_BASE", "ach_sim": "INVO_ACH_API_BASE"}
# What a developer needs in dev.env to call the ACH simulator with the Modern Treasury SDK.
ACH_DEV_ENV = ("INVO_ACH_ORGANIZATION_ID", "INVO_ACH_API_KEY", "INVO_ACH_ORIGINATING_ACCOUNT_ID")


def configure(env: dict[str, str], sec: Mapping[str, str], *, gateway_port: int) -> list[str]:
    """Set `env` up for the simulators that run (those whose provider is not configured in it);
    their process names."""
    running = [name for name, base in API_BASE.items() if not env.get(base)]
    gateway = f"http://127.0.0.1:{gateway_port}"
    if "processor_sim" in running:
        port = devservers.free_port()
        env["INVO_PROCESSOR_SIM_LISTEN"] = f"127.0.0.1:{port}"
        env["INVO_PROCESSOR_API_BASE"] = f"http://127.0.0.1:{port}"
        env["INVO_PROCESSOR_SECRET_KEY"] = sec["processor_secret_key"]
        env["INVO_PROCESSOR_WEBHOOK_SECRET"] = sec["processor_webhook_secret"]
        env["INVO_PROCESSOR_PUBLISHABLE_KEY"] = sec["processor_publishable_key"]
        env["INVO_PROCESSOR_JS_URL"] = f"http://127.0.0.1:{port}/js/v3/stripe.js"
        env["INVO_PROCESSOR_SIM_WEBHOOK_URL"] = f"{gateway}/webhooks/processor"
    if "ach_sim" in running:
        port = devservers.free_port()
        env["INVO_ACH_SIM_LISTEN"] = f"127.0.0.1:{port}"
        env["INVO_ACH_API_BASE"] = f"http://127.0.0.1:{port}"
        env["INVO_ACH_ORGANIZATION_ID"] = sec["ach_organization_id"]
        env["INVO_ACH_API_KEY"] = sec["ach_api_key"]
        env["INVO_ACH_WEBHOOK_KEYS"] = sec["ach_webhook_key"]  # the simulator signs with the first
        env["INVO_ACH_ORIGINATING_ACCOUNT_ID"] = sec["ach_originating_account_id"]
        env["INVO_ACH_SIM_WEBHOOK_URL"] = f"{gateway}/webhooks/ach"
    return running


def dev_env(env: Mapping[str, str], running: list[str]) -> dict[str, str]:
    """The providers' entries of dev.env: their API bases, and the ACH simulator's credentials."""
    out = {base: env[base] for base in API_BASE.values()}
    if "ach_sim" in running:
        out.update({key: env[key] for key in ACH_DEV_ENV})
    return out
