"""SandboxConfig: one validated, immutable description of a sandboxed run.

Every user-facing validation error is born here, before anything is created.
The magic, the panel, the CLI and `run()` all come through `make_config`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shutil
import socket
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from .errors import SandboxConfigError, option_name

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
    # Network (see network.py): mode "none" is an empty namespace, loopback only.
    network: str = "none"
    ip: str | None = None          # "ADDR/PREFIX", normalized
    peer: str | None = None        # the host side of the veth
    netns: bool = True             # False: the host's namespace (--no-netns)
    nat: bool = True
    dns: tuple[str, ...] = ()      # empty: the host's nameservers, else 8.8.8.8
    hide: tuple[str, ...] = ()     # paths that appear empty inside (beside default_hidden())
    memory: int | None = None      # bytes: the sandbox's memory limit (cgroup)
    cpus: float | None = None      # CPUs' worth of time per period (cgroup CFS quota)
    pids: int | None = None        # processes inside (RLIMIT_NPROC, enforced by gVisor)

    @property
    def limited(self) -> bool:
        """Whether the sandbox needs a cgroup of its own."""
        return self.memory is not None or self.cpus is not None

    @property
    def address(self) -> ipaddress.IPv4Interface | None:
        return ipaddress.IPv4Interface(self.ip) if self.ip else None

    def to_dict(self) -> dict:
        """A JSON-ready dict (for run records); `from_dict` reverses it."""
        data = asdict(self)
        data["env"] = [f"{name}={value}" for name, value in self.env]
        data["dns"] = list(self.dns)
        data["hide"] = list(self.hide)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "SandboxConfig":
        return make_config(**dict(data))


def make_config(script: str, *, root: str = "/", cwd: str | None = None,
                env: Mapping[str, str] | Iterable[str] | None = None,
                env_all: bool = False, hostname: str | None = None,
                timeout: float | str | None = None,
                runsc: str | None = None, network: str | None = None,
                ip: str | None = None, peer: str | None = None, netns: bool = True,
                nat: bool = True, dns: Iterable[str] | None = None,
                hide: Iterable[str] | None = None, memory: int | str | None = None,
                cpus: float | str | None = None, pids: int | str | None = None
                ) -> SandboxConfig:
    """Validate user-facing options and return a SandboxConfig.

    Raises SandboxConfigError naming the option and the fix. Reads the
    filesystem (does the root exist?) but creates nothing.
    """
    root = check_root(root)
    return SandboxConfig(
        script=check_script(script),
        root=root,
        cwd=check_cwd(cwd, root),
        env=check_env(env),
        env_all=check_flag("env_all", env_all),
        hostname=check_hostname(hostname),
        timeout=check_timeout(timeout),
        runsc=check_runsc(runsc),
        **check_network(network, ip, peer, check_flag("netns", netns),
                        check_flag("nat", nat), dns),
        hide=check_hide(hide),
        memory=check_memory(memory),
        cpus=check_cpus(cpus),
        pids=check_pids(pids),
    )


def check_script(script: str) -> str:
    if not isinstance(script, str):
        raise SandboxConfigError("script", f"expected the script as text, got {type(script).__name__}")
    if "\0" in script:
        raise SandboxConfigError("script", "contains a NUL byte", "remove it; a shell script is text")
    return script


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
    check_collection("env", env, "-e NAME=VALUE items, e.g. -e DATA_DIR=/data")
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


def check_collection(field: str, value: object, what: str) -> None:
    """A list-like of items (a mapping, for env); not a single number or flag."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Mapping, Iterable)):
        raise SandboxConfigError(field, f"expected a list, got {value!r}", f"give {what}")


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
    return check_number("timeout", timeout, 0, math.inf, "a positive number of seconds",
                        "give e.g. --timeout 60, or leave it out for no limit")


