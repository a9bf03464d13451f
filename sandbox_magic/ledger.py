"""Where the project keeps its state, what each run created, and cleanup.

Layout under the state root (one per user):

    <state>/runsc/          runsc --root: the state of every container of ours
    <state>/runs/<cid>/     one run: owner.json (written first), config.json,
                            the script, runsc's log

Every container is named `sbx-<hex>` and its bundle is its run directory, so
anything of ours can be found from the state root alone: by `cleanup` after
an owner died, and by the test suite's leak check.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

CONTAINER_PREFIX = "sbx-"
STATE_ENV = "SANDBOX_MAGIC_STATE"  # overrides the state root (tests, odd set-ups)


def state_root() -> str:
    """The per-user state root, created private (0700) if missing.

    root: /run/sandbox-magic; others: $XDG_RUNTIME_DIR/sandbox-magic, or, when
    that is unset (as after `su USER -c`), /tmp/sandbox-magic-<uid>.
    """
    path = os.environ.get(STATE_ENV)
    if not path:
        uid = os.geteuid()
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if uid == 0:
            path = "/run/sandbox-magic"
        elif xdg and os.path.isdir(xdg) and os.stat(xdg).st_uid == uid:
            path = os.path.join(xdg, "sandbox-magic")
        else:
            path = f"/tmp/sandbox-magic-{uid}"
    ensure_private_dir(path)
    return path


def ensure_private_dir(path: str) -> None:
    """Create `path` 0700; refuse one that another user owns or that is a symlink."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid():
        from .errors import SandboxError
        raise SandboxError(f"state directory {path} is not a private directory of this user; "
                           f"remove it or set {STATE_ENV} to another path")


def runsc_root(state: str) -> str:
    return os.path.join(state, "runsc")


def runs_dir(state: str) -> str:
    return os.path.join(state, "runs")


def new_container_id() -> str:
    return CONTAINER_PREFIX + secrets.token_hex(4)


@dataclass(frozen=True)
class RunDir:
    """The directory of one run, which is also its OCI bundle."""

    state: str
    container_id: str

    @property
    def path(self) -> str:
        return os.path.join(runs_dir(self.state), self.container_id)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)


@contextlib.contextmanager
def new_run(state: str, runsc_path: str, rootless: bool) -> Iterator[RunDir]:
    """Create a run directory with its owner record; remove it on exit, whatever happens."""
    run = RunDir(state, new_container_id())
    os.makedirs(runsc_root(state), mode=0o700, exist_ok=True)
    os.makedirs(runs_dir(state), mode=0o700, exist_ok=True)
    os.mkdir(run.path, 0o700)
    try:
        write_owner(run, runsc_path, rootless)
        yield run
    finally:
        shutil.rmtree(run.path, ignore_errors=True)


def write_owner(run: RunDir, runsc_path: str, rootless: bool) -> None:
    owner = {"pid": os.getpid(), "pid_start": process_start_time(os.getpid()),
             "container_id": run.container_id, "runsc": runsc_path,
             "rootless": rootless, "created": time.time()}
    tmp = run.file("owner.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(owner, fh)
    os.replace(tmp, run.file("owner.json"))


def read_owner(run: RunDir) -> dict | None:
    try:
        with open(run.file("owner.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot (tells reused pids apart)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after its ')'.
    return int(text.rsplit(")", 1)[1].split()[19])


def owner_alive(owner: dict | None) -> bool:
    if not owner:
        return False
    return process_start_time(owner["pid"]) == owner.get("pid_start")


def list_runs(state: str) -> list[RunDir]:
    try:
        names = sorted(os.listdir(runs_dir(state)))
    except FileNotFoundError:
        return []
    return [RunDir(state, name) for name in names if name.startswith(CONTAINER_PREFIX)]


def container_state_entries(state: str) -> list[str]:
    """runsc's files for containers of ours (state, lock, socket) under our runsc root."""
    try:
        names = os.listdir(runsc_root(state))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith((CONTAINER_PREFIX, "runsc-" + CONTAINER_PREFIX)))


def container_has_state(state: str, container_id: str) -> bool:
    prefix = (container_id + "_", "runsc-" + container_id + ".")
    return any(name.startswith(prefix) for name in container_state_entries(state))


def processes_of(marker: str) -> list[int]:
    """Pids of processes whose command line mentions `marker` (a run dir or our runsc root)."""
    pids = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry))
    return pids


def leftovers(state: str | None = None) -> list[str]:
    """Everything of ours on the machine right now, one description per item."""
    state = state or state_root()
    found = [f"run dir {run.path}" for run in list_runs(state)]
    found += [f"runsc state {os.path.join(runsc_root(state), name)}"
              for name in container_state_entries(state)]
    found += [f"process {pid} ({command_of(pid)})" for pid in processes_of(runsc_root(state))]
    found += [f"cgroup {path}" for path in container_cgroups()]
    return found


def container_cgroups() -> list[str]:
    """cgroup directories named after containers of ours (runsc's default is /<id>)."""
    import glob
    return sorted(glob.glob(f"/sys/fs/cgroup/{CONTAINER_PREFIX}*") +
                  glob.glob(f"/sys/fs/cgroup/*/{CONTAINER_PREFIX}*"))


def command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"
