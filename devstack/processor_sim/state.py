"""The processor simulator's memory across restarts, as Stripe's would be (services/common/journal.py).

Every object the simulator creates or changes (customers, payment methods and which test card each
entered card behaves as, PaymentIntents, charges, refunds, disputes, early fraud warnings,
idempotency records, and the webhook events not yet delivered) is journaled before the API call
that changed it answers, so that a restarted simulator never forgets a PaymentIntent our payments
service had stored, nor an idempotency key it had answered (a second charge).
"""

from __future__ import annotations

import pathlib

from devstack import journal

KINDS = (
    "customers",
    "payment_methods",
    "behaves_as",
    "intents",
    "charges",
    "refunds",
    "disputes",
    "early_fraud_warnings",
    "idempotency",
    "events",
)
LINE_BYTES_MAX = journal.LINE_BYTES_MAX
# The compaction rule's bounds (services/common/journal.py), here so that a test can lower them.
COMPACT_RATIO = journal.COMPACT_RATIO
COMPACT_LINES_MIN = journal.COMPACT_LINES_MIN

State = journal.State


class Journal(journal.Journal):
    """The processor simulator's journal at `path`; None keeps everything in memory only."""

    def __init__(self, path: pathlib.Path | None) -> None:
        super().__init__(path, KINDS)

    def compact_bounds(self) -> tuple[int, int]:
        return COMPACT_RATIO, COMPACT_LINES_MIN