def check_number(field: str, value: float | str | None, above: float, at_most: float,
                 what: str, fix: str) -> float | None:
    """A finite number in (above, at_most], from a number or its text; None stays None."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or not above < number <= at_most:
        raise SandboxConfigError(field, f"{value!r} is not {what}", fix)
    return number


def check_runsc(runsc: str | None) -> str | None:
    """An explicitly given runsc must exist; None means 'find it later'."""
    if runsc is None:
        return None
    if not isinstance(runsc, str) or not runsc:
        raise SandboxConfigError("runsc", f"expected a path to the runsc binary, got {runsc!r}")
    if os.sep not in runsc:
        found = shutil.which(runsc)
        if found is None:
            raise SandboxConfigError("runsc", f"{runsc!r} is not found on PATH",
                                     "give the path of a runsc binary, or leave --runsc out "
                                     "to use the configured one or runsc on PATH")
        return found
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


NETWORK_MODES = ("none", "sandbox", "host")
DEFAULT_PREFIX = 24


def check_network(mode: str | None, ip: str | None, peer: str | None, netns: bool,
                  nat: bool, dns: Iterable[str] | None) -> dict:
    """The network fields of a SandboxConfig, checked against each other.

    Only the values themselves are checked here; whether the subnet is free on
    this host is checked when the run starts (network.reserve), still before
    anything is created.
    """
    if mode is not None and mode not in NETWORK_MODES:
        raise SandboxConfigError("network", f"{mode!r} is not a network mode",
                                 "use --network none, sandbox or host")
    dns = check_dns(dns)
    if ip is None:
        return check_without_address(mode, peer, netns, nat, dns)
    if mode == "none":
        raise SandboxConfigError("network", "--network none contradicts --ip",
                                 "drop --ip for a sandbox without network, or --network none")
    if not netns:
        raise SandboxConfigError("netns", "--no-netns shares the host's network, which "
                                 "takes no --ip", "drop --ip, or drop --no-netns")
    address = check_address(ip)
    return dict(network=mode or "sandbox", ip=str(address), peer=str(check_peer(peer, address)),
                netns=True, nat=nat, dns=dns)


def check_without_address(mode, peer, netns, nat, dns) -> dict:
    if mode == "sandbox":
        raise SandboxConfigError("network", "--network sandbox needs the sandbox's address",
                                 "add --ip ADDR, e.g. --ip 10.0.0.2")
    if mode == "host" and netns:
        raise SandboxConfigError("network", "--network host needs --ip ADDR (a namespace of "
                                 "its own) or --no-netns (the host's network)",
                                 "add --ip 10.0.0.2, or --no-netns")
    if not netns and mode != "host":
        raise SandboxConfigError("netns", "--no-netns is allowed only with --network host",
                                 "add --network host, or drop --no-netns")
    for option, given in (("peer", peer is not None), ("dns", bool(dns)), ("nat", not nat)):
        if given:
            name = option_name(option)
            raise SandboxConfigError(option, f"{name} applies only to a sandbox with --ip",
                                     f"add --ip ADDR, or drop {name}")
    return dict(network=mode or "none", ip=None, peer=None, netns=netns, nat=True, dns=())


def check_address(ip: str) -> ipaddress.IPv4Interface:
    """'ADDR[/PREFIX]' -> an IPv4 interface address, usable for a host."""
    text, _, prefix_text = str(ip).partition("/")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise SandboxConfigError("ip", f"{ip!r} is not an IPv4 address",
                                 "write e.g. --ip 10.0.0.2 or --ip 10.0.0.2/24") from None
    if address.version != 4:
        raise SandboxConfigError("ip", f"{ip}: IPv6 addresses are not supported",
                                 "give an IPv4 address, e.g. --ip 10.0.0.2")
    prefix = check_prefix(ip, prefix_text)
    interface = ipaddress.IPv4Interface(f"{address}/{prefix}")
    if (address.is_loopback or address.is_multicast or address.is_unspecified
            or address.is_link_local or address.is_reserved):
        raise SandboxConfigError("ip", f"{address} is a loopback, multicast, link-local or "
                                 "reserved address", "use a private address such as 10.0.0.2")
    check_host_address("ip", address, interface.network)
    return interface


def check_prefix(ip: str, text: str) -> int:
    if not text:
        return DEFAULT_PREFIX
    if not text.isdigit() or not 1 <= int(text) <= 30:
        raise SandboxConfigError("ip", f"{ip}: the prefix /{text} is out of range",
                                 "use a prefix from /1 to /30, e.g. /24 (the default)")
    return int(text)


def check_host_address(field: str, address: ipaddress.IPv4Address,
                       network: ipaddress.IPv4Network) -> None:
    if address == network.network_address:
        raise SandboxConfigError(field, f"{address} is the network address of {network}",
                                 f"use a host address such as {network.network_address + 2}")
    if address == network.broadcast_address:
        raise SandboxConfigError(field, f"{address} is the broadcast address of {network}",
                                 f"use a host address such as {network.network_address + 2}")


def default_peer(address: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
    """runsc do's rule: the last octet plus one, wrapping to 1 after 255."""
    octets = address.packed
    last = octets[3] + 1 if octets[3] < 255 else 1
    return ipaddress.IPv4Address(octets[:3] + bytes([last]))


