"""run(): the one place where a sandbox is created, streamed, waited for and torn down.

config (validated) -> spec (pure) -> side effects under one ExitStack -> result.
Every resource is registered for teardown before it is created, and teardown
runs whatever happens: success, failure, timeout, interrupt, runsc failing.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from . import ledger
from .config import SandboxConfig, make_config, sandbox_environment
from .errors import SandboxError
from .result import SandboxResult, decode_wait_status, parse_runsc_log
from .runsc import Container, Runsc, locate
from .spec import build_spec, script_file_text

OutputCallback = Callable[[str], None]

POLL_SECONDS = 0.1       # the longest the main thread blocks: SIGINT is seen within it
READ_SIZE = 1 << 16
INTERRUPT_GRACE = 0.5    # SIGINT to the script, then SIGKILL after this long
DRAIN_SECONDS = 2.0      # how long to collect output still in flight after a stop
ORPHAN_GRACE = 2.0       # runsc exited but something still holds the pipes open: give up


def run(script: str, *, root: str = "/", cwd: str | None = None,
        env: Mapping[str, str] | Iterable[str] | None = None, env_all: bool = False,
        hostname: str | None = None, timeout: float | None = None, runsc: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None) -> SandboxResult:
    """Run `script` in a fresh gVisor sandbox and return how it ended.

    Returns the result whatever the exit status (see SandboxResult.check()).
    Raises SandboxConfigError (a ValueError naming the option) for bad
    arguments, SandboxError when the sandbox itself cannot run, and
    KeyboardInterrupt, after removing the sandbox, when interrupted.
    `on_stdout`/`on_stderr` receive decoded text as it arrives.
    """
    config = make_config(script, root=root, cwd=cwd, env=env, env_all=env_all,
                         hostname=hostname, timeout=timeout, runsc=runsc)
    return run_config(config, on_stdout=on_stdout, on_stderr=on_stderr)


def run_config(config: SandboxConfig, *, on_stdout: OutputCallback | None = None,
               on_stderr: OutputCallback | None = None) -> SandboxResult:
    binary = locate(config.runsc)
    environment = sandbox_environment(os.environ, config.env, config.env_all)
    rootless = os.geteuid() != 0
    state = ledger.state_root()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        run_dir = stack.enter_context(ledger.new_run(state, binary.path, rootless))
        spec = build_spec(config, environment=environment, script_source=run_dir.file("cell"),
                          capabilities=binary.capabilities)
        write_bundle(run_dir, config.script, spec)
        container = Container(binary, state_dir=ledger.runsc_root(state), bundle=run_dir.path,
                              container_id=run_dir.container_id, rootless=rootless)
        stack.callback(deferring_interrupts(container.remove), state, run_dir.path)
        process = container.start(run_dir.file("runsc.log"))
        stdout = StreamCollector(on_stdout)
        stderr = StreamCollector(on_stderr)
        deadline = started + config.timeout if config.timeout else None
        try:
            timed_out = pump(process, {process.stdout: stdout, process.stderr: stderr},
                             deadline, on_deadline=lambda: container.stop(grace=0))
            wait_in_slices(process)
        except KeyboardInterrupt:
            with interrupts_deferred():
                container.stop(grace=INTERRUPT_GRACE)
                drain(process, {process.stdout: stdout, process.stderr: stderr})
            raise
        exit_code, signal_number = wait_status(binary, run_dir, process, stderr.text())
    return SandboxResult(
        exit_code=exit_code, signal=signal_number, stdout=stdout.text(), stderr=stderr.text(),
        timed_out=timed_out, duration=time.monotonic() - started, spec=spec, config=config,
        container_id=run_dir.container_id, runsc_version=binary.version)


def write_bundle(run_dir: ledger.RunDir, script: str, spec: dict) -> None:
    """config.json and the script file; the script is executable for `#!` lines."""
    fd = os.open(run_dir.file("cell"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(script_file_text(script))
    with open(run_dir.file("config.json"), "w") as fh:
        json.dump(spec, fh)


class StreamCollector:
    """Decodes one output stream incrementally (UTF-8 safe across chunk
    boundaries), keeps the text, and hands each piece to a callback."""

    def __init__(self, callback: OutputCallback | None) -> None:
        self.callback = callback
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.parts: list[str] = []

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self.decoder.decode(data, final)
        if text:
            self.parts.append(text)
            if self.callback is not None:
                self.callback(text)

    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]  # linear: join once, not per chunk
        return self.parts[0] if self.parts else ""


def pump(process: subprocess.Popen, streams: dict, deadline: float | None,
         on_deadline: Callable[[], None]) -> bool:
    """Forward output until both pipes close; call on_deadline once if the deadline passes.

    Blocks at most POLL_SECONDS at a time so that a SIGINT is seen promptly.
    Returns whether the deadline passed.
    """
    timed_out = False
    exited_at = None
    with selectors.DefaultSelector() as selector:
        for pipe in streams:
            selector.register(pipe, selectors.EVENT_READ, streams[pipe])
        while selector.get_map():
            if process.poll() is not None:
                # The pipes normally close before runsc exits; if an orphan of a
                # crashed runsc keeps them open, stop waiting (teardown kills it).
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > ORPHAN_GRACE:
                    break
            wait = POLL_SECONDS
            if deadline is not None and not timed_out:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    on_deadline()
                    continue
                wait = min(wait, remaining)
            for key, _ in selector.select(wait):
                read_into(selector, key)
    return timed_out


def read_into(selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    data = os.read(key.fd, READ_SIZE)
    if data:
        key.data.feed(data)
    else:
        key.data.feed(b"", final=True)
        selector.unregister(key.fileobj)


def drain(process: subprocess.Popen, streams: dict) -> None:
    """After a stop: collect what is left in the pipes, for a bounded time."""
    end = time.monotonic() + DRAIN_SECONDS
    with selectors.DefaultSelector() as selector:
        for pipe in streams:
            if not pipe.closed:
                selector.register(pipe, selectors.EVENT_READ, streams[pipe])
        while selector.get_map() and time.monotonic() < end:
            for key, _ in selector.select(POLL_SECONDS):
                read_into(selector, key)


def wait_in_slices(process: subprocess.Popen) -> int:
    while True:
        try:
            return process.wait(timeout=POLL_SECONDS)
        except subprocess.TimeoutExpired:
            continue


def wait_status(binary: Runsc, run_dir: ledger.RunDir, process: subprocess.Popen,
                stderr_text: str) -> tuple[int | None, int | None]:
    """(exit_code, signal) of the script, or SandboxError if runsc itself failed."""
    try:
        with open(run_dir.file("runsc.log"), errors="replace") as fh:
            outcome = parse_runsc_log(fh.read())
    except FileNotFoundError:
        outcome = parse_runsc_log("")
    if outcome.error:
        raise SandboxError(f"runsc {binary.version} could not run the sandbox: {outcome.error}")
    if outcome.wait_status is None:
        tail = stderr_text.strip().splitlines()[-3:]
        raise SandboxError(f"runsc {binary.version} ended with status {process.returncode} "
                           f"without reporting the script's status (runsc crashed?)"
                           + (": " + " / ".join(tail) if tail else ""))
    return decode_wait_status(outcome.wait_status)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold SIGINT back while a teardown step runs; re-raise it afterwards.

    A second Ctrl-C (or Jupyter's interrupt button pressed twice) must not
    leave half a sandbox behind. Only the main thread receives signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            raise KeyboardInterrupt


def deferring_interrupts(function: Callable) -> Callable:
    def shielded(*args, **kwargs):
        with interrupts_deferred():
            return function(*args, **kwargs)
    return shielded
