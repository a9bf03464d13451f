"""Sessions: one sandbox that stays up, and runs cell after cell with `runsc exec`.

Files written by one cell are there for the next and the network identity stays.
Each cell's `runsc exec` is started ahead, while the kernel is idle, and waits for
its cell (CELL_WAITER): a cell then costs ~13 ms here instead of a boot (~150 ms)
or an exec (~35 ms). A timeout, an interrupt or a stop kills the cell's
processes, not the session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
import subprocess
import threading
import time

from . import ledger
from .config import (SandboxConfig, check_script, check_timeout, make_config,
                     sandbox_environment)
from .errors import SandboxConfigError, SandboxError
from .result import SandboxResult
from .runner import (KEEP_ALIVE, Booted, OutputCallback, boot, check_privileges, network_info,
                     wait_status, watch, write_script)
from .runsc import Runsc, kill_group, locate
from .spec import SCRIPT_DIR, with_args

SESSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SESSIONS: dict[str, "Session"] = {}
SESSIONS_LOCK = threading.Lock()


class Session:
    """A long-lived sandbox. `Session(name, **options)` takes run()'s options;
    `.run(script, timeout=..., on_stdout=..., on_stderr=..., stop=...)` runs a
    cell in it; `.close()` (or leaving a `with` block) ends it."""

    def __init__(self, name: str, **options) -> None:
        if not isinstance(name, str) or not SESSION_NAME.fullmatch(name):
            raise SandboxConfigError("session", f"{name!r} is not a session name",
                                     "use letters, digits, '.', '_' and '-', e.g. lab1")
        options.pop("script", None)
        self.name = name
        self.config = make_config("", **options)
        self.binary: Runsc = locate(self.config.runsc)
        rootless = os.geteuid() != 0
        check_privileges(self.config, rootless)
        with SESSIONS_LOCK:
            if name in SESSIONS:
                raise SandboxConfigError("session", f"a session named {name} is already running",
                                         f"stop it first (%sandbox stop {name}), or pick "
                                         "another name")
            SESSIONS[name] = self   # reserved while booting
        try:
            environment = sandbox_environment(os.environ, self.config.env, self.config.env_all)
            self.booted: Booted = boot(self.config, self.binary, environment,
                                       ledger.state_root(), rootless, init=KEEP_ALIVE)
            self.wait_until_up()
        except BaseException:
            with SESSIONS_LOCK:
                SESSIONS.pop(name, None)
            if hasattr(self, "booted"):
                self.booted.discard()
            raise
        self.rootless = rootless
        self.cells = 0
        self.lock = threading.Lock()
        self.closed = False
        # The next cell's `runsc exec`, started ahead while the kernel is idle (see
        # CellProcess): a cell then costs a line written to a pipe, not an exec.
        self.waiting: CellProcess | None = None
        self.waiting_lock = threading.Lock()
        self.start_waiter(1)

    def wait_until_up(self, seconds: float = 60.0) -> None:
        """Wait for the init's "ready" line: `runsc exec` needs a running container."""
        import selectors
        process = self.booted.container.process
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if selector.select(0.1):
                    if os.read(process.stdout.fileno(), 64).startswith(b"ready"):
                        return
                    break   # end of file: runsc failed
        error = wait_status_error(self.binary, self.booted.log_file, process)
        raise SandboxError(f"session {self.name} did not start: {error}")

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.cells} cells run"
        return f"<Session {self.name} {self.booted.container_id}: {state}>"

    @property
    def container_id(self) -> str:
        return self.booted.container_id

    def run(self, script: str, *, timeout: float | None = None,
            on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None,
            stop: threading.Event | None = None) -> SandboxResult:
        """Run `script` in the session; returns its SandboxResult like run()."""
        # The session's options were checked when it started: only these are new.
        config = dataclasses.replace(self.config, script=check_script(script),
                                     timeout=check_timeout(timeout))
        with self.lock:
            if self.closed or not self.booted.container.running():
                raise SandboxError(f"session {self.name} is not running any more; start it "
                                   f"again with %sandbox start {self.name}")
            self.cells += 1
            with self.waiting_lock:
                cell, self.waiting = self.waiting, None
            if cell is not None and not cell.running():
                cell.discard()   # its exec failed or was killed while it waited: start anew
                cell = None
            try:
                return self.run_cell(config, cell or CellProcess(self, self.cells), on_stdout,
                                     on_stderr, stop)
            finally:
                self.start_waiter(self.cells + 1)

    def start_waiter(self, number: int) -> None:
        with self.waiting_lock:   # close() must see it, or it must see close()
            if not self.closed and self.booted.container.running():
                self.waiting = CellProcess(self, number)

    def run_cell(self, config: SandboxConfig, cell: "CellProcess", on_stdout, on_stderr,
                 stop) -> SandboxResult:
        started = time.monotonic()
        started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="milliseconds")
        write_script(self.booted.cell_file(cell.name), config.script)
        try:
            cell.hand_over(config.script)
            ended = watch(cell, self.binary, cell.log_file, ledger.state_root(),
                          f"{self.container_id}-{cell.name}", config, started, stop,
                          on_stdout, on_stderr)
        finally:
            cell.close()
        return ended.result(config=config, started=started, started_at=started_at,
                            binary=self.binary,
                            spec=with_args(self.booted.spec, cell.args),
                            container_id=self.container_id,
                            network=network_info(self.booted.plan), session=self.name)

    def close(self) -> None:
        """End the session and remove everything it created. Idempotent."""
        with SESSIONS_LOCK:
            if SESSIONS.get(self.name) is self:
                del SESSIONS[self.name]
        if getattr(self, "closed", True):
            return
        with self.waiting_lock:
            self.closed = True
            waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.discard()
        process = self.booted.container.process
        try:
            process.stdin.close()      # the init reads its stdin until it closes
            process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.booted.discard()


