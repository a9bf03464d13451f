"""%%sandbox and %sandbox: parse the line, call run_config(), present the result."""

from __future__ import annotations

import shlex
import sys
import time

from IPython.core.error import UsageError
from IPython.display import display
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Float, List, Unicode

from .config import make_config
from .ledger import cleanup
from .errors import SandboxConfigError, SandboxExitError
from .options import MAGIC_OUTPUT_OPTIONS, RUN_OPTIONS, run_kwargs
from .records import RunRecord
from .runner import run_config

FLUSH_INTERVAL = 0.05  # seconds between flushes of live output


def with_options(*options):
    """Apply Option entries as IPython magic_arguments, in declaration order."""
    def decorate(func):
        for option in reversed(options):
            func = argument(*option.flags, **option.kwargs)(func)
        return func
    return decorate


@magics_class
class SandboxMagics(Magics):
    """Run a cell's shell script in a gVisor sandbox. Defaults below are
    traitlets config: `%config SandboxMagics.timeout = 60`, or ipython_config.py."""

    root = Unicode("/", help="Default --root.").tag(config=True)
    timeout = Float(None, allow_none=True, help="Default --timeout in seconds.").tag(config=True)
    env = List(Unicode(), help="NAME=VALUE items set in every sandbox, before -e.").tag(config=True)
    env_all = Bool(False, help="Default --env-all.").tag(config=True)
    hostname = Unicode(None, allow_none=True, help="Default --hostname.").tag(config=True)
    runsc = Unicode(None, allow_none=True, help="Path of runsc (default: runsc on PATH).").tag(config=True)
    raise_error = Bool(True, help="Raise CalledProcessError when a script fails "
                                  "(False: as if every cell had --no-raise-error).").tag(config=True)
    record = Bool(True, help="Leave a run record (application/vnd.sandbox-magic.run+json) "
                             "in the cell's outputs, for `sandbox-magic verify`.").tag(config=True)

    @magic_arguments()
    @with_options(*RUN_OPTIONS, *MAGIC_OUTPUT_OPTIONS)
    @cell_magic("sandbox")
    def sandbox_cell(self, line: str, cell: str):
        """Run the cell as a shell script inside a fresh gVisor (runsc) sandbox.

        The host's root filesystem is visible read-only under a throw-away
        overlay; without --ip the sandbox has no network (loopback only). A first line `#!…`
        picks the interpreter. Output streams live; a nonzero exit or a signal
        raises CalledProcessError unless --no-raise-error.
        """
        args = self.parse_line(line)
        defaults = dict(root=self.root, env=self.env, env_all=self.env_all,
                        hostname=self.hostname, timeout=self.timeout, runsc=self.runsc)
        try:
            config = make_config(cell, **run_kwargs(args, defaults))
        except SandboxConfigError as exc:
            raise UsageError(str(exc)) from None
        stdout = None if args.out else LiveWriter(sys.stdout)
        stderr = None if args.err else LiveWriter(sys.stderr)
        try:
            result = run_config(config, on_stdout=stdout and stdout.write,
                                on_stderr=stderr and stderr.write)
        except SandboxConfigError as exc:  # found against the host: address taken, not root
            raise UsageError(str(exc)) from None
        finally:
            for writer in (stdout, stderr):
                if writer:
                    writer.flush()
        self.store(args, result)
        if self.record:
            display(RunRecord(result))
        if not result.ok:
            if args.no_raise_error or not self.raise_error:
                print(f"sandbox {result.status_text()}", file=sys.stderr)
            else:
                raise SandboxExitError(result)

    @line_magic("sandbox")
    def sandbox_line(self, line: str):
        """%sandbox panel: a form for every option, with previews, Run and Stop
        (`p = %sandbox panel` keeps it in p; see SandboxPanel).
        %sandbox cleanup [--all]: remove what sandboxes of dead kernels left behind
        (--all: every sandbox of ours, running or not). %%sandbox (two %) runs a cell."""
        words = shlex.split(line)
        if words == ["panel"]:
            from .panel import SandboxPanel
            return SandboxPanel(root=self.root, hostname=self.hostname, timeout=self.timeout,
                                env=list(self.env), env_all=self.env_all, runsc=self.runsc)
        if words[:1] == ["cleanup"] and set(words[1:]) <= {"--all"}:
            removed = cleanup(everything="--all" in words)
            print("removed: " + ", ".join(removed) if removed else "nothing to clean up")
            return None
        raise UsageError("usage: %sandbox panel | %sandbox cleanup [--all]; to run a cell, "
                         "write %%sandbox [options] on its first line and the script below "
                         "(see %%sandbox?)")

    def parse_line(self, line: str):
        # IPython's parse_argstring splits with posix=False and would keep the
        # quotes of -e 'A=B'; shlex.split gives the words a shell user expects.
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%%sandbox: cannot split the line: {exc}") from None
        args = self.sandbox_cell.parser.parse_args(words)
        for name in ("out", "err", "result"):
            value = getattr(args, name)
            if value is not None and not value.isidentifier():
                raise UsageError(f"--{name} {value}: not a Python variable name; "
                                 f"give a name such as --{name} {name}_text")
        return args

    def store(self, args, result) -> None:
        for name, value in (("out", result.stdout), ("err", result.stderr), ("result", result)):
            variable = getattr(args, name)
            if variable:
                self.shell.user_ns[variable] = value


class LiveWriter:
    """Writes output as it comes, flushing often enough to look live, not per byte."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.last_flush = 0.0

    def write(self, text: str) -> None:
        self.stream.write(text)
        now = time.monotonic()
        if now - self.last_flush >= FLUSH_INTERVAL:
            self.stream.flush()
            self.last_flush = now

    def flush(self) -> None:
        self.stream.flush()
