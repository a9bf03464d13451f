"""The exceptions a user of sandbox_magic can meet.

`SandboxConfigError` means the request was wrong and nothing was created;
`SandboxError` means the request was fine but the sandbox could not run (runsc
missing or failing); `SandboxExitError` means the script ran and failed, and is a
`subprocess.CalledProcessError` exactly like the one `%%bash` raises.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import SandboxResult


class SandboxError(RuntimeError):
    """The sandbox could not be created or run; carries runsc's own message."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the message is the whole story.
        return [f"{type(self).__name__}: {self}"]


class SandboxConfigError(SandboxError, ValueError):
    """A bad option, raised before anything is created.

    `field` is the option's Python name (`cwd`); the message names it as the
    magic and the CLI spell it (`--cwd`) and says what would work.
    """

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        text = f"{option_name(field)}: {problem}"
        super().__init__(f"{text}. {fix[:1].upper()}{fix[1:]}" if fix else text)


class SandboxExitError(subprocess.CalledProcessError):
    """The script exited nonzero or was killed by a signal (as `%%bash` raises)."""

    def __init__(self, result: "SandboxResult") -> None:
        # As %%bash: the output rides along, unless it is too large to hold in memory.
        super().__init__(result.returncode, result.config.script,
                         output=result.stdout_output.cached, stderr=result.stderr_output.cached)
        self.result = result

    def __str__(self) -> str:
        return f"sandbox {self.result.status_text()}"

    def _render_traceback_(self) -> list[str]:
        # A failing cell shows one status line, not a Python traceback.
        return [f"{type(self).__name__}: {self}"]


NEGATIVE_FLAGS = {"netns": "--no-netns", "nat": "--no-nat"}


def option_name(field: str) -> str:
    """How the magic and the CLI spell a config field: `env_all` -> `--env-all`."""
    return NEGATIVE_FLAGS.get(field) or "--" + field.replace("_", "-")
