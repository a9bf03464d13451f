"""SandboxResult and the decoding of how a sandbox ended. Pure functions only."""

from __future__ import annotations

import os
import re
import signal as signals
from dataclasses import dataclass, field

from .config import SandboxConfig

EXIT_LINE = re.compile(r"Exiting with status: (\d+)")
FATAL_LINE = re.compile(r"FATAL ERROR: (.*)")


@dataclass(frozen=True)
class NetworkInfo:
    """The network a sandbox had. mode "none": loopback only; "sandbox": gVisor's
    netstack; "host": gVisor's hostinet, in its own namespace unless namespace is None."""

    mode: str
    address: str | None = None
    prefix: int | None = None
    peer: str | None = None
    namespace: str | None = None
    nameservers: tuple[str, ...] = ()
    nat: bool = False
    veth: tuple[str, str] | None = None   # (host side, sandbox side)


@dataclass(frozen=True)
class StreamOutput:
    """One captured stream: its whole text is in the file at `path` (removed when the
    result is garbage-collected), kept in memory too while it is small."""

    path: str | None
    sha256: str
    bytes: int
    cached: str | None = field(default=None, repr=False)

    def text(self) -> str:
        if self.cached is not None:
            return self.cached
        from .streams import read_text
        return read_text(self.path)


@dataclass(frozen=True)
class SandboxResult:
    """How one sandboxed script ended, with its output.

    Exactly one of `exit_code` and `signal` is set: a script that ran `exit 137`
    has exit_code 137 and signal None; one killed by SIGKILL has exit_code None
    and signal 9. `returncode` follows subprocess: -N for signal N.
    """

    exit_code: int | None
    signal: int | None
    stdout_output: StreamOutput = field(repr=False)
    stderr_output: StreamOutput = field(repr=False)
    timed_out: bool
    duration: float
    spec: dict = field(repr=False)
    config: SandboxConfig = field(repr=False)
    container_id: str = ""
    runsc_version: str = ""
    network: NetworkInfo | None = None
    stopped: bool = False          # ended by a stop request (the panel's Stop button)
    started: str = ""              # UTC, ISO 8601
    platform: str = ""             # runsc's platform (systrap, ptrace)
    session: str | None = None     # the session it ran in, if any
    warm: bool = False             # served by a standby sandbox booted ahead of time
    limit_hit: str | None = None   # "memory" when the memory limit ended it

    @property
    def stdout(self) -> str:
        """The whole standard output (read from its file when it was large)."""
        return self.stdout_output.text()

    @property
    def stderr(self) -> str:
        return self.stderr_output.text()

    @property
    def stdout_path(self) -> str | None:
        return self.stdout_output.path

    @property
    def stderr_path(self) -> str | None:
        return self.stderr_output.path

    @property
    def returncode(self) -> int:
        return -self.signal if self.signal is not None else self.exit_code

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.stopped

    @property
    def signal_name(self) -> str | None:
        return signal_name(self.signal) if self.signal is not None else None

    def status_text(self) -> str:
        """One line: 'exited with status 3', 'killed by signal 9 (SIGKILL)', ..."""
        if self.timed_out:
            limit = f"{self.config.timeout:g} s" if self.config.timeout else "its limit"
            how = f", killed by {self.signal_name}" if self.signal is not None else ""
            return f"timed out after {limit}{how}"
        if self.stopped:
            how = (f"killed by signal {self.signal} ({self.signal_name})"
                   if self.signal is not None else f"exit status {self.exit_code}")
            return f"stopped ({how})"
        if self.limit_hit == "memory":
            return (f"killed by signal {self.signal} ({self.signal_name}): the memory limit "
                    f"({self.config.memory / (1 << 20):g} MiB) was reached")
        if self.signal is not None:
            return f"killed by signal {self.signal} ({self.signal_name})"
        return f"exited with status {self.exit_code}"

    def check(self) -> "SandboxResult":
        """Raise SandboxExitError unless the script exited 0; return self otherwise."""
        if not self.ok:
            from .errors import SandboxExitError
            raise SandboxExitError(self)
        return self


def decode_wait_status(status: int) -> tuple[int | None, int | None]:
    """A raw wait(2) status -> (exit_code, signal), exactly one of them set."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    raise ValueError(f"wait status {status} is neither an exit nor a signal")


@dataclass(frozen=True)
class RunscOutcome:
    """What runsc's run log says: the raw wait status, or runsc's own failure."""

    wait_status: int | None
    error: str | None


def parse_runsc_log(text: str) -> RunscOutcome:
    """Read `runsc run`'s debug log (only that command's, see runsc.global_args)."""
    fatal = FATAL_LINE.findall(text)
    if fatal:
        return RunscOutcome(None, fatal[-1].strip())
    statuses = EXIT_LINE.findall(text)
    if statuses:
        return RunscOutcome(int(statuses[-1]), None)
    return RunscOutcome(None, None)


def signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"
