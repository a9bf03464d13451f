"""SandboxConfig -> OCI runtime spec (a dict for config.json). Pure functions only.

The spec is what `runsc do` builds (runsc/cmd/do.go): the root filesystem
(read-only on the host, writable through runsc's in-memory overlay), the
working directory, the environment, every capability, the hostname and its
own pid/ipc/uts/mount/network namespaces. The cell's script reaches the
sandbox through a directory of the run bind-mounted read-only at SCRIPT_DIR, a path that
does not exist on the host (a standby or a session gets its scripts there after boot).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .config import SandboxConfig

SCRIPT_DIR = "/.sandbox-magic"          # a host directory of the run, bind-mounted read-only
SCRIPT_PATH = SCRIPT_DIR + "/cell"
OCI_VERSION = "1.0.2"
NAMESPACES = ("pid", "ipc", "uts", "mount", "network")

# Linux capabilities in number order (CAP_CHOWN = 0 ... CAP_AUDIT_READ = 37).
CAPABILITIES_38 = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
)
UNLIMITED_BY_NPROC = ("CAP_SYS_ADMIN", "CAP_SYS_RESOURCE")
CPU_PERIOD = 100_000   # microseconds

# Kernel 5.8/5.9 additions; runsc releases before 2023-03 refuse the whole spec
# when they appear (gVisor issue #8529), so runsc.py decides which list to use.
CAPABILITIES_41 = CAPABILITIES_38 + ("CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE")


def build_spec(config: SandboxConfig, *, environment: Mapping[str, str],
               script_source: str, capabilities: Sequence[str] = CAPABILITIES_38,
               network_namespace: str | None = None,
               etc_files: Mapping[str, str] | None = None,
               hidden: Mapping[str, str] | None = None, cgroup_name: str = "") -> dict:
    """The OCI spec for `config`.

    `script_source` is the host directory holding the script (as `cell`); `network_namespace` the
    path of a prepared namespace to join (None: a new empty one, or none at all
    with --no-netns); `etc_files` maps /etc paths to host files bind-mounted
    read-only over them; `cgroup_name` names the run's own cgroup when there are
    limits (a flat, tagged name so that teardown can remove it whole); `hidden` maps each path to hide to "dir" (an empty
    read-only tmpfs goes over it) or to an empty host file (bind-mounted over it).
    """
    caps = list(capabilities)
    if config.pids is not None:
        # gVisor does not apply RLIMIT_NPROC to tasks holding either of these.
        caps = [cap for cap in caps if cap not in UNLIMITED_BY_NPROC]
    spec = {
        "ociVersion": OCI_VERSION,
        # Not read-only: runsc's overlay takes the writes, and a read-only
        # root under --overlay2=root:memory makes every write fail.
        "root": {"path": config.root, "readonly": False},
        "hostname": config.hostname,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": script_command(config.script),
            "env": [f"{name}={value}" for name, value in environment.items()],
            "cwd": config.cwd,
            "capabilities": {kind: caps for kind in
                             ("bounding", "effective", "inheritable", "permitted", "ambient")},
        },
        "mounts": [read_only_file(SCRIPT_DIR, script_source)] + [
            read_only_file(dest, source) for dest, source in (etc_files or {}).items()] + [
            hiding_mount(path, how) for path, how in (hidden or {}).items()],
        "linux": {"namespaces": namespaces(config, network_namespace)},
    }
    if config.pids is not None:
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NPROC", "hard": config.pids,
                                       "soft": config.pids}]
    if config.limited:
        spec["linux"]["resources"] = resources(config)
        spec["linux"]["cgroupsPath"] = "/" + cgroup_name
    return spec


def resources(config: SandboxConfig) -> dict:
    limits = {}
    if config.memory is not None:
        limits["memory"] = {"limit": config.memory}
    if config.cpus is not None:
        limits["cpu"] = {"quota": int(config.cpus * CPU_PERIOD), "period": CPU_PERIOD}
    return limits


def read_only_file(destination: str, source: str) -> dict:
    return {"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", "ro"]}


def hiding_mount(path: str, how: str) -> dict:
    if how == "dir":
        return {"destination": path, "type": "tmpfs", "source": "tmpfs",
                "options": ["ro", "nosuid", "nodev", "noexec", "mode=755"]}
    return read_only_file(path, how)


def namespaces(config: SandboxConfig, network_namespace: str | None) -> list[dict]:
    entries = [{"type": kind} for kind in NAMESPACES if kind != "network"]
    if network_namespace:
        entries.append({"type": "network", "path": network_namespace})
    elif config.netns:
        entries.append({"type": "network"})   # a new, empty one: loopback only
    return entries


def script_command(script: str, path: str = SCRIPT_PATH) -> list[str]:
    """How the sandbox starts the script: a `#!` line picks the interpreter, as on Linux."""
    if script.startswith("#!"):
        return [path]
    return ["/bin/sh", path]


def with_args(spec: dict, args: list[str]) -> dict:
    """The same spec, running `args` (a standby's waiter, a session's init, a cell)."""
    return {**spec, "process": {**spec["process"], "args": list(args)}}


def script_file_text(script: str) -> str:
    """The script as written to its file: a shell needs the last line terminated."""
    return script if script.endswith("\n") or not script else script + "\n"
