"""The options of a sandboxed run, declared once for the magic and the CLI.

Each entry is an argparse argument. The magic applies them with IPython's
`magic_arguments`; the CLI adds them to its own parser. Defaults are None so
that the magic can tell "not given" from a value and fall back to its
traitlets configuration.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    kwargs: dict = field(default_factory=dict)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, **self.kwargs)


RUN_OPTIONS = (
    Option(("--root",), dict(metavar="DIR", default=None,
           help="Root filesystem of the sandbox, read-only under a throw-away in-memory "
                "overlay (default /).")),
    Option(("--cwd",), dict(metavar="DIR", default=None,
           help="Working directory inside the sandbox (default: the kernel's current "
                "directory; / if that does not exist inside --root).")),
    Option(("-e", "--env"), dict(metavar="NAME=VALUE", action="append", default=[],
           help="Set an environment variable, literally (no shell expansion). Repeatable.")),
    Option(("--env-all",), dict(action="store_true", default=None,
           help="Pass the whole kernel environment, secret-looking variables included "
                "(default: they and Jupyter's own variables are left out).")),
    Option(("--hostname",), dict(metavar="NAME", default=None,
           help="Host name inside the sandbox (default: the host's).")),
    Option(("--timeout",), dict(metavar="SECONDS", default=None,
           help="Kill the sandbox after this many seconds.")),
    Option(("--runsc",), dict(metavar="PATH", default=None,
           help="The runsc binary (default: SandboxMagics.runsc, else runsc on PATH).")),
)

# How the magic presents a result; the CLI has its own equivalents.
MAGIC_OUTPUT_OPTIONS = (
    Option(("--out",), dict(metavar="VAR", default=None,
           help="Store the script's stdout in VAR instead of showing it.")),
    Option(("--err",), dict(metavar="VAR", default=None,
           help="Store the script's stderr in VAR instead of showing it.")),
    Option(("--result",), dict(metavar="VAR", default=None,
           help="Store the SandboxResult (exit_code, signal, stdout, stderr, spec, ...) in VAR.")),
    Option(("--no-raise-error",), dict(action="store_true", default=False,
           help="Do not raise CalledProcessError when the script fails; show its status.")),
)