def check_peer(peer: str | None, interface: ipaddress.IPv4Interface) -> ipaddress.IPv4Address:
    network = interface.network
    if peer is None:
        chosen = default_peer(interface.ip)
        if chosen not in network or chosen in (network.network_address,
                                               network.broadcast_address):
            raise SandboxConfigError("peer", f"the default peer {chosen} (last octet + 1) is "
                                     f"not a host of {network}",
                                     f"give --peer, e.g. --peer {network.network_address + 1}")
        return chosen
    try:
        chosen = ipaddress.IPv4Address(peer)
    except ValueError:
        raise SandboxConfigError("peer", f"{peer!r} is not an IPv4 address",
                                 f"give an address in {network}, e.g. "
                                 f"--peer {network.network_address + 1}") from None
    if chosen == interface.ip:
        raise SandboxConfigError("peer", f"{peer} is the sandbox's own address",
                                 "give the host side another address in the same subnet")
    if chosen not in network:
        raise SandboxConfigError("peer", f"{peer} is outside the sandbox's subnet {network}",
                                 f"give an address in {network}")
    check_host_address("peer", chosen, network)
    return chosen


def check_dns(dns: Iterable[str] | None) -> tuple[str, ...]:
    if dns is None:
        return ()
    if not isinstance(dns, str):
        check_collection("dns", dns, "nameserver addresses, e.g. --dns 1.1.1.1")
    servers = [dns] if isinstance(dns, str) else list(dns)
    for server in servers:
        try:
            if not isinstance(server, str):
                raise ValueError(server)
            ipaddress.ip_address(server)
        except ValueError:
            raise SandboxConfigError("dns", f"{server!r} is not an IP address",
                                     "give a nameserver address, e.g. --dns 1.1.1.1") from None
    return tuple(servers)


def check_hide(hide: Iterable[str] | None) -> tuple[str, ...]:
    """Paths to hide: absolute (relative ones start from the kernel's directory), not /."""
    if hide is None:
        return ()
    if not isinstance(hide, str):
        check_collection("hide", hide, "paths, e.g. --hide ~/.ssh")
    paths = []
    for path in [hide] if isinstance(hide, str) else hide:
        if not isinstance(path, str) or not path or "\0" in path:
            raise SandboxConfigError("hide", f"{path!r} is not a path",
                                     "give a file or directory, e.g. --hide ~/.ssh")
        absolute = os.path.normpath(os.path.join(os.getcwd(), os.path.expanduser(path)))
        if absolute == "/":
            raise SandboxConfigError("hide", "/ cannot be hidden (it is the whole filesystem)",
                                     "hide the directories that matter, e.g. --hide /home")
        if absolute not in paths:
            paths.append(absolute)
    return tuple(paths)


def default_hidden() -> tuple[str, ...]:
    """What a sandbox never sees: the Jupyter runtime directory (kernel connection
    files hold the kernel's signing key), the user's Jupyter config (tokens,
    password hashes), JupyterHub's secrets."""
    from jupyter_core.paths import jupyter_runtime_dir
    home = os.path.expanduser("~")
    return (jupyter_runtime_dir(), os.path.join(home, ".jupyter"), "/etc/jupyterhub",
            "/srv/jupyterhub")


MEMORY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIN_MEMORY = 32 << 20   # below this runsc's own sentry does not fit
MEMORY_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def check_memory(memory: int | str | None) -> int | None:
    """A size such as 512M, 1.5G or 268435456 (bytes); K/M/G/T are powers of 1024."""
    if memory is None:
        return None
    match = MEMORY_SIZE.fullmatch(str(memory).strip()) if not isinstance(memory, bool) else None
    if not match:
        raise SandboxConfigError("memory", f"{memory!r} is not a size",
                                 "write e.g. --memory 512M or --memory 2G")
    size = int(float(match.group(1)) * MEMORY_UNITS[match.group(2).lower()])
    if size < MIN_MEMORY:
        raise SandboxConfigError("memory", f"{memory} is below the {MIN_MEMORY >> 20} MiB "
                                 "that gVisor itself needs", "give at least --memory 32M")
    return size


def check_cpus(cpus: float | str | None) -> float | None:
    return check_number("cpus", cpus, 0.0099, 1024, "a number of CPUs (0.01 to 1024)",
                        "give e.g. --cpus 0.5 or --cpus 2")


def check_pids(pids: int | str | None) -> int | None:
    if pids is None:
        return None
    text = str(pids).strip()
    if isinstance(pids, bool) or not text.isdigit() or not 1 <= int(text) <= 1 << 22:
        raise SandboxConfigError("pids", f"{pids!r} is not a number of processes",
                                 "give e.g. --pids 64")
    return int(text)
