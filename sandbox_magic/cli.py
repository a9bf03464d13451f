"""The `sandbox-magic` command: the same run() as the magic, from a shell.

    sandbox-magic doctor
    sandbox-magic run [options] (SCRIPT_FILE | -c SCRIPT)
    sandbox-magic cleanup [--all]
    sandbox-magic execute NOTEBOOK [-o OUT]
    sandbox-magic verify NOTEBOOK [--status-only]
    sandbox-magic demo [--output DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import SandboxConfigError, SandboxError
from .options import RUN_OPTIONS, run_kwargs

REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except SandboxConfigError as exc:
        parser.exit(2, f"sandbox-magic: error: {exc}\n")
    except SandboxError as exc:
        parser.exit(1, f"sandbox-magic: {exc}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandbox-magic",
                                     description="Run shell scripts in gVisor sandboxes.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a script in a fresh sandbox",
                              description="Run a script in a fresh sandbox. Exits with the "
                                          "script's status, or 128+N if signal N killed it, "
                                          "as `runsc do` does.")
    for option in RUN_OPTIONS:
        option.add_to(run)
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("script_file", nargs="?", metavar="SCRIPT_FILE",
                        help="file holding the script (- for standard input)")
    source.add_argument("-c", dest="script", metavar="SCRIPT", help="the script itself")
    run.set_defaults(handler=command_run)

    clean = commands.add_parser("cleanup", help="remove what sandboxes of dead owners left",
                                description="Remove the sandboxes, network namespaces, veths, "
                                            "NAT rules and files that runs whose owner died "
                                            "left behind. --all: every sandbox of ours, "
                                            "running or not, and any tagged leftover.")
    clean.add_argument("--all", action="store_true", dest="everything")
    clean.set_defaults(handler=command_cleanup)

    doctor = commands.add_parser("doctor", help="check that a sandboxed cell can run here",
                                 description="Check runsc, its version and platform, the "
                                             "netstack work-around, root or rootless, iptables "
                                             "and the kernel; exit 0 only when a cell can run.")
    doctor.set_defaults(handler=command_doctor)

    execute = commands.add_parser("execute", help="execute a notebook in a real kernel and "
                                                  "save it with its outputs and run records")
    execute.add_argument("notebook", metavar="NOTEBOOK")
    execute.add_argument("-o", "--output", metavar="OUT",
                         help="where to save the executed notebook (default: in place)")
    execute.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    execute.set_defaults(handler=command_execute)

    verify = commands.add_parser("verify", help="re-run a notebook's recorded sandbox runs "
                                                "and compare")
    verify.add_argument("notebook", metavar="NOTEBOOK")
    verify.add_argument("--status-only", action="store_true",
                        help="compare exit statuses only, not the output digests")
    verify.set_defaults(handler=command_verify)

    demo = commands.add_parser("demo", help="execute notebooks/quickstart.ipynb in a real "
                                            "kernel and print its cells and outputs")
    demo.add_argument("--notebook", default=str(REPO_NOTEBOOKS / "quickstart.ipynb"))
    demo.add_argument("--output", default=None,
                      help="directory for the executed copy (default: build/demo)")
    demo.set_defaults(handler=command_demo)
    return parser


def command_run(args: argparse.Namespace) -> int:
    from .runner import run
    script = args.script if args.script is not None else read_script(args.script_file)
    result = run(script, **run_kwargs(args), on_stdout=write_to(sys.stdout),
                 on_stderr=write_to(sys.stderr))
    if result.timed_out:
        print(f"sandbox-magic: {result.status_text()}", file=sys.stderr)
    return 128 + result.signal if result.signal is not None else result.exit_code


def command_doctor(args: argparse.Namespace) -> int:
    from .doctor import checks
    able = True
    for check in checks():
        print(check.line())
        able = able and check.ok is not False
    print("ready: a sandboxed cell can run" if able else "NOT ready: see the lines above")
    return 0 if able else 1


def command_execute(args: argparse.Namespace) -> int:
    from .notebooks import execute_notebook
    source = existing_notebook(args.notebook)
    output = Path(args.output) if args.output else source
    execute_notebook(source, output, timeout=args.timeout)
    print(f"executed {source} -> {output}")
    return 0


def command_verify(args: argparse.Namespace) -> int:
    from .verify import table, verify_notebook
    source = existing_notebook(args.notebook)
    verdicts = verify_notebook(str(source), status_only=args.status_only)
    if not verdicts:
        print(f"{source}: no sandbox run records (execute it first: "
              f"sandbox-magic execute {source})")
        return 1
    print(table(verdicts))
    failed = [v for v in verdicts if not v.ok]
    print(f"{len(verdicts) - len(failed)} of {len(verdicts)} runs "
          + ("reproduced" if not failed else
             f"reproduced; differing: cell {', '.join(str(v.cell) for v in failed)}"))
    return 0 if not failed else 1


def existing_notebook(path: str) -> Path:
    notebook = Path(path)
    if not notebook.is_file():
        raise SandboxConfigError("notebook", f"{path} not found", "give the path of a .ipynb file")
    return notebook


def command_cleanup(args: argparse.Namespace) -> int:
    from .ledger import cleanup
    removed = cleanup(everything=args.everything)
    print("\n".join(f"removed {item}" for item in removed) or "nothing to clean up")
    return 0


def read_script(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise SandboxConfigError("script_file", f"cannot read {path}: {exc.strerror}",
                                 "give a readable file, or the script with -c") from None


def write_to(stream):
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()
    return write


def command_demo(args: argparse.Namespace) -> int:
    from .notebooks import execute_notebook, export_html, summarize
    notebook = Path(args.notebook)
    if not notebook.is_file():
        raise SandboxConfigError("notebook", f"{notebook} not found",
                                 "run from a clone of the repository, or pass --notebook PATH")
    output_dir = Path(args.output or Path.cwd() / "build" / "demo")
    output_dir.mkdir(parents=True, exist_ok=True)
    executed_path = output_dir / notebook.name.replace(".ipynb", ".executed.ipynb")
    print(f"executing {notebook} in a real kernel...", flush=True)
    executed = execute_notebook(notebook, executed_path)
    html_path = export_html(executed, executed_path.with_suffix(".html"))
    print(summarize(executed))
    print(f"\nexecuted notebook: {executed_path}\nHTML export:       {html_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
