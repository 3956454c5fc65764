"""The registry of processor-event handlers: one handler per event type, registered by type.

A handler gets the stored event (id and raw payload) and the caller's deadline, and answers what
it did (`Handled`). Where it changes state, it marks the event handled in the same transaction
(`inbox.mark_handled`); the dispatcher marks the rest. The refund and dispute handlers of the next
issue register here, and the events of their types that arrived before them are applied then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Handled:
    note: str  # for the inbox row: "applied", "ignored: ...", "held for review: ..."
    ignored: bool = False  # acknowledged, nothing changed (the processor's answer says so)
    # Not applicable yet: the event waits, unhandled, until what it names happens ("paid:<pi>",
    # "opened:<dispute id>"), then it is applied (inbox.Dispatcher.wake).
    waiting_on: str = ""
    # What applying it made happen: the events waiting on these are applied next.
    unblocks: tuple[str, ...] = ()
    # The handler marked the event handled itself (in the transaction of its change, or as
    # settled already): the dispatcher does not ask the database again.
    marked: bool = False


Handler = Callable[[str, dict[str, Any], float | None], Awaitable[Handled]]


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, event_type: str, handler: Handler) -> None:
        if event_type in self._handlers:
            raise ValueError(f"a handler for {event_type} is registered already")
        self._handlers[event_type] = handler

    def on(self, event_type: str) -> Callable[[Handler], Handler]:
        """Decorator form of `register`."""

        def add(handler: Handler) -> Handler:
            self.register(event_type, handler)
            return handler

        return add

    def get(self, event_type: str) -> Handler | None:
        return self._handlers.get(event_type)

    def types(self) -> frozenset[str]:
        return frozenset(self._handlers)
