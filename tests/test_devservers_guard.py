"""`devservers.with_parent`: a child started through the guard becomes the real program under the
same pid, and gets its signal when the process that started it is SIGKILLed (a crashed test run
leaves no server behind). No `preexec_fn` runs in the fork of the many-threaded starter."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

from devstack.stack import ROOT
from tests.shutdown_support import wait_until

# The child records the signal it got, then ends; it would otherwise sleep for a minute.
CHILD = textwrap.dedent(
    r"""
    import os, pathlib, signal, sys, time
    def on(sig, _frame):
        pathlib.Path(sys.argv[1]).write_text(signal.Signals(sig).name)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on)
    signal.signal(signal.SIGINT, on)
    os.write(1, b"ready\n")
    time.sleep(60)
    """
)

# The starter: many threads busy allocating (as the test session's are), the child started from a
# thread of its own, its pid printed; then it waits to be killed.
STARTER = textwrap.dedent(
    r"""
    import os, subprocess, sys, threading, time
    from devstack import devservers
    def churn():
        while True:
            [bytearray(1024) for _ in range(100)]
    for _ in range(4):
        threading.Thread(target=churn, daemon=True).start()
    def start():
        argv = devservers.with_parent([sys.executable, "-c", sys.argv[1], sys.argv[2]], signal.SIGINT)
        child = subprocess.Popen(argv, stdout=sys.stdout, start_new_session=True)
        os.write(1, f"{child.pid}\n".encode())  # one write: the child writes to this pipe too
        time.sleep(60)
    import signal
    threading.Thread(target=start).start()
    time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def test_a_guarded_child_is_the_program_and_ends_with_its_starter(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "signal"
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, CHILD, str(marker)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = 0
    try:
        assert starter.stdout is not None
        lines = {starter.stdout.readline().strip(), starter.stdout.readline().strip()}  # either order
        assert "ready" in lines, lines
        child = int(*(lines - {"ready"}))
        # The guard exec'd the program: same pid, the program's own command line.
        cmdline = pathlib.Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:2] == [sys.executable.encode(), b"-c"], cmdline
        assert cmdline[2].decode() == CHILD, cmdline
        assert not marker.exists()

        starter.kill()
        starter.wait(10)
        assert wait_until(lambda: marker.exists() and not _alive(child), timeout_s=15), "no signal within 15 s"
        assert marker.read_text() == "SIGINT"  # the signal asked for, not the default SIGTERM
    finally:
        starter.kill()
        starter.wait(10)
        if starter.stdout is not None:
            starter.stdout.close()
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)
