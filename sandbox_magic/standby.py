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

from .background import ThreadSet

TAKE_WAIT = 5.0      # seconds a cell waits for a standby still booting
DISCARD_WAIT = 30.0  # seconds discard() waits for boots in flight to end their sandbox


class StandbyPool:
    """At most one ready standby. Cells may run in several threads at once (the
    panel, `run()` from user threads), so boots can overlap: each boot carries the
    pool's generation when it was asked for, and a boot that finishes after a newer
    `prepare` or a `discard` tears its own sandbox down instead of installing it.
    Nothing booted is ever left without an owner."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = None               # (key, Booted)
        self.booting = ThreadSet()
        self.generation = 0

    def take(self, key: tuple):
        """The standby for `key`, or None (after discarding one for another key)."""
        self.booting.join(TAKE_WAIT)
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
        """Boot a standby for `key` in the background; it replaces any other."""
        with self.lock:   # one step, so that a discard() either outdates it or waits for it
            self.generation += 1
            generation = self.generation
            self.booting.start(lambda: self.install(generation, key, boot),
                               name="sandbox-magic-standby", daemon=True)

    def install(self, generation: int, key: tuple, boot: Callable[[], object]) -> None:
        try:
            sandbox = boot()
        except Exception:
            return   # no standby: the next cell boots as usual
        with self.lock:
            current = generation == self.generation
            old = None
            if current:
                old, self.ready = self.ready, (key, sandbox)
        if not current:
            sandbox.discard()   # outdated by a later cell's prepare() or a discard()
        elif old is not None:
            old[1].discard()

    def discard(self) -> None:
        """Tear down the standby and any being booted; returns when they are gone."""
        with self.lock:
            self.generation += 1
            ready, self.ready = self.ready, None
        if ready is not None:
            ready[1].discard()
        self.booting.join(DISCARD_WAIT)
        return None

    def count(self) -> int:
        return int(self.ready is not None)

    def boots_in_flight(self) -> int:
        return len(self.booting)


STANDBYS = StandbyPool()


@atexit.register
def _discard_at_exit() -> None:
    from .session import close_all
    close_all()
    STANDBYS.discard()
    from .runner import wait_for_teardowns
    wait_for_teardowns()
