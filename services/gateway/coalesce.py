"""Request coalescing: concurrent requests of one kind become one gRPC call.

Per-call overhead in grpc.aio dominates a balance read or an item purchase (profiled: the gateway
and the ledger spend most of their CPU in the call machinery, not in our code). Requests that
arrive together are sent as one batch call of up to `batch_max`; while `in_flight_max` batches are
out, new requests queue and go together in the next one. Under light load a request waits one
loop turn; under heavy load batches grow and the cost per request falls. Each request still gets
its own answer or its own error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Coalescer(Generic[Req, Resp]):
    def __init__(
        self,
        send: Callable[[list[Req]], Awaitable[list[Resp | BaseException]]],
        *,
        batch_max: int = 1000,
        in_flight_max: int = 4,
    ) -> None:
        self.send = send
        self.batch_max = batch_max
        self.slots = asyncio.Semaphore(in_flight_max)
        self.pending: list[tuple[Req, asyncio.Future[Resp]]] = []
        self.flush_scheduled = False
        self.tasks: set[asyncio.Task[Any]] = set()

    async def submit(self, item: Req) -> Resp:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Resp] = loop.create_future()
        self.pending.append((item, fut))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self.flush_scheduled = False
        if not self.pending:
            return
        task = asyncio.ensure_future(self._send_batch())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_batch(self) -> None:
        async with self.slots:
            # Take what queued while we waited for a slot: that is the batching.
            batch, self.pending = self.pending[: self.batch_max], self.pending[self.batch_max :]
            if self.pending and not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
            if not batch:
                return
            try:
                results = await self.send([item for item, _ in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
