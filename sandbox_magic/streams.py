"""The script's output: captured whole to files, shown bounded.

A cell may print hundreds of megabytes. The kernel must not hold them: each
stream is decoded incrementally (UTF-8 safe across chunk boundaries), written
whole to a file and hashed as it comes; only a small copy stays in memory. What
the notebook shows is bounded separately, by the presenter (BoundedWriter).
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import os
import shutil
import time
from collections.abc import Callable

from . import ledger

KEEP_IN_MEMORY = 1 << 20     # characters of a stream kept in memory as well as on disk
ENCODING_ERRORS = "surrogateescape"


class StreamCapture:
    """One output stream: to a file, a digest, a byte count and a callback."""

    def __init__(self, path: str, callback: Callable[[str], None] | None) -> None:
        self.path = path
        self.callback = callback
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.file = open(path, "w", encoding="utf-8", errors=ENCODING_ERRORS, newline="")
        self.digest = hashlib.sha256()
        self.bytes = 0
        self.small: list[str] | None = []
        self.small_size = 0

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self.decoder.decode(data, final)
        if not text:
            return
        encoded = text.encode("utf-8", errors=ENCODING_ERRORS)
        self.digest.update(encoded)
        self.bytes += len(encoded)
        self.file.write(text)
        if self.small is not None:
            self.small.append(text)
            self.small_size += len(text)
            if self.small_size > KEEP_IN_MEMORY:
                self.small = None          # from now on the file is the only copy
        if self.callback is not None:
            self.callback(text)

    def close(self) -> None:
        if not self.file.closed:
            self.feed(b"", final=True)
            self.file.close()

    def text_if_small(self) -> str | None:
        return "".join(self.small) if self.small is not None else None

    def text(self) -> str:
        small = self.text_if_small()
        return small if small is not None else read_text(self.path)

    def output(self):
        from .result import StreamOutput
        return StreamOutput(path=self.path, sha256=self.digest.hexdigest(), bytes=self.bytes,
                            cached=self.text_if_small())


def output_dir(state: str, container_id: str) -> str:
    """Where a run's output files live until its result is garbage-collected."""
    path = os.path.join(ledger.outputs_dir(state), container_id)
    os.makedirs(path, mode=0o700, exist_ok=True)
    ledger.write_owner(path)   # cleanup removes the files of a process that died
    return path


def remove_output_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors=ENCODING_ERRORS, newline="") as fh:
        return fh.read()


class BoundedWriter:
    """Shows the first `limit // 2` characters of a stream as they come, then keeps
    only the last `limit // 2` and shows them, with a line saying how much was left
    out, when the stream ends. Flushes often enough to look live, not per byte."""

    FLUSH_INTERVAL = 0.05

    def __init__(self, write: Callable[[str], None], flush: Callable[[], None] | None = None,
                 limit: int = 200_000, where: str = "") -> None:
        self._write = write
        self._flush = flush
        self.head_left = limit // 2
        self.tail_limit = limit - limit // 2
        self.tail: collections.deque[str] = collections.deque()
        self.tail_size = 0
        self.left_out = 0
        self.where = where
        self.last_flush = 0.0

    def write(self, text: str) -> None:
        if self.head_left > 0:
            shown, text = text[:self.head_left], text[self.head_left:]
            self.head_left -= len(shown)
            self._write(shown)
            self._maybe_flush()
        if text:
            self.tail.append(text)
            self.tail_size += len(text)
            while self.tail_size - len(self.tail[0]) >= self.tail_limit:
                dropped = self.tail.popleft()
                self.tail_size -= len(dropped)
                self.left_out += len(dropped)

    def _maybe_flush(self) -> None:
        now = time.monotonic()
        if self._flush and now - self.last_flush >= self.FLUSH_INTERVAL:
            self._flush()
            self.last_flush = now

    def close(self) -> None:
        tail = "".join(self.tail)
        if len(tail) > self.tail_limit:
            self.left_out += len(tail) - self.tail_limit
            tail = tail[-self.tail_limit:]
        if self.left_out:
            self._write(f"\n[… {self.left_out:,} characters left out{self.where} …]\n")
        if tail:
            self._write(tail)
        self.tail.clear()
        if self._flush:
            self._flush()
