"""TransfersService over gRPC: it translates protobuf to the transfer modules and back, and nothing
else.

- policy.py: who may send to whom (both tenants' flags), for the destinations list and every call;
- store.py: the transfer rows, their lifecycle and audit trail, the lease;
- initiation.py, verification.py, claims.py, releases.py: the steps of a transfer, in order;
- sweep.py: the loop that expires what is due and finishes what a crash interrupted;
- rules.py: the settings' numbers, the fee split, shared refusals; messages.py: the answers and events;
- codes.py, phones.py: PINs and claim codes (HMACs), phone numbers (E.164);
- texts.py, sms.py, wording.py: the texts' queue and limits, the SMS providers, what texts say;
- ledger_client.py: the ledger's three transfer writes.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import asyncpg
from invo.v1 import ledger_pb2_grpc, tenants_pb2, tenants_pb2_grpc, transfers_pb2, transfers_pb2_grpc

from services.common import errors, grpcutil, limits, loops
from services.common.config import Settings
from services.common.crypto import Keyring
from services.common.grpcserver import GrpcService
from services.transfers import claims, initiation, messages, verification
from services.transfers.codes import CodeHasher
from services.transfers.deps import Deps
from services.transfers.ledger_client import TransferLedger
from services.transfers.policy import refusal
from services.transfers.rules import Rules
from services.transfers.sms import OutboxSms, SmsProvider, TwilioSms
from services.transfers.store import KINDS, PUBLIC_STATUSES, TransferStore
from services.transfers.sweep import sweep_once
from services.transfers.texts import Texts

log = logging.getLogger("invo.transfers")

DESTINATIONS_LIMIT_MAX = 500
TARGETS_PAGE = 500  # tenants read from the tenants service per call
SCAN_PAGES_MAX = 20  # per answer: a page of destinations never reads more than 10,000 tenants


class TransfersServicer(transfers_pb2_grpc.TransfersServiceServicer):
    def __init__(self, deps: Deps, *, lease_s: float, outbox: OutboxSms | None) -> None:
        self.d = deps
        self.lease_s = lease_s
        self.outbox = outbox  # development only

    def _answer(
        self, row: asyncpg.Record, role: str, *, duplicate: bool = False, claim_code: str = "", history: Any = None
    ) -> transfers_pb2.TransferAnswer:
        rules = self.d.rules
        return transfers_pb2.TransferAnswer(
            transfer=messages.transfer_message(
                row, role, attempts_max=rules.pin_attempts_max, sends_max=rules.pin_sends_max, history=history
            ),
            duplicate=duplicate,
            claim_code=claim_code,
        )

    async def _call(self, method: Any, request: Any, deadline: float | None) -> Any:
        return await grpcutil.call(
            method, request, timeout_s=grpcutil.timeout_within(deadline, cap_s=self.d.timeout_cap_s)
        )

    async def ListDestinations(self, request: transfers_pb2.ListDestinationsRequest, context: Any) -> Any:
        if not 1 <= request.limit <= DESTINATIONS_LIMIT_MAX:
            raise errors.InvalidRequest(f"limit must be from 1 to {DESTINATIONS_LIMIT_MAX}")
        deadline = grpcutil.deadline_of(context)
        source: tenants_pb2.Tenant = await self._call(
            self.d.tenants.GetTenant, tenants_pb2.GetTenantRequest(tenant_id=request.source_tenant_id), deadline
        )
        out = transfers_pb2.ListDestinationsResponse()
        if source.status != "active" or not source.allows_outgoing_transfers:
            return out  # nothing is reachable
        # A source limited to its linked tenants asks for those only.
        linked = sorted(set(source.linked_game_ids)) if not source.universal_transfers else []
        if not source.universal_transfers and not linked:
            return out
        after = request.after_tenant_id
        for _ in range(SCAN_PAGES_MAX):
            page: tenants_pb2.ListTransferTargetsResponse = await self._call(
                self.d.tenants.ListTransferTargets,
                tenants_pb2.ListTransferTargetsRequest(
                    environment=source.environment, after_tenant_id=after, limit=TARGETS_PAGE, tenant_ids=linked
                ),
                deadline,
            )
            for t in page.tenants:
                after = t.tenant_id
                if refusal(source, t) is None:
                    out.destinations.append(
                        transfers_pb2.Destination(tenant_id=t.tenant_id, name=t.name, currency_name=t.currency_name)
                    )
                    if len(out.destinations) == request.limit:
                        out.has_more = True  # perhaps: the next page says
                        out.next_after_tenant_id = after
                        return out
            if not page.has_more:
                return out
        out.has_more = True  # looked at enough for one answer: the next one goes on from here
        out.next_after_tenant_id = after
        return out

    async def Initiate(self, request: transfers_pb2.InitiateRequest, context: Any) -> Any:
        row, duplicate = await initiation.initiate(
            self.d, request, lease_s=self.lease_s, deadline=grpcutil.deadline_of(context)
        )
        return self._answer(row, "source", duplicate=duplicate)

    async def VerifySms(self, request: transfers_pb2.VerifySmsRequest, context: Any) -> Any:
        row, code = await verification.verify(
            self.d,
            request.tenant,
            request.transfer_id,
            request.pin,
            lease_s=self.lease_s,
            deadline=grpcutil.deadline_of(context),
        )
        return self._answer(row, "source", claim_code=code)

    async def ResendSms(self, request: transfers_pb2.TransferRef, context: Any) -> Any:
        row = await verification.resend(
            self.d, request.tenant, request.transfer_id, deadline=grpcutil.deadline_of(context)
        )
        return self._answer(row, "source")

    async def Claim(self, request: transfers_pb2.ClaimRequest, context: Any) -> Any:
        if request.kind not in KINDS:
            raise errors.InvalidRequest(f"kind must be one of {', '.join(KINDS)}")
        row, duplicate = await claims.claim(
            self.d,
            request.tenant,
            request.kind,
            request.claim_code,
            request.recipient_email,
            lease_s=self.lease_s,
            deadline=grpcutil.deadline_of(context),
        )
        return self._answer(row, "destination", duplicate=duplicate)

    async def Cancel(self, request: transfers_pb2.TransferRef, context: Any) -> Any:
        row, duplicate = await claims.cancel(
            self.d, request.tenant, request.transfer_id, lease_s=self.lease_s, deadline=grpcutil.deadline_of(context)
        )
        return self._answer(row, "source", duplicate=duplicate)

    async def GetTransfer(self, request: transfers_pb2.TransferRef, context: Any) -> Any:
        row, role = await self.d.store.visible(request.transfer_id, request.tenant.tenant_id)
        return self._answer(row, role, history=await self.d.store.history(row["transfer_id"]))

    async def ListTransfers(self, request: transfers_pb2.ListTransfersRequest, context: Any) -> Any:
        if request.status and request.status not in PUBLIC_STATUSES:
            raise errors.InvalidRequest(f"status must be one of {', '.join(PUBLIC_STATUSES)}")
        if request.role not in ("", "source", "destination"):
            raise errors.InvalidRequest("role must be source or destination")
        rows, has_more = await self.d.store.list_for(
            request.tenant_id,
            status=request.status,
            role=request.role,
            starting_after=request.starting_after,
            limit=request.limit,
        )
        rules = self.d.rules
        return transfers_pb2.ListTransfersResponse(
            transfers=[
                messages.transfer_message(
                    r,
                    "source" if r["source_tenant_id"] == request.tenant_id else "destination",
                    attempts_max=rules.pin_attempts_max,
                    sends_max=rules.pin_sends_max,
                )
                for r in rows
            ],
            has_more=has_more,
        )

    async def Sweep(self, request: transfers_pb2.SweepRequest, context: Any) -> Any:
        out = await sweep_once(self.d, lease_s=self.lease_s)
        return transfers_pb2.SweepResponse(
            created=out.created, expired=out.expired, finished=out.finished, texts=out.texts
        )

    async def ListDevSms(self, request: transfers_pb2.ListDevSmsRequest, context: Any) -> Any:
        if self.outbox is None:
            raise errors.NotFound("The SMS outbox exists only in development.")
        if not 1 <= request.limit <= limits.DEV_SMS_LIMIT_MAX:
            raise errors.InvalidRequest(f"limit must be from 1 to {limits.DEV_SMS_LIMIT_MAX}")
        rows = await self.outbox.read(phone=request.phone, limit=request.limit)
        return transfers_pb2.ListDevSmsResponse(
            messages=[
                transfers_pb2.DevSms(to=r["to_phone"], body=r["body"], created_at=grpcutil.timestamp(r["created_at"]))
                for r in rows
            ]
        )


def _code_key(settings: Settings) -> bytes:
    settings.require("transfer_code_key")
    raw = settings.transfer_code_key.encode()
    try:  # a base64 key (as `make run` generates) is its bytes; anything else is used as it is
        decoded = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
        return decoded if len(decoded) >= 32 else raw
    except ValueError:
        return raw


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    settings.require("data_keys")
    hasher = CodeHasher(_code_key(settings))
    outbox: OutboxSms | None = None
    provider: SmsProvider
    if settings.sms_provider == "twilio":
        provider = TwilioSms(
            api_base=settings.sms_api_base,
            account_sid=settings.sms_account_sid,
            auth_token=settings.sms_auth_token,
            sender=settings.sms_from,
            timeout_s=settings.sms_timeout_s,
        )
    else:
        outbox = OutboxSms(pool)
        provider = outbox
    svc.on_shutdown(provider.close)
    tenants_channel = grpcutil.channel(settings.tenants_addr)
    svc.on_shutdown(tenants_channel.close)
    ledger_channel = grpcutil.channel(settings.ledger_addr)
    svc.on_shutdown(ledger_channel.close)
    # A worker's lease outlasts its ledger call with a margin: nobody else drives its row meanwhile.
    lease_s = settings.rpc_timeout_s * 2 + 5
    deps = Deps(
        pool=pool,
        store=TransferStore(pool, lease_s=lease_s),
        texts=Texts(
            pool,
            provider,
            Keyring(settings.data_keys),
            per_phone_per_hour=settings.sms_per_phone_per_hour,
            per_tenant_per_hour=settings.sms_per_tenant_per_hour,
        ),
        hasher=hasher,
        ledger=TransferLedger(ledger_pb2_grpc.LedgerServiceStub(ledger_channel), timeout_cap_s=settings.rpc_timeout_s),
        tenants=tenants_pb2_grpc.TenantsServiceStub(tenants_channel),
        rules=Rules.from_settings(settings),
        timeout_cap_s=settings.rpc_timeout_s,
    )

    async def sweep_round() -> float | None:
        out = await sweep_once(deps, lease_s=lease_s)
        return 0.0 if out.busy else None

    svc.background(
        loops.supervised("transfer-sweep", sweep_round, interval_s=settings.transfer_sweep_interval_s, log=log),
        "transfer-sweep",
    )
    svc.add(
        transfers_pb2_grpc.add_TransfersServiceServicer_to_server,
        TransfersServicer(deps, lease_s=lease_s, outbox=outbox),
        transfers_pb2.DESCRIPTOR.services_by_name["TransfersService"].full_name,
    )
