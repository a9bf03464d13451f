"""SandboxConfig: one validated, immutable description of a sandboxed run.

Every user-facing validation error is born here, before anything is created.
The magic, the panel, the CLI and `run()` all come through `make_config`.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from .errors import SandboxConfigError

# Names whose value is probably a credential: never handed to a sandbox by default.
SECRET_NAME_PARTS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL",
                     "API_KEY", "ACCESS_KEY", "PRIVATE_KEY")
# Jupyter's own connection and auth variables.
JUPYTER_PREFIXES = ("JPY_", "JUPYTERHUB_")
JUPYTER_NAMES = ("JUPYTER_TOKEN",)

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class SandboxConfig:
    """What to run and how; every path absolute, every value checked.

    `env` holds only the explicit `-e` overrides, in order; the inherited
    environment is computed when the run starts (see `sandbox_environment`).
    """

    script: str
    root: str = "/"
    cwd: str = "/"
    env: tuple[tuple[str, str], ...] = ()
    env_all: bool = False
    hostname: str = field(default_factory=socket.gethostname)
    timeout: float | None = None
    runsc: str | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict (for run records); `from_dict` reverses it."""
        data = asdict(self)
        data["env"] = [f"{name}={value}" for name, value in self.env]
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "SandboxConfig":
        return make_config(**dict(data))


def make_config(script: str, *, root: str = "/", cwd: str | None = None,
                env: Mapping[str, str] | Iterable[str] | None = None,
                env_all: bool = False, hostname: str | None = None,
                timeout: float | str | None = None,
                runsc: str | None = None) -> SandboxConfig:
    """Validate user-facing options and return a SandboxConfig.

    Raises SandboxConfigError naming the option and the fix. Reads the
    filesystem (does the root exist?) but creates nothing.
    """
    if not isinstance(script, str):
        raise SandboxConfigError("script", f"expected the script as text, got {type(script).__name__}")
    if "\0" in script:
        raise SandboxConfigError("script", "contains a NUL byte", "remove it; a shell script is text")
    root = check_root(root)
    return SandboxConfig(
        script=script,
        root=root,
        cwd=check_cwd(cwd, root),
        env=check_env(env),
        env_all=check_flag("env_all", env_all),
        hostname=check_hostname(hostname),
        timeout=check_timeout(timeout),
        runsc=check_runsc(runsc),
    )


def check_root(root: str) -> str:
    if not isinstance(root, str) or not root:
        raise SandboxConfigError("root", f"expected a directory path, got {root!r}",
                                 "give a directory such as / (the default)")
    path = os.path.abspath(root)
    if not os.path.isdir(path):
        raise SandboxConfigError("root", f"{root!r} is not an existing directory",
                                 "give the root filesystem's directory, or leave --root out for /")
    return path


def check_cwd(cwd: str | None, root: str) -> str:
    """The working directory inside the sandbox, as an absolute path.

    Left out: the kernel's current directory when it exists inside the root
    (always true for root /), else /. Relative: taken from the kernel's
    current directory, as `runsc do --cwd` does.
    """
    if cwd is None:
        here = os.getcwd()
        return here if os.path.isdir(inside(root, here)) else "/"
    if not isinstance(cwd, str) or not cwd:
        raise SandboxConfigError("cwd", f"expected a directory path, got {cwd!r}",
                                 "give a directory inside the root, or leave --cwd out")
    path = os.path.normpath(os.path.join(os.getcwd(), cwd))
    if not os.path.isdir(inside(root, path)):
        where = "" if root == "/" else f" inside the root {root}"
        raise SandboxConfigError("cwd", f"{path} is not an existing directory{where}",
                                 "give an existing directory, or leave --cwd out "
                                 "to use the kernel's current directory")
    return path


def inside(root: str, path: str) -> str:
    """Where the sandbox path `path` lies on the host, for a root directory."""
    return os.path.join(root, path.lstrip("/"))


def check_env(env: Mapping[str, str] | Iterable[str] | None) -> tuple[tuple[str, str], ...]:
    """`-e NAME=VALUE` items (or a mapping) as ordered (name, value) pairs, taken literally."""
    if env is None:
        return ()
    if isinstance(env, str):
        env = [env]
    items = env.items() if isinstance(env, Mapping) else (split_env_item(item) for item in env)
    pairs = []
    for name, value in items:
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise SandboxConfigError("env", f"{name!r} is not a valid variable name",
                                     "use letters, digits and _, not starting with a digit, "
                                     "e.g. -e MY_VAR=1")
        if not isinstance(value, str) or "\0" in value:
            raise SandboxConfigError("env", f"the value of {name} must be text without NUL bytes")
        pairs.append((name, value))
    return tuple(pairs)


def split_env_item(item: object) -> tuple[str, str]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    if not isinstance(item, str) or "=" not in item:
        raise SandboxConfigError("env", f"{item!r} is not NAME=VALUE",
                                 "write it as -e NAME=VALUE, e.g. -e DATA_DIR=/data")
    name, _, value = item.partition("=")
    return name, value


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise SandboxConfigError(name, f"expected True or False, got {value!r}")
    return value


def check_hostname(hostname: str | None) -> str:
    if hostname is None:
        return socket.gethostname()
    labels = hostname.split(".") if isinstance(hostname, str) else [None]
    if (not isinstance(hostname, str) or not 0 < len(hostname) <= 64
            or not all(isinstance(label, str) and HOSTNAME_LABEL.fullmatch(label)
                       for label in labels)):
        raise SandboxConfigError("hostname", f"{hostname!r} is not a valid host name",
                                 "use letters, digits and inner hyphens, at most 64 "
                                 "characters, e.g. --hostname lab-1")
    return hostname


def check_timeout(timeout: float | str | None) -> float | None:
    if timeout is None:
        return None
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(timeout, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise SandboxConfigError("timeout", f"{timeout!r} is not a positive number of seconds",
                                 "give e.g. --timeout 60, or leave it out for no limit")
    return seconds


def check_runsc(runsc: str | None) -> str | None:
    """An explicitly given runsc must exist; None means 'find it later'."""
    if runsc is None:
        return None
    if not isinstance(runsc, str) or not runsc:
        raise SandboxConfigError("runsc", f"expected a path to the runsc binary, got {runsc!r}")
    if os.sep not in runsc:
        return runsc  # a bare name is looked up on PATH when the run starts
    path = os.path.abspath(runsc)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise SandboxConfigError("runsc", f"{runsc} is not an executable file",
                                 "give the path of a runsc binary, or leave --runsc out "
                                 "to use the configured one or runsc on PATH")
    return path


def sandbox_environment(base: Mapping[str, str], overrides: Iterable[tuple[str, str]],
                        env_all: bool) -> dict[str, str]:
    """The environment the script sees: `base` filtered unless env_all, then overrides."""
    env = dict(base) if env_all else {k: v for k, v in base.items() if passes_filter(k, v)}
    env.update(overrides)
    return env


def passes_filter(name: str, value: str) -> bool:
    """False for variables that look secret, Jupyter's own, or only mean something in the kernel."""
    upper = name.upper()
    if any(part in upper for part in SECRET_NAME_PARTS):
        return False
    if upper.startswith(JUPYTER_PREFIXES) or upper in JUPYTER_NAMES:
        return False
    # ipykernel sets MPLBACKEND to its inline backend, which a Python inside the
    # sandbox cannot import: matplotlib would fail there instead of using its default.
    if name == "MPLBACKEND" and value.startswith("module://"):
        return False
    return True
