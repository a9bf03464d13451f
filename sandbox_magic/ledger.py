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

import json
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass

CONTAINER_PREFIX = "sbx-"
STATE_ENV = "SANDBOX_MAGIC_STATE"  # overrides the state root (tests, odd set-ups)


def state_root(create: bool = True) -> str:
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
    if create:
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


def outputs_dir(state: str) -> str:
    """Where results keep their streams' files (streams.output_dir)."""
    return os.path.join(state, "outputs")


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


def create_run(state: str, runsc_path: str, rootless: bool) -> RunDir:
    """Create a run directory with its owner record, before any resource of the run."""
    run = RunDir(state, new_container_id())
    os.makedirs(runsc_root(state), mode=0o700, exist_ok=True)
    os.makedirs(runs_dir(state), mode=0o700, exist_ok=True)
    os.mkdir(run.path, 0o700)
    try:
        write_owner(run.path, container_id=run.container_id, runsc=runsc_path,
                    rootless=rootless)
    except BaseException:
        remove_run(run)
        raise
    return run


def remove_run(run: RunDir) -> None:
    """The last step of a run's teardown: its ledger goes with it."""
    shutil.rmtree(run.path, ignore_errors=True)


TEARING_DOWN = "tearing-down"


def mark_tearing_down(run: RunDir) -> None:
    """The sandbox is gone; its network is being removed (other runs may wait for it)."""
    with open(run.file(TEARING_DOWN), "w"):
        pass


def is_tearing_down(run: RunDir) -> bool:
    return os.path.exists(run.file(TEARING_DOWN))


ADDRESS_RELEASED = "address-released"


def mark_address_released(run: RunDir) -> None:
    """The run's veth and namespace are gone: its subnet is free for others."""
    with open(run.file(ADDRESS_RELEASED), "w"):
        pass


def write_owner(directory: str, **details) -> None:
    """owner.json: this process (pid and start time, see owner_alive), and `details`.
    Written whole or not at all: a reader never sees half an owner."""
    owner = {"pid": os.getpid(), "pid_start": process_start_time(os.getpid()),
             "created": time.time(), **details}
    path = os.path.join(directory, "owner.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(owner, fh)
    os.replace(path + ".tmp", path)


def read_owner(run: RunDir) -> dict | None:
    return read_json(run.file("owner.json"))


def process_start_time(pid: int) -> int | None:
    """The start time of a live process in clock ticks since boot (tells reused pids
    apart); None if it is gone or a zombie (killed, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its ')'.
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


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


def live_network_plans(state: str, exclude: str) -> list:
    """(plan, tearing_down) of the runs whose owner is alive: their addresses are taken."""
    from .network import NetworkPlan
    plans = []
    for run in list_runs(state):
        if (run.container_id == exclude or not owner_alive(read_owner(run))
                or os.path.exists(run.file(ADDRESS_RELEASED))):
            continue
        data = read_json(run.file("network.json"))
        if data:
            plans.append((NetworkPlan.from_dict(data), is_tearing_down(run)))
    return plans


def read_json(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def leftovers(state: str | None = None) -> list[str]:
    """Everything of ours on the machine right now, one description per item."""
    state = state or state_root()
    found = [f"run dir {run.path}" for run in list_runs(state)]
    found += [f"runsc state {os.path.join(runsc_root(state), name)}"
              for name in container_state_entries(state)]
    found += [f"process {pid} ({command_of(pid)})" for pid in processes_of(runsc_root(state))]
    found += [f"cgroup {path}" for path in container_cgroups()]
    found += [f"output files {path}" for path in dead_output_dirs(state)]
    found += network_leftovers(state)
    return found


def dead_output_dirs(state: str) -> list[str]:
    """Output files of results whose process is gone (a live process removes its own
    when the result is garbage-collected, or at exit)."""
    base = outputs_dir(state)
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    dead = []
    for name in names:
        owner = read_json(os.path.join(base, name, "owner.json"))
        if not owner_alive(owner):
            dead.append(os.path.join(base, name))
    return dead


def network_leftovers(state: str) -> list[str]:
    if os.geteuid() != 0:
        return []  # only root can create network resources
    from . import network
    found = [f"netns {name}" for name in network.our_namespaces()]
    found += [f"link {name}" for name in network.our_links()]
    found += [f"iptables {rule}" for rule in network.our_iptables_rules()]
    forwarding = network.read_forwarding(state)
    if forwarding["holders"]:
        found.append(f"ip_forward holders {forwarding['holders']}")
    return found


def container_cgroups() -> list[str]:
    """cgroup directories named after containers of ours (runsc's default is /<id>)."""
    from .runsc import cgroup_dirs
    return sorted(cgroup_dirs(CONTAINER_PREFIX + "*"))


def command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


# ---------------------------------------------------------------- cleanup

def cleanup(state: str | None = None, everything: bool = False) -> list[str]:
    """Remove what runs of dead owners left behind (everything=True: every run of
    ours, live or not, and tagged resources that no run claims). Returns what was removed."""
    state = state or state_root()
    removed = []
    for run in list_runs(state):
        owner = read_owner(run)
        if everything or not owner_alive(owner):
            removed += cleanup_run(run, owner or {}, state)
    for path in dead_output_dirs(state):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"output files {path}")
    if everything:
        removed += remove_orphans(state)
    return removed


def cleanup_run(run: RunDir, owner: dict, state: str) -> list[str]:
    from . import network
    remove_container(state, run.container_id, run.path, owner.get("runsc"),
                     bool(owner.get("rootless")))
    plan = read_json(run.file("network.json"))
    if plan:
        network.teardown(network.NetworkPlan.from_dict(plan), state)
    remove_run(run)
    return [f"run {run.container_id}"]


def remove_container(state: str, container_id: str, marker: str, runsc_path: str | None,
                     rootless: bool) -> None:
    """What a run's own teardown does (runsc.Container.remove), for a run whose owner
    is gone: runsc state, processes (found by `marker` in their command line), cgroups."""
    from .runsc import Container, kill_process, locate, remove_cgroups
    try:
        binary = locate(runsc_path if runsc_path and os.path.exists(runsc_path) else None)
    except Exception:  # no runsc at all: kill by command line, remove what is left
        for pid in processes_of(marker):
            kill_process(pid)
        remove_cgroups(container_id)
        return
    Container(binary, state_dir=runsc_root(state), bundle=marker, container_id=container_id,
              rootless=rootless).remove(state, marker)


def remove_orphans(state: str) -> list[str]:
    """Tagged resources whose run directory is gone (only with everything=True)."""
    from . import network
    from .runsc import kill_process
    removed = []
    for pid in processes_of(runsc_root(state)):
        kill_process(pid)
        removed.append(f"process {pid}")
    for name in container_state_entries(state):
        if name.endswith(".state"):
            container_id = name.split("_", 1)[0]
            remove_container(state, container_id, container_id, None, os.geteuid() != 0)
            removed.append(f"runsc state {container_id}")
    for path in container_cgroups():
        try:
            os.rmdir(path)
            removed.append(f"cgroup {path}")
        except OSError:
            pass
    if os.geteuid() == 0:
        removed += network.remove_orphans(state)
    return removed
