"""Threads that finish our work after a cell returns (network teardowns, standby
boots), and waiting for them: the test suite, `discard()` and exit must know
when they are done, and a Ctrl-C must still be seen while the main thread waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

JOIN_SLICE = 0.05   # the main thread sees a SIGINT between slices


class ThreadSet:
    """Background threads still running; each leaves the set when its work is done."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: set[threading.Thread] = set()

    def start(self, work: Callable[[], None], name: str, daemon: bool) -> None:
        def tracked():
            try:
                work()
            finally:   # only now: a join() waits for all of `work`
                with self.lock:
                    self.threads.discard(threading.current_thread())

        thread = threading.Thread(target=tracked, name=name, daemon=daemon)
        with self.lock:
            self.threads.add(thread)
        thread.start()

    def __len__(self) -> int:
        with self.lock:
            return len(self.threads)

    def join(self, seconds: float) -> bool:
        """Wait until every thread, those started meanwhile too, is done; True if so."""
        end = time.monotonic() + seconds
        while True:
            with self.lock:
                threads = list(self.threads)
            if not threads:
                return True
            for thread in threads:
                while thread.is_alive() and time.monotonic() < end:
                    thread.join(JOIN_SLICE)
            if time.monotonic() >= end:
                return not len(self)