# A session cell's process is a shell that waits for one word on stdin, then runs
# the cell's script file ($0): a `#!` script by exec, as the kernel would; a shell
# script by reading it itself (`.`), so that a cell costs no program load at all
# (loading /bin/sh again costs ~20 ms under gVisor). Its `runsc exec` can so start
# while the kernel is idle, before the cell is known. The script sees what it would
# under `/bin/sh SCRIPT`: $0, no arguments, stdin a pipe at end of file, the
# session's cwd and environment; only dash's error lines name the file twice.
CELL_WAITER = ["/bin/sh", "-c",   # a variable name no environment has, unset before the script
               'read _sbx_how || exit; if [ "$_sbx_how" = exec ]; then exec "$0"; fi; '
               'unset _sbx_how; . "$0"']


class CellProcess:
    """The `runsc exec` of session cell number `number`, shaped like
    runsc.Container for follow(); started at once with CELL_WAITER."""

    def __init__(self, session: Session, number: int) -> None:
        self.session = session
        self.name = f"cell-{number}"
        self.args = CELL_WAITER + [f"{SCRIPT_DIR}/{self.name}"]
        self.log_file = session.booted.run_dir.file(f"{self.name}.log")
        binary, state_dir = session.binary, session.booted.container.state_dir
        cmd = [binary.path, f"--root={state_dir}"] + (["--rootless"] if session.rootless else [])
        cmd += [f"--debug-log={self.log_file}"]
        if "debug-command" in binary.flags:
            cmd.append("--debug-command=exec")
        # The cell's first pid inside the sandbox: pids only grow, so every process
        # of this cell has a pid at least this large, and earlier cells' have smaller.
        self.pid_file = self.log_file + ".pid"
        cmd += ["exec", f"--internal-pid-file={self.pid_file}", "--cwd", session.config.cwd,
                session.container_id, *self.args]
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True,
                                        close_fds=True)

    def hand_over(self, script: str) -> None:
        """Start the cell (its script file is written): how to run it, then end of file."""
        how = "exec" if script.startswith("#!") else "source"
        try:
            self.process.stdin.write(f"{how}\n".encode())
            self.process.stdin.close()
        except BrokenPipeError:
            pass   # the exec failed already; its log says why (wait_status reports it)

    def discard(self) -> None:
        """End a waiter no cell used: end of file ends its `read`."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            kill_group(self.process.pid)
            self.process.wait()
        self.close()
        for path in (self.log_file, self.pid_file):   # the next waiter reuses the names
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float) -> None:
        """End the cell's processes, and only them: SIGINT, then SIGKILL after `grace`."""
        if grace > 0 and self.running():
            self.signal_cell("INT")
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self.signal_cell("KILL")   # also what it left running in the background
        try:
            self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            kill_group(self.process.pid)
            self.process.wait()

    def signal_cell(self, signal_name: str) -> None:
        container = self.session.booted.container
        listing = container.binary.control(container.state_dir, "ps", "--format", "json",
                                           self.session.container_id,
                                           rootless=self.session.rootless)
        try:
            with open(self.pid_file) as fh:
                first = int(fh.read().strip())
        except (OSError, ValueError):
            return   # not started inside the sandbox yet: killing `runsc exec` is enough
        for pid in re.findall(r"\d+", listing.stdout):
            if int(pid) >= first:
                container.binary.control(container.state_dir, "kill", "--pid", pid,
                                         self.session.container_id, signal_name,
                                         rootless=self.session.rootless)

    def close(self) -> None:
        for pipe in (self.process.stdout, self.process.stderr):
            pipe.close()


def get(name: str) -> Session:
    session = SESSIONS.get(name)
    if session is None:
        running = ", ".join(sorted(SESSIONS)) or "none"
        raise SandboxConfigError("session", f"no session named {name} (running: {running})",
                                 f"start one with %sandbox start {name} [options]")
    return session


def close_all() -> None:
    for session in list(SESSIONS.values()):
        session.close()


def wait_status_error(binary: Runsc, log_file: str, process) -> str:
    try:
        process.wait(timeout=5)
        wait_status(binary, log_file, process, "")
    except SandboxError as exc:
        return str(exc)
    except subprocess.TimeoutExpired:
        return "runsc did not start the sandbox in time"
    return f"runsc ended with status {process.returncode}"
