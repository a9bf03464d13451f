"""The runsc binary: where it is, which version, which flags, and process control.

Versions seen in the field differ (DESIGN.md §3): Debian 12's 0.0~20221219.0,
bookworm-backports' 0.0~20240729.0 and official release-YYYYMMDD.N builds. We
probe each binary once (version and flag list), then build command lines from
what it supports instead of assuming one version.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from .errors import SandboxError
from .spec import CAPABILITIES_38, CAPABILITIES_41

INSTALL_HINT = ("install it with `apt-get install -t bookworm-backports runsc` (Debian 12) "
                "or from https://gvisor.dev/docs/user_guide/install/, or pass --runsc PATH")
VERSION_DATE = re.compile(r"(\d{8})\.\d+")
PLATFORM_DEFAULT = re.compile(r"-platform string\n.*\(default \"(\w+)\"\)")
FLAG_NAME = re.compile(r"^\s+-{1,2}([a-z0-9][a-z0-9_-]*)", re.MULTILINE)
# First build that accepts CAP_PERFMON, CAP_BPF and CAP_CHECKPOINT_RESTORE (gVisor #8529).
NEW_CAPABILITIES_SINCE = 20230301
# Debian 12's stock build answers statx(AT_NO_AUTOMOUNT) with EINVAL: `ls` fails inside.
BROKEN_STATX_DATES = (20221219,)
# gVisor #10704: before this build runsc probes /proc/sys/net/core/rmem_default to
# tell the root network namespace, which Linux 6.11 made per-namespace.
NETNS_PROBE_FIXED_SINCE = 20240807
PER_NETNS_RMEM_KERNEL = (6, 11)
CONTROL_TIMEOUT = 10.0  # seconds for a `runsc kill`/`delete`; they normally take ~30 ms


@dataclass(frozen=True)
class Runsc:
    """One probed runsc binary."""

    path: str
    version: str
    date: int | None
    flags: frozenset[str]
    platform: str = "unknown"     # the default platform (we leave it alone)

    @property
    def capabilities(self) -> tuple[str, ...]:
        if self.date is not None and self.date < NEW_CAPABILITIES_SINCE:
            return CAPABILITIES_38
        return CAPABILITIES_41

    @property
    def breaks_stat(self) -> bool:
        return self.date in BROKEN_STATX_DATES

    def needs_proc_sys_net_workaround(self, kernel_release: str) -> bool:
        """True when this runsc would refuse netstack in any namespace on this kernel."""
        if self.date is None or self.date >= NETNS_PROBE_FIXED_SINCE:
            return False
        return kernel_version(kernel_release) >= PER_NETNS_RMEM_KERNEL

    def global_args(self, *, state_dir: str, log_file: str, rootless: bool,
                    network: str = "none", cgroups: bool = False) -> list[str]:
        """Flags before the subcommand."""
        args = [self.path, f"--root={state_dir}", f"--network={network}"]
        if rootless:
            args.append("--rootless")
        # Without resource limits no cgroup is needed. Without this flag runsc
        # makes a cgroup per container (/<id> in every controller), which a killed
        # run leaves behind, and spends ~40 ms doing it.
        if not cgroups and "ignore-cgroups" in self.flags:
            args.append("--ignore-cgroups")
        # Pass the overlay explicitly: the default changed to root:self in 2023,
        # which the 2022 build rejects; root:memory works in every version.
        if "overlay2" in self.flags:
            args.append("--overlay2=root:memory")
        else:
            args.append("--overlay")
        # The run command's log line "Exiting with status: N" carries the raw
        # wait status (exit code and signal apart); its exit code cannot.
        args.append(f"--debug-log={log_file}")
        if "debug-command" in self.flags:
            args.append("--debug-command=run")  # keep boot/gofer logging off the critical path
        return args

    def control(self, state_dir: str, *args: str, rootless: bool) -> subprocess.CompletedProcess:
        """Run `runsc kill/delete/...` against our state root; never raises for its status."""
        cmd = [self.path, f"--root={state_dir}"] + (["--rootless"] if rootless else []) + list(args)
        try:
            return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=CONTROL_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(cmd, -9, "", f"timed out: {exc}")


def locate(explicit: str | None = None, configured: str | None = None) -> Runsc:
    """The runsc to use: the explicit one, else the configured one, else runsc on PATH."""
    wanted = explicit or configured or "runsc"
    path = wanted if os.sep in wanted else shutil.which(wanted)
    if path is None or not os.access(path, os.X_OK):
        raise SandboxError(f"runsc not found ({wanted!r}); {INSTALL_HINT}")
    path = os.path.abspath(path)
    stat = os.stat(path)
    return probe(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def probe(path: str, mtime_ns: int, size: int) -> Runsc:
    """Version and flags of one binary (cached per path and file identity)."""
    version_text = run_probe([path, "--version"])
    match = re.search(r"runsc version (\S+)", version_text)
    if not match:
        raise SandboxError(f"{path} does not look like runsc: `runsc --version` printed "
                           f"{version_text.strip()[:200]!r}; {INSTALL_HINT}")
    version = match.group(1)
    date = VERSION_DATE.search(version)
    # The 2022 build prints its flag list on stderr, later ones on stdout.
    flags_text = run_probe([path, "flags"])
    platform = PLATFORM_DEFAULT.search(flags_text)
    return Runsc(path=path, version=version, date=int(date.group(1)) if date else None,
                 flags=frozenset(FLAG_NAME.findall(flags_text)),
                 platform=platform.group(1) if platform else "unknown")


def run_probe(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=CONTROL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"cannot run {cmd[0]}: {exc}; {INSTALL_HINT}") from exc
    return done.stdout + done.stderr


class Container:
    """One `runsc run` of a bundle, in its own session, and its removal.

    runsc starts in a new session because Jupyter interrupts the kernel's whole
    process group: the sandbox must be stopped deliberately (SIGINT to the
    processes inside, SIGKILL after a grace period), never by accident.
    """

    def __init__(self, binary: Runsc, *, state_dir: str, bundle: str, container_id: str,
                 rootless: bool) -> None:
        self.binary = binary
        self.state_dir = state_dir
        self.bundle = bundle
        self.container_id = container_id
        self.rootless = rootless
        self.process: subprocess.Popen | None = None

    def start(self, log_file: str, network: str = "none", cgroups: bool = False,
              private_proc_sys_net: bool = False) -> subprocess.Popen:
        cmd = self.binary.global_args(state_dir=self.state_dir, log_file=log_file,
                                      rootless=self.rootless, network=network, cgroups=cgroups)
        cmd += ["run", f"--bundle={self.bundle}", self.container_id]
        try:
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, close_fds=True, cwd=self.bundle,
                preexec_fn=hide_proc_sys_net if private_proc_sys_net else None)
        except OSError as exc:
            raise SandboxError(f"cannot start {self.binary.path}: {exc}; {INSTALL_HINT}") from exc
        return self.process

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_all(self, signal_name: str) -> None:
        """Send a signal to every process inside the sandbox."""
        self.binary.control(self.state_dir, "kill", "--all", self.container_id, signal_name,
                            rootless=self.rootless)

    def stop(self, grace: float) -> None:
        """End the sandbox: SIGINT inside, then SIGKILL after `grace` s (0: SIGKILL at once)."""
        if grace > 0 and self.running():
            self.signal_all("INT")
            self.wait_for_exit(grace)
        if self.running():
            self.signal_all("KILL")
            self.wait_for_exit(1.0)
        if self.running():
            # runsc itself does not answer (e.g. not started yet): kill its session.
            kill_group(self.process.pid)
            self.wait_for_exit(1.0)

    def wait_for_exit(self, seconds: float) -> bool:
        try:
            self.process.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    def remove(self, state: str, marker: str) -> None:
        """Leave nothing behind: no runsc process, no runsc state. Idempotent.

        `state` is our state root (to find the container's runsc files) and
        `marker` a string every process of this run has in its command line.
        """
        if self.running():
            self.stop(grace=0)
        from .ledger import container_has_state, processes_of
        if container_has_state(state, self.container_id):
            self.binary.control(self.state_dir, "delete", "--force", self.container_id,
                                rootless=self.rootless)
        # A runsc killed before it could clean up leaves its sandbox and gofer behind.
        for pid in processes_of(marker):
            kill_process(pid)
        remove_cgroups(self.container_id)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr) \
                if self.process else ():
            pipe.close()


def cgroup_dirs(name: str) -> list[str]:
    """The run's cgroup directories (cgroup v1: one per controller; v2: one)."""
    import glob
    return glob.glob(f"/sys/fs/cgroup/*/{name}") + glob.glob(f"/sys/fs/cgroup/{name}")


def remove_cgroups(name: str) -> None:
    """What a killed or failed runsc left of the run's cgroup (DESIGN.md §3)."""
    for path in cgroup_dirs(name):
        try:
            os.rmdir(path)
        except OSError:
            pass


MEMORY_CGROUP_V1 = "/sys/fs/cgroup/memory"


def precreate_memory_cgroup(name: str, limit: int) -> None:
    """Make the run's memory cgroup ourselves (cgroup v1), limit included. runsc
    joins a cgroup that exists instead of making one, and then leaves it in place
    when the sandbox ends: so that oom_kills() can still tell, afterwards, whether
    the limit killed it. Container.remove() deletes it."""
    if not os.path.isdir(MEMORY_CGROUP_V1):
        return   # cgroup v2: runsc makes and removes the cgroup; the reason is not known
    path = os.path.join(MEMORY_CGROUP_V1, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "memory.limit_in_bytes"), "w") as fh:
        fh.write(str(limit))


def oom_kills(name: str) -> int | None:
    """How many processes the memory limit of the run's cgroup killed (None: unknown)."""
    for path in (os.path.join(MEMORY_CGROUP_V1, name, "memory.oom_control"),
                 f"/sys/fs/cgroup/{name}/memory.events"):
        try:
            with open(path) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child must not dlopen
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 0x40000


def hide_proc_sys_net() -> None:
    """preexec_fn for runsc on kernels that trip gVisor #10704 (DESIGN.md §3):
    in a private mount namespace of runsc's own, a tmpfs over /proc/sys/net hides
    the file whose presence makes runsc think every namespace is the root one."""
    if LIBC.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) for the #10704 work-around")
    if LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "making / private for the #10704 work-around")
    if LIBC.mount(b"none", b"/proc/sys/net", b"tmpfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "tmpfs over /proc/sys/net for the #10704 work-around")


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except (ProcessLookupError, PermissionError):
        pass


def kill_process(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
