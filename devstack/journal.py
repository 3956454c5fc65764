"""A simulator's memory across restarts, as a real provider's would be: an append-only journal.

Both development simulators (the card processor's, `devstack/processor_sim`, and the ACH
provider's, `devstack/ach_sim`) keep every object they create or change in one: each change is one
JSON line, `{"k": kind, "id": id, "o": object}` (or `"o": null` when it is gone), written before the
API call that made it answers. A simulator killed at any moment comes back with every object it
ever acknowledged, and the webhooks it still owed. Without this a restarted simulator would forget
an object our service had stored, and an idempotency key it had answered, and the next call would
pay twice.

Lines are written through to the operating system at once (a killed process loses nothing; a
machine that loses power may lose the last lines: acceptable for a development tool). At start
the journal is read, the newest line per object wins, expired idempotency records are dropped
(kind "idempotency": records are lists whose first item is the Unix time they expire at), and the
file is rewritten compactly (atomically, through a temporary file). It is the user's alone (0600,
in a 0700 directory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import time
from typing import Any, TextIO

log = logging.getLogger("invo.sim.journal")

LINE_BYTES_MAX = 1 << 20  # one object; a longer line is a corrupt journal, not state
# The journal is rewritten compactly once it holds this many times more lines than live objects
# (and at least COMPACT_LINES_MIN): a long run's file stays bounded by what it remembers.
COMPACT_RATIO = 4
COMPACT_LINES_MIN = 10_000

State = dict[str, dict[str, Any]]


class Journal:
    """The journal at `path` of objects of `kinds`; None keeps everything in memory only (nothing
    survives a restart)."""

    def __init__(self, path: pathlib.Path | None, kinds: tuple[str, ...]) -> None:
        self.path = path
        self.kinds = kinds
        self._file: TextIO | None = None
        self._state: State = {kind: {} for kind in kinds}
        self._lines = 0  # written since the last compaction

    def compact_bounds(self) -> tuple[int, int]:
        """(ratio, minimum lines) of the compaction rule above; read at each write."""
        return COMPACT_RATIO, COMPACT_LINES_MIN

    def load(self) -> State:
        """Every object on record, by kind and id, in the order they were first written; then
        the journal is compacted and opened for appending."""
        state: State = {kind: {} for kind in self.kinds}
        self._state = state
        if self.path is None:
            return state
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    self._replay(state, line, number)
        now = time.time()
        expiring = state.get("idempotency", {})
        for key in [k for k, v in expiring.items() if v[0] <= now]:
            del expiring[key]  # in place: the caller keeps this very dict
        self._reopen()
        return state

    def _reopen(self) -> None:
        """Compact the journal from the live state, then append to the new file."""
        self.close()
        self._compact(self._state)
        self._lines = sum(len(objects) for objects in self._state.values())
        if self.path is None:
            raise RuntimeError("an in-memory journal has no file")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def _replay(self, state: State, line: str, number: int) -> None:
        if len(line) > LINE_BYTES_MAX or not line.endswith("\n"):
            # The last line of a journal whose writer was killed mid-write: nothing was answered
            # for it, so nothing depends on it.
            log.warning("journal %s: ignoring an unfinished line %d", self.path, number)
            return
        try:
            entry = json.loads(line)
            kind, obj_id, obj = entry["k"], entry["id"], entry["o"]
        except (ValueError, KeyError, TypeError):
            log.warning("journal %s: ignoring a malformed line %d", self.path, number)
            return
        if kind not in state or not isinstance(obj_id, str):
            return
        if obj is None:
            state[kind].pop(obj_id, None)
        else:
            state[kind][obj_id] = obj

    def _compact(self, state: State) -> None:
        if self.path is None:
            raise RuntimeError("an in-memory journal has no file")
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for kind in self.kinds:
                for obj_id, obj in state[kind].items():
                    f.write(_line(kind, obj_id, obj))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def put(self, kind: str, obj_id: str, obj: Any) -> None:
        """Record the object as it is now (None: it is gone). The state `load` returned is the
        live one: it is kept in step here too (for what the simulator keeps elsewhere)."""
        if kind not in self.kinds:
            raise ValueError(f"unknown kind {kind!r}")
        if obj is None:
            self._state[kind].pop(obj_id, None)
        else:
            self._state[kind][obj_id] = obj
        if self._file is None:
            return
        self._file.write(_line(kind, obj_id, obj))
        self._file.flush()
        self._lines += 1
        live = sum(len(objects) for objects in self._state.values())
        ratio, lines_min = self.compact_bounds()
        if self._lines > max(lines_min, ratio * live):
            self._reopen()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def _line(kind: str, obj_id: str, obj: Any) -> str:
    return json.dumps({"k": kind, "id": obj_id, "o": obj}, separators=(",", ":")) + "\n"
