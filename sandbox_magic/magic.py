"""%%sandbox and %sandbox: parse the line, call run_config(), present the result."""

from __future__ import annotations

import shlex
import sys

from IPython.core.error import UsageError
from IPython.display import display
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Float, Int, List, Unicode

from . import session as sessions
from .config import check_timeout, make_config
from .ledger import cleanup
from .errors import SandboxConfigError, SandboxExitError
from .options import MAGIC_OUTPUT_OPTIONS, RUN_OPTIONS, run_kwargs
from .records import RunRecord
from .runner import run_config
from .streams import BoundedWriter



def with_options(*options):
    """Apply Option entries as IPython magic_arguments, in declaration order."""
    def decorate(func):
        for option in reversed(options):
            func = argument(*option.flags, **option.kwargs)(func)
        return func
    return decorate


# What a --session cell may say: the rest was fixed by %sandbox start.
SESSION_CELL_OPTIONS = {"session", "timeout", "out", "err", "result", "no_raise_error"}


def listing() -> str:
    from .standby import STANDBYS
    lines = [f"session {name}: {s.container_id}, {s.cells} cells run"
             for name, s in sorted(sessions.SESSIONS.items())]
    lines.append(f"standby sandboxes: {STANDBYS.count()}")
    return "\n".join(lines)


@magics_class
class SandboxMagics(Magics):
    """Run a cell's shell script in a gVisor sandbox. Defaults below are
    traitlets config: `%config SandboxMagics.timeout = 60`, or ipython_config.py."""

    root = Unicode("/", help="Default --root.").tag(config=True)
    timeout = Float(None, allow_none=True, help="Default --timeout in seconds.").tag(config=True)
    env = List(Unicode(), help="NAME=VALUE items set in every sandbox, before -e.").tag(config=True)
    env_all = Bool(False, help="Default --env-all.").tag(config=True)
    hostname = Unicode(None, allow_none=True, help="Default --hostname.").tag(config=True)
    hidden_paths = List(Unicode(), help="Paths every sandbox sees empty (as --hide), besides "
                        "the Jupyter runtime dir, ~/.jupyter and JupyterHub's files.").tag(config=True)
    memory = Unicode(None, allow_none=True, help="Default --memory (e.g. '1G').").tag(config=True)
    cpus = Float(None, allow_none=True, help="Default --cpus.").tag(config=True)
    pids = Int(None, allow_none=True, help="Default --pids.").tag(config=True)
    runsc = Unicode(None, allow_none=True, help="Path of runsc (default: runsc on PATH).").tag(config=True)
    raise_error = Bool(True, help="Raise CalledProcessError when a script fails "
                                  "(False: as if every cell had --no-raise-error).").tag(config=True)
    output_limit = Int(200_000, help="Characters of each stream shown in the notebook: the "
                                     "first and the last half; the whole text is in "
                                     "result.stdout_path / stderr_path.").tag(config=True)
    standby = Bool(True, help="Keep a sandbox booted for the configuration of the last "
                              "fresh cell, so that the next such cell starts at once.").tag(config=True)
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
        runner = self.session_runner(args, cell) if args.session else self.fresh_runner(args, cell)
        stdout = None if args.out else self.writer(sys.stdout, "stdout")
        stderr = None if args.err else self.writer(sys.stderr, "stderr")
        try:
            result = runner(on_stdout=stdout and stdout.write, on_stderr=stderr and stderr.write)
        except SandboxConfigError as exc:  # found against the host: address taken, not root
            raise UsageError(str(exc)) from None
        finally:
            for writer in (stdout, stderr):
                if writer:
                    writer.close()
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
        command, rest = (words[0], words[1:]) if words else ("", [])
        if command == "panel" and not rest:
            from .panel import SandboxPanel
            return SandboxPanel(**self.defaults())
        if command == "cleanup" and set(rest) <= {"--all"}:
            removed = cleanup(everything="--all" in rest)
            print("removed: " + ", ".join(removed) if removed else "nothing to clean up")
            return None
        if command == "start" and rest:
            return self.start_session(rest[0], rest[1:])
        if command == "stop" and len(rest) == 1:
            try:
                sessions.get(rest[0]).close()
            except SandboxConfigError as exc:
                raise UsageError(str(exc)) from None
            print(f"session {rest[0]} stopped")
            return None
        if command == "list" and not rest:
            print(listing())
            return None
        raise UsageError("usage: %sandbox start NAME [options] | stop NAME | list | panel | "
                         "cleanup [--all]; to run a cell, write %%sandbox [options] on its "
                         "first line and the script below (see %%sandbox?)")

    def start_session(self, name: str, words: list[str]):
        args = self.sandbox_cell.parser.parse_args(words)
        options = run_kwargs(args, self.defaults())
        options.pop("timeout")
        try:
            session = sessions.Session(name, **options)
        except SandboxConfigError as exc:
            raise UsageError(str(exc)) from None
        print(f"session {name} started ({session.container_id}); run cells in it with "
              f"%%sandbox --session {name}")
        return None

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

    def defaults(self) -> dict:
        return dict(root=self.root, env=list(self.env), env_all=self.env_all,
                    hostname=self.hostname,
                    timeout=self.timeout, runsc=self.runsc, hide=list(self.hidden_paths),
                    memory=self.memory, cpus=self.cpus, pids=self.pids)

    def fresh_runner(self, args, cell: str):
        try:
            config = make_config(cell, **run_kwargs(args, self.defaults()))
        except SandboxConfigError as exc:
            raise UsageError(str(exc)) from None
        return lambda **streams: run_config(config, standby=self.standby, **streams)

    def session_runner(self, args, cell: str):
        given = [word for word in vars(args) if word not in SESSION_CELL_OPTIONS
                 and getattr(args, word) not in (None, False, [])]
        if given:
            raise UsageError(f"--session {args.session}: the sandbox's options were set by "
                             f"%sandbox start; here only --timeout and the output options "
                             f"(not --{given[0].replace('_', '-')})")
        try:
            session = sessions.get(args.session)
            timeout = check_timeout(args.timeout if args.timeout is not None else self.timeout)
        except SandboxConfigError as exc:
            raise UsageError(str(exc)) from None
        return lambda **streams: session.run(cell, timeout=timeout, **streams)

    def writer(self, stream, name: str) -> BoundedWriter:
        where = f"; all of it is in result.{name} and result.{name}_path (see --result)"
        return BoundedWriter(stream.write, stream.flush, limit=self.output_limit, where=where)

    def store(self, args, result) -> None:
        # Read a stream (maybe hundreds of MB, from its file) only when asked for.
        for name, value in (("out", lambda: result.stdout), ("err", lambda: result.stderr),
                            ("result", lambda: result)):
            variable = getattr(args, name)
            if variable:
                self.shell.user_ns[variable] = value()


