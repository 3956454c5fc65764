"""Settings from environment variables, with development defaults.

Every variable is listed in README.md ("Environment variables"); a test keeps the two in step.
Names carry their unit last (`_s`, `_ms`, `_bytes`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

SERVICES = ("tenants", "ledger", "payments", "transfers", "payouts", "webhooks", "subscriptions")
# Development ports; `make run` picks free ones and passes them in the environment.
DEFAULT_GRPC_PORTS = {name: 50051 + i for i, name in enumerate(SERVICES)}


class ConfigError(Exception):
    """A setting is missing or malformed."""


def _field(env: str, default: Any, doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"env": env, "doc": doc})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    environment: str = _field(
        "INVO_ENVIRONMENT", "development", "`development` or `production`; production refuses dev defaults."
    )
    database_url: str = _field("INVO_DATABASE_URL", "", "PostgreSQL URL. Empty: `make run` starts one.")
    db_schema_prefix: str = _field(
        "INVO_DB_SCHEMA_PREFIX", "", "Prefix of every service's schema name (tests isolate by it)."
    )
    db_pool_max: int = _field("INVO_DB_POOL_MAX", 10, "Connections per service pool.")
    db_statement_timeout_ms: int = _field(
        "INVO_DB_STATEMENT_TIMEOUT_MS", 5000, "Server-side timeout of every SQL statement."
    )
    nats_url: str = _field("INVO_NATS_URL", "", "NATS URL. Empty: `make run` starts one.")
    nats_stream: str = _field("INVO_NATS_STREAM", "INVO_EVENTS", "JetStream stream holding every event.")
    nats_stream_replicas: int = _field(
        "INVO_NATS_STREAM_REPLICAS",
        1,
        "Copies JetStream keeps of the event stream (3 on a three-server production cluster; 1 on one server).",
    )
    nats_subject_prefix: str = _field(
        "INVO_NATS_SUBJECT_PREFIX", "invo.events", "Events go to `<prefix>.<tenant_id>.<event_type>`."
    )
    grpc_listen: str = _field(
        "INVO_GRPC_LISTEN", "", "host:port a service listens on; empty: its own `INVO_<NAME>_ADDR`."
    )
    tenants_addr: str = _field("INVO_TENANTS_ADDR", "127.0.0.1:50051", "Tenants service gRPC address.")
    ledger_addr: str = _field("INVO_LEDGER_ADDR", "127.0.0.1:50052", "Ledger service gRPC address.")
    payments_addr: str = _field("INVO_PAYMENTS_ADDR", "127.0.0.1:50053", "Payments service gRPC address.")
    transfers_addr: str = _field("INVO_TRANSFERS_ADDR", "127.0.0.1:50054", "Transfers service gRPC address.")
    payouts_addr: str = _field("INVO_PAYOUTS_ADDR", "127.0.0.1:50055", "Payouts service gRPC address.")
    webhooks_addr: str = _field("INVO_WEBHOOKS_ADDR", "127.0.0.1:50056", "Webhooks service gRPC address.")
    subscriptions_addr: str = _field(
        "INVO_SUBSCRIPTIONS_ADDR", "127.0.0.1:50057", "Subscriptions service gRPC address."
    )
    rpc_timeout_s: float = _field("INVO_RPC_TIMEOUT_S", 5.0, "Deadline of every internal gRPC call.")
    grpc_shutdown_grace_s: float = _field(
        "INVO_GRPC_SHUTDOWN_GRACE_S", 5.0, "How long in-flight calls may finish after SIGTERM."
    )
    gateway_host: str = _field("INVO_GATEWAY_HOST", "127.0.0.1", "Gateway HTTP listen host.")
    gateway_port: int = _field("INVO_GATEWAY_PORT", 8080, "Gateway HTTP listen port.")
    public_base_url: str = _field("INVO_PUBLIC_BASE_URL", "", "The gateway's public URL; empty: http://<host>:<port>.")
    admin_token: str = _field(
        "INVO_ADMIN_TOKEN",
        "",
        "Bootstrap bearer token of /admin/* (acts as an admin, creates the named operators)."
        " Empty: only named operators' credentials open it.",
    )
    key_pepper: str = _field(
        "INVO_KEY_PEPPER", "", "Secret that keys the HMAC under which SDK keys are stored (required)."
    )
    data_keys: str = _field(
        "INVO_DATA_KEYS",
        "",
        "AES-256-GCM keys for secrets at rest: `kid:base64key[,kid:base64key...]`, first one encrypts.",
    )
    auth_cache_ttl_s: float = _field("INVO_AUTH_CACHE_TTL_S", 5.0, "How long the gateway caches a resolved SDK key.")
    auth_cache_size_max: int = _field("INVO_AUTH_CACHE_SIZE_MAX", 10000, "Entries in that cache at most.")
    rate_limit_per_second: int = _field(
        "INVO_RATE_LIMIT_PER_SECOND", 200, "Default requests per second per tenant (tenants may override)."
    )
    rate_limit_burst_s: float = _field("INVO_RATE_LIMIT_BURST_S", 2.0, "Bucket depth in seconds of the tenant's rate.")
    key_rotation_overlap_s: int = _field(
        "INVO_KEY_ROTATION_OVERLAP_S", 86400, "Default life of an old SDK key after a rotation."
    )
    http_body_max_bytes: int = _field("INVO_HTTP_BODY_MAX_BYTES", 65536, "Largest request body accepted.")
    outbox_poll_interval_ms: int = _field(
        "INVO_OUTBOX_POLL_INTERVAL_MS", 200, "How often the outbox relay looks for unsent events."
    )
    outbox_batch_max: int = _field("INVO_OUTBOX_BATCH_MAX", 100, "Events published per relay round.")
    outbox_retention_s: int = _field(
        "INVO_OUTBOX_RETENTION_S", 7 * 86400, "Published events are pruned from the outbox after this."
    )
    log_level: str = _field("INVO_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR.")
    metrics_listen: str = _field(
        "INVO_METRICS_LISTEN",
        "",
        "host:port of this process's Prometheus `/metrics` server (k8s: 0.0.0.0:9090); empty: none.",
    )
    metrics_refresh_s: float = _field(
        "INVO_METRICS_REFRESH_S", 15.0, "How often gauges counted in the database (holds, payouts, backlog) refresh."
    )
    processor_api_base: str = _field(
        "INVO_PROCESSOR_API_BASE", "", "Card processor REST base; empty: Stripe's. `make run` sets the simulator's."
    )
    processor_secret_key: str = _field("INVO_PROCESSOR_SECRET_KEY", "", "The processor's secret API key (sk_...).")
    processor_webhook_secret: str = _field(
        "INVO_PROCESSOR_WEBHOOK_SECRET", "", "Signing secret of processor webhooks (whsec_...)."
    )
    processor_timeout_s: float = _field("INVO_PROCESSOR_TIMEOUT_S", 10.0, "Timeout of each processor call.")
    processor_sim_listen: str = _field(
        "INVO_PROCESSOR_SIM_LISTEN", "127.0.0.1:12111", "host:port of the processor simulator (development)."
    )
    processor_sim_state: str = _field(
        "INVO_PROCESSOR_SIM_STATE",
        "",
        "The processor simulator's journal (development); empty: $INVO_HOME/processor_sim/state.jsonl, "
        "or memory only without INVO_HOME.",
    )
    processor_sim_webhook_url: str = _field(
        "INVO_PROCESSOR_SIM_WEBHOOK_URL", "", "Where the simulator posts processor webhooks (the gateway)."
    )
    processor_publishable_key: str = _field(
        "INVO_PROCESSOR_PUBLISHABLE_KEY",
        "",
        "The processor's publishable key (pk_...), which the checkout page hands its card field.",
    )
    processor_js_url: str = _field(
        "INVO_PROCESSOR_JS_URL",
        "https://js.stripe.com/v3/",
        "The processor's browser script the checkout page loads (the simulator's in development).",
    )
    checkout_keys: str = _field(
        "INVO_CHECKOUT_KEYS",
        "",
        "Keys signing checkout session tokens: `kid:secret[,kid:secret...]`, the first signs, all verify.",
    )
    console_keys: str = _field(
        "INVO_CONSOLE_KEYS",
        "",
        "AES-256-GCM keys sealing the operators' console session cookie: `kid:base64key[,...]`, the first"
        " seals, every one opens. Empty: the console (/console) is off.",
    )
    console_session_s: int = _field(
        "INVO_CONSOLE_SESSION_S", 8 * 3600, "How long a console sign-in lasts (while the credential stays valid)."
    )
    checkout_session_ttl_s: int = _field(
        "INVO_CHECKOUT_SESSION_TTL_S", 900, "Life of a hosted checkout session and its token (the seed's 15 minutes)."
    )
    purchase_min_usd_cents: int = _field("INVO_PURCHASE_MIN_USD_CENTS", 50, "Smallest currency purchase (USD cents).")
    purchase_max_usd_cents: int = _field(
        "INVO_PURCHASE_MAX_USD_CENTS", 100_000, "Largest single currency purchase (USD cents)."
    )
    caps_sandbox_hourly_usd_cents: int = _field(
        "INVO_CAPS_SANDBOX_HOURLY_USD_CENTS", 50_000, "Default hourly spending cap per player, sandbox tenants."
    )
    caps_sandbox_daily_usd_cents: int = _field(
        "INVO_CAPS_SANDBOX_DAILY_USD_CENTS", 200_000, "Default daily spending cap per player, sandbox tenants."
    )
    caps_sandbox_monthly_usd_cents: int = _field(
        "INVO_CAPS_SANDBOX_MONTHLY_USD_CENTS", 1_000_000, "Default 30-day spending cap per player, sandbox tenants."
    )
    caps_production_hourly_usd_cents: int = _field(
        "INVO_CAPS_PRODUCTION_HOURLY_USD_CENTS", 20_000, "Default hourly spending cap per player, production."
    )
    caps_production_daily_usd_cents: int = _field(
        "INVO_CAPS_PRODUCTION_DAILY_USD_CENTS", 50_000, "Default daily spending cap per player, production."
    )
    caps_production_monthly_usd_cents: int = _field(
        "INVO_CAPS_PRODUCTION_MONTHLY_USD_CENTS", 200_000, "Default 30-day spending cap per player, production."
    )
    purchase_attempts_per_minute_max: int = _field(
        "INVO_PURCHASE_ATTEMPTS_PER_MINUTE_MAX", 10, "Currency purchase attempts per player per minute."
    )
    declines_max: int = _field(
        "INVO_DECLINES_MAX", 5, "Card declines per player within the cool-down window before purchases pause."
    )
    decline_cooldown_s: int = _field("INVO_DECLINE_COOLDOWN_S", 900, "That window, and the pause, in seconds.")
    requires_action_timeout_s: float = _field(
        "INVO_REQUIRES_ACTION_TIMEOUT_S",
        3600.0,
        "How long a 3-D Secure challenge may stay pending; then the order is cancelled and its cap released.",
    )
    breaker_failures_max: int = _field(
        "INVO_BREAKER_FAILURES_MAX", 5, "Consecutive processor failures that open the circuit breaker."
    )
    breaker_cooldown_s: float = _field(
        "INVO_BREAKER_COOLDOWN_S", 30.0, "How long the open breaker refuses before one probe call."
    )
    webhook_retry_schedule_s: str = _field(
        "INVO_WEBHOOK_RETRY_SCHEDULE_S",
        "30,120,600,3600,21600,86400",
        "Waits before each retry of a failed webhook delivery; after the last one it is `failed`.",
    )
    webhook_timeout_s: float = _field("INVO_WEBHOOK_TIMEOUT_S", 10.0, "Timeout of one webhook delivery attempt.")
    webhook_concurrency_max: int = _field(
        "INVO_WEBHOOK_CONCURRENCY_MAX", 64, "Webhook deliveries in flight at once, in all."
    )
    webhook_per_endpoint_max: int = _field(
        "INVO_WEBHOOK_PER_ENDPOINT_MAX", 8, "Webhook deliveries in flight at once to one endpoint."
    )
    webhook_consumer: str = _field("INVO_WEBHOOK_CONSUMER", "webhooks", "Durable JetStream consumer of the webhooks.")
    identity_key: str = _field(
        "INVO_IDENTITY_KEY", "", "Secret keying identity_id, the pseudonymous id of a person across tenants."
    )
    transfer_code_key: str = _field(
        "INVO_TRANSFER_CODE_KEY",
        "",
        "Secret (32 bytes or more) keying the HMACs under which transfer PINs and claim codes are stored.",
    )
    transfer_sms_countries: str = _field(
        "INVO_TRANSFER_SMS_COUNTRIES",
        "US,CA,GB,IE,AU,NZ,DE,FR,ES,IT,NL,SE,JP,SG,BR,MX",
        "ISO country codes whose phone numbers transfers may text (PINs, claim codes); others are refused.",
    )
    transfer_pin_ttl_s: int = _field("INVO_TRANSFER_PIN_TTL_S", 600, "Life of a transfer PIN.")
    transfer_pin_attempts_max: int = _field(
        "INVO_TRANSFER_PIN_ATTEMPTS_MAX", 5, "Wrong PINs a transfer takes; then it is cancelled and the hold returned."
    )
    transfer_pin_sends_max: int = _field(
        "INVO_TRANSFER_PIN_SENDS_MAX", 3, "PIN texts per transfer, the first included."
    )
    transfer_pin_resend_cooldown_s: int = _field(
        "INVO_TRANSFER_PIN_RESEND_COOLDOWN_S", 30, "Least wait between two PIN texts of one transfer."
    )
    transfer_verify_window_s: int = _field(
        "INVO_TRANSFER_VERIFY_WINDOW_S",
        1800,
        "How long a transfer may wait for its PIN; then it expires and the hold goes back to the sender.",
    )
    transfer_claim_ttl_s: int = _field(
        "INVO_TRANSFER_CLAIM_TTL_S", 86400, "Life of a self-transfer's claim code (then the funds go back)."
    )
    send_claim_ttl_s: int = _field(
        "INVO_SEND_CLAIM_TTL_S", 14 * 86400, "Life of a send's claim code (then the funds go back)."
    )
    sms_per_phone_per_hour: int = _field(
        "INVO_SMS_PER_PHONE_PER_HOUR", 10, "Texts (PINs and claim codes) one phone number gets per hour at most."
    )
    sms_per_tenant_per_hour: int = _field(
        "INVO_SMS_PER_TENANT_PER_HOUR", 1000, "Texts one tenant's transfers send per hour at most."
    )
    claim_failures_per_tenant_per_minute: int = _field(
        "INVO_CLAIM_FAILURES_PER_TENANT_PER_MINUTE",
        20,
        "Claims with an unknown claim code one tenant may make per minute; past it claims answer 429.",
    )
    transfer_sweep_interval_s: float = _field(
        "INVO_TRANSFER_SWEEP_INTERVAL_S",
        2.0,
        "How often the transfers service expires what is due, finishes interrupted work and retries texts.",
    )
    sms_provider: str = _field(
        "INVO_SMS_PROVIDER",
        "outbox",
        "`outbox` (development: texts are kept for GET /admin/dev/sms) or `twilio` (an HTTP SMS API).",
    )
    sms_api_base: str = _field("INVO_SMS_API_BASE", "https://api.twilio.com", "Base URL of the HTTP SMS API.")
    sms_account_sid: str = _field("INVO_SMS_ACCOUNT_SID", "", "The SMS API's account id (Twilio: AC...).")
    sms_auth_token: str = _field("INVO_SMS_AUTH_TOKEN", "", "The SMS API's secret.")
    sms_from: str = _field(
        "INVO_SMS_FROM", "", "Sender of texts: a phone number in E.164, or a messaging service id (MG...)."
    )
    sms_timeout_s: float = _field("INVO_SMS_TIMEOUT_S", 5.0, "Timeout of one call to the SMS API.")

    replicas: int = _field(
        "INVO_REPLICAS",
        1,
        "Processes of each gRPC service and of the gateway that `make run` and the test stack start (1 to 8);"
        " each service's address is then the list of its replicas, called round-robin.",
    )
    ach_api_base: str = _field(
        "INVO_ACH_API_BASE",
        "",
        "Modern Treasury's API base; empty: Modern Treasury's own. `make run` sets the ACH simulator's.",
    )
    ach_organization_id: str = _field(
        "INVO_ACH_ORGANIZATION_ID", "", "Modern Treasury organization id (the user of its HTTP basic auth)."
    )
    ach_api_key: str = _field("INVO_ACH_API_KEY", "", "Modern Treasury API key (the password of its basic auth).")
    ach_webhook_keys: str = _field(
        "INVO_ACH_WEBHOOK_KEYS",
        "",
        "Keys that sign Modern Treasury's webhooks (X-Signature), comma-separated: any one verifies (rotation).",
    )
    ach_originating_account_id: str = _field(
        "INVO_ACH_ORIGINATING_ACCOUNT_ID", "", "The Modern Treasury internal account payouts are sent from."
    )
    ach_timeout_s: float = _field("INVO_ACH_TIMEOUT_S", 10.0, "Timeout of each call to the ACH provider.")
    ach_sim_listen: str = _field(
        "INVO_ACH_SIM_LISTEN", "127.0.0.1:12112", "host:port of the ACH (Modern Treasury) simulator (development)."
    )
    ach_sim_state: str = _field(
        "INVO_ACH_SIM_STATE",
        "",
        "The ACH simulator's journal (development); empty: $INVO_HOME/ach_sim/state.jsonl, or memory only without"
        " INVO_HOME.",
    )
    ach_sim_webhook_url: str = _field(
        "INVO_ACH_SIM_WEBHOOK_URL", "", "Where the ACH simulator posts its webhooks (the gateway's /webhooks/ach)."
    )
    ach_sim_settle_delay_s: float = _field(
        "INVO_ACH_SIM_SETTLE_DELAY_S",
        2.0,
        "How long the ACH simulator takes between a payment order's states (processing, sent, completed).",
    )
    payout_min_usd_cents: int = _field("INVO_PAYOUT_MIN_USD_CENTS", 100, "Smallest payout a partner may request.")
    payout_dual_approval_usd_cents: int = _field(
        "INVO_PAYOUT_DUAL_APPROVAL_USD_CENTS",
        1_000_000,
        "Payouts above this many USD cents need two different approvers (below it, one).",
    )
    payout_sweep_interval_s: float = _field(
        "INVO_PAYOUT_SWEEP_INTERVAL_S",
        2.0,
        "How often the payouts service dispatches approved payouts, applies provider events and polls the provider.",
    )
    subscription_renewal_interval_s: float = _field(
        "INVO_SUBSCRIPTION_RENEWAL_INTERVAL_S",
        5.0,
        "How often the subscriptions service looks for subscriptions due (renewals, retries, ends).",
    )
    subscription_retry_schedule_s: str = _field(
        "INVO_SUBSCRIPTION_RETRY_SCHEDULE_S",
        "3600,86400,259200",
        "Seconds after a renewal's due time at which a past_due subscription is tried again (comma-separated,"
        " at most 10); after the last one fails it is cancelled.",
    )
    subscriptions_test_clock: str = _field(
        "INVO_SUBSCRIPTIONS_TEST_CLOCK",
        "off",
        "`on`: the subscriptions service's time is the one its SetTestClock RPC sets (tests and development"
        " only; refused in production).",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            kind: Any = type(f.default)
            try:
                values[f.name] = kind(raw) if kind is not str else raw
            except ValueError as exc:
                raise ConfigError(f"{f.metadata['env']}={raw!r} is not a valid {kind.__name__}") from exc
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.environment not in ("development", "production"):
            raise ConfigError("INVO_ENVIRONMENT must be development or production")
        if self.sms_provider not in ("outbox", "twilio"):
            raise ConfigError("INVO_SMS_PROVIDER must be outbox or twilio")
        if self.environment == "production" and self.sms_provider == "outbox":
            raise ConfigError("INVO_SMS_PROVIDER=outbox is for development: production texts through an SMS API")
        if not 60 <= self.console_session_s <= 7 * 86400:
            raise ConfigError("INVO_CONSOLE_SESSION_S must be from 60 (a minute) to 604800 (a week)")
        if self.subscriptions_test_clock not in ("off", "on"):
            raise ConfigError("INVO_SUBSCRIPTIONS_TEST_CLOCK must be off or on")
        if self.environment == "production" and self.subscriptions_test_clock == "on":
            raise ConfigError("INVO_SUBSCRIPTIONS_TEST_CLOCK=on is for tests and development, never production")
        self.subscription_retry_schedule()  # refuses a malformed one
        if self.metrics_refresh_s < 1:
            raise ConfigError("INVO_METRICS_REFRESH_S must be at least 1")
        if self.metrics_listen and not self.metrics_listen.rpartition(":")[2].isdigit():
            raise ConfigError("INVO_METRICS_LISTEN must be host:port")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"{f.metadata['env']} must not be negative")

    def subscription_retry_schedule(self) -> tuple[float, ...]:
        """The past_due retries, seconds after the due time, increasing."""
        try:
            steps = tuple(float(x) for x in self.subscription_retry_schedule_s.split(","))
        except ValueError:
            steps = ()
        if not 1 <= len(steps) <= 10 or any(b <= a for a, b in zip((0.0, *steps), steps, strict=False)):
            raise ConfigError("INVO_SUBSCRIPTION_RETRY_SCHEDULE_S must be 1 to 10 increasing positive seconds")
        return steps

    def addr(self, service: str) -> str:
        return str(getattr(self, f"{service}_addr"))

    def listen_addr(self, service: str) -> str:
        return self.grpc_listen or self.addr(service)

    def schema(self, service: str) -> str:
        return f"{self.db_schema_prefix}{service}"

    def require(self, *names: str) -> None:
        """Raise unless each named setting is non-empty (used at service start-up)."""
        by_name = {f.name: f for f in dataclasses.fields(self)}
        for name in names:
            if not getattr(self, name):
                raise ConfigError(f"{by_name[name].metadata['env']} is required")


def documented_variables() -> dict[str, str]:
    return {f.metadata["env"]: f.metadata["doc"] for f in dataclasses.fields(Settings)}
