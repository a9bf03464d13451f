"""Warm standby: a sandbox booted ahead of time for the configuration of the last
fresh cell, which the next fresh cell with that configuration runs in instead of
booting (runsc's boot is most of a cell's latency).

A standby serves exactly one cell and is then torn down like any run: a fresh
cell never sees another cell's state. It is booted in a background thread right
after a cell ends, holds its network (if any) while it waits, and is discarded
when a cell with another configuration comes, when standbys are turned off, at
exit, or by `cleanup` if the process died.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable

TAKE_WAIT = 5.0   # seconds a cell waits for a standby still booting for its configuration


class StandbyPool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = None            # (key, Booted)
        self.booting = None          # (key, Thread)

    def take(self, key: tuple):
        """The standby for `key`, or None (after discarding one for another key)."""
        booting = self.booting
        if booting is not None:
            join_in_slices(booting[1], TAKE_WAIT)
        with self.lock:
            ready, self.ready = self.ready, None
        if ready is None:
            return None
        ready_key, sandbox = ready
        if ready_key == key and sandbox.container.running():
            return sandbox
        sandbox.discard()
        return None

    def prepare(self, key: tuple, boot: Callable[[], object]) -> None:
        """Boot a standby for `key` in the background (replacing any other)."""
        def work():
            try:
                sandbox = boot()
            except Exception:
                return   # no standby: the next cell boots as usual
            with self.lock:
                old, self.ready = self.ready, (key, sandbox)
            if old is not None:
                old[1].discard()

        thread = threading.Thread(target=work, name="sandbox-magic-standby", daemon=True)
        with self.lock:
            self.booting = (key, thread)
        thread.start()

    def discard(self) -> None:
        """Tear down the standby, and any being booted; returns None (for `x or boot()`)."""
        booting = self.booting
        if booting is not None:
            join_in_slices(booting[1], TAKE_WAIT)
        with self.lock:
            ready, self.ready, self.booting = self.ready, None, None
        if ready is not None:
            ready[1].discard()
        return None

    def count(self) -> int:
        return int(self.ready is not None)


def join_in_slices(thread: threading.Thread, seconds: float) -> None:
    # Short joins, so that the main thread still sees a SIGINT.
    for _ in range(int(seconds / 0.05)):
        if not thread.is_alive():
            return
        thread.join(0.05)


STANDBYS = StandbyPool()


@atexit.register
def _discard_at_exit() -> None:
    from .session import close_all
    close_all()
    STANDBYS.discard()
    from .runner import wait_for_teardowns
    wait_for_teardowns()
