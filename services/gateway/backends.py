"""gRPC channels and stubs to every backend service, with the configured deadline."""

from __future__ import annotations

from typing import Any

import grpc
from invo.v1 import (
    ledger_pb2_grpc,
    payments_pb2_grpc,
    payouts_pb2_grpc,
    subscriptions_pb2_grpc,
    tenants_pb2_grpc,
    transfers_pb2_grpc,
    webhooks_pb2_grpc,
)

from services.common import grpcutil
from services.common.config import SERVICES, Settings


class Backends:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout_s = settings.rpc_timeout_s
        self.channels: dict[str, grpc.aio.Channel] = {name: grpcutil.channel(settings.addr(name)) for name in SERVICES}
        self.tenants = tenants_pb2_grpc.TenantsServiceStub(self.channels["tenants"])
        self.ledger = ledger_pb2_grpc.LedgerServiceStub(self.channels["ledger"])
        self.payments = payments_pb2_grpc.PaymentsServiceStub(self.channels["payments"])
        self.webhooks = webhooks_pb2_grpc.WebhooksServiceStub(self.channels["webhooks"])
        self.transfers = transfers_pb2_grpc.TransfersServiceStub(self.channels["transfers"])
        self.payouts = payouts_pb2_grpc.PayoutsServiceStub(self.channels["payouts"])
        self.subscriptions = subscriptions_pb2_grpc.SubscriptionsServiceStub(self.channels["subscriptions"])

    async def call(self, method: Any, request: Any, *, timeout_s: float | None = None) -> Any:
        return await grpcutil.call(method, request, timeout_s=timeout_s or self.timeout_s)

    async def health(self, names: tuple[str, ...] = SERVICES) -> dict[str, bool]:
        return {
            name: await grpcutil.check_health(self.settings.addr(name), timeout_s=min(2.0, self.timeout_s))
            for name in names
        }

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()
