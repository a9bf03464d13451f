"""The sandbox's own network: a plan (pure) and its netlink/NAT apply + teardown.

What `runsc do` does with ~13 `ip`/`sysctl`/`iptables` processes, done
in-process: a network namespace made by unshare(2) in a thread and pinned by a
bind mount, a veth pair whose sandbox end is created inside it, addresses,
links and the default route through netlink (pyroute2), and NAT as one
`iptables-restore --noflush` batch.

Every resource is named after the run (`sbx-<hex>` namespace, `sbx<hex>-h` /
`sbx<hex>-s` veth, iptables comment `sandbox-magic sbx-<hex>`), and the whole
plan is written to the run's ledger before the first one is created, so that
teardown, and `cleanup` after an owner died, can remove exactly what is ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from .config import SandboxConfig
from .errors import SandboxConfigError, SandboxError

NETNS_DIR = "/run/netns"
FALLBACK_NAMESERVER = "8.8.8.8"   # what `runsc do` writes
COMMENT_TAG = "sandbox-magic"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
NETLINK_ROUTE = 0
WORKER_POLL = 0.1
TEARDOWN_WAIT = 10.0   # seconds to wait for an ended sandbox's network to go

# Tests set this to a callable(step_name) that raises, to inject a failure
# before a set-up step runs. None in normal use.
before_step: Callable[[str], None] | None = None

SETUP_STEPS = ("netns", "veth", "host_side", "sandbox_side", "ip_forward", "nat")


@dataclass(frozen=True)
class NetworkPlan:
    """Every name and address of one sandbox's network, decided before anything exists."""

    mode: str                       # none | sandbox | host
    container_id: str
    address: str | None = None      # "10.0.0.2"
    prefix: int | None = None
    peer: str | None = None
    namespace: str | None = None    # netns name under /run/netns; None: runsc makes one, or host
    veth_host: str | None = None
    veth_sandbox: str | None = None
    nat: bool = False
    nat_device: str | None = None   # the host's default-route device
    nameservers: tuple[str, ...] = ()
    hostname: str = ""

    @property
    def namespace_path(self) -> str | None:
        return os.path.join(NETNS_DIR, self.namespace) if self.namespace else None

    @property
    def subnet(self) -> ipaddress.IPv4Network | None:
        if self.address is None:
            return None
        return ipaddress.IPv4Interface(f"{self.address}/{self.prefix}").network

    @property
    def comment(self) -> str:
        return f"{COMMENT_TAG} {self.container_id}"

    @property
    def has_veth(self) -> bool:
        return self.address is not None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["nameservers"] = list(self.nameservers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkPlan":
        return cls(**{**data, "nameservers": tuple(data.get("nameservers", ()))})


# ---------------------------------------------------------------- pure planning

def plan_network(config: SandboxConfig, container_id: str, *, default_device: str | None,
                 host_nameservers: list[str]) -> NetworkPlan:
    """The plan for `config`; the host facts are passed in, so this stays pure."""
    if config.ip is None:
        return NetworkPlan(mode=config.network, container_id=container_id,
                           hostname=config.hostname)
    interface = config.address
    suffix = container_id.removeprefix("sbx-")
    return NetworkPlan(
        mode=config.network, container_id=container_id,
        address=str(interface.ip), prefix=interface.network.prefixlen, peer=config.peer,
        namespace=container_id, veth_host=f"sbx{suffix}-h", veth_sandbox=f"sbx{suffix}-s",
        nat=config.nat and default_device is not None, nat_device=default_device,
        nameservers=config.dns or tuple(host_nameservers) or (FALLBACK_NAMESERVER,),
        hostname=config.hostname)


def nat_rules(plan: NetworkPlan) -> list[tuple[str, str]]:
    """(table, rule) pairs: MASQUERADE the sandbox's traffic out of the default-route
    device, and let it through FORWARD (replies only, inbound)."""
    tag = f'-m comment --comment "{plan.comment}"'
    return [
        ("nat", f"POSTROUTING -s {plan.address}/32 -o {plan.nat_device} {tag} -j MASQUERADE"),
        ("filter", f"FORWARD -i {plan.veth_host} -o {plan.nat_device} {tag} -j ACCEPT"),
        ("filter", f"FORWARD -i {plan.nat_device} -o {plan.veth_host} -m conntrack "
                   f"--ctstate RELATED,ESTABLISHED {tag} -j ACCEPT"),
    ]


def iptables_batch(rules: list[tuple[str, str]], action: str) -> str:
    """An iptables-restore input that applies (-A) or removes (-D) `rules` at once."""
    lines = []
    for table in dict.fromkeys(table for table, _ in rules):
        lines.append(f"*{table}")
        lines += [f"{action} {rule}" for t, rule in rules if t == table]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def etc_files(plan: NetworkPlan) -> dict[str, str]:
    """/etc/hosts, /etc/hostname and /etc/resolv.conf for the sandbox, as `runsc do` writes them."""
    return {
        "/etc/hosts": (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                       f"{plan.address}\t{plan.hostname}\n"),
        "/etc/hostname": f"{plan.hostname}\n",
        "/etc/resolv.conf": "".join(f"nameserver {ns}\n" for ns in plan.nameservers),
    }


def check_free(plan: NetworkPlan, host_routes: list[tuple[ipaddress.IPv4Network, str]],
               live_plans: list[NetworkPlan]) -> None:
    """Raise SandboxConfigError if the plan's address or subnet is taken on this host."""
    subnet = plan.subnet
    for other in live_plans:
        if other.address == plan.address:
            raise SandboxConfigError("ip", f"{plan.address} is in use by another live sandbox "
                                     f"({other.container_id})",
                                     "give another address, or wait for that cell to end")
        if other.subnet is not None and other.subnet.overlaps(subnet):
            raise SandboxConfigError("ip", f"{subnet} overlaps the subnet {other.subnet} of "
                                     f"the live sandbox {other.container_id}",
                                     "give an address in another subnet, e.g. "
                                     f"{next_free_example(subnet)}")
    for network, device in host_routes:
        if network.prefixlen > 0 and network.overlaps(subnet):
            hint = (" (a sandbox's leftover: run `sandbox-magic cleanup`)"
                    if device.startswith("sbx") else "")
            raise SandboxConfigError("ip", f"{subnet} overlaps {network}, routed on the host "
                                     f"via {device}{hint}",
                                     "give an address in a subnet the host does not use, e.g. "
                                     f"{next_free_example(subnet)}")


def next_free_example(subnet: ipaddress.IPv4Network) -> str:
    following = ipaddress.IPv4Network((int(subnet.network_address) + subnet.num_addresses)
                                      % 2**32 // subnet.num_addresses * subnet.num_addresses
                                      ).supernet(new_prefix=subnet.prefixlen)
    return f"--ip {following.network_address + 2}/{subnet.prefixlen}"


# ---------------------------------------------------------------- host facts

def host_routes() -> list[tuple[ipaddress.IPv4Network, str]]:
    """IPv4 routes of the host's main table, as (network, device name)."""
    def read(ipr):
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        return [(ipaddress.IPv4Network(f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"),
                 names.get(r.get_attr("RTA_OIF"), "?"))
                for r in ipr.get_routes(family=socket.AF_INET, table=254)]
    return with_iproute(read)


def default_route_device(routes: list[tuple[ipaddress.IPv4Network, str]]) -> str | None:
    return next((device for network, device in routes if network.prefixlen == 0), None)


def host_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    """The host's nameservers that a sandbox can reach (not loopback ones)."""
    servers = []
    try:
        with open(path) as fh:
            for line in fh:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    with contextlib.suppress(ValueError):
                        if not ipaddress.ip_address(words[1]).is_loopback:
                            servers.append(words[1])
    except OSError:
        pass
    return servers


# ---------------------------------------------------------------- reservations

@contextlib.contextmanager
def host_lock(state: str, name: str) -> Iterator[None]:
    """An exclusive lock shared by every process using this state root."""
    fd = os.open(os.path.join(state, name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def prepare(config: SandboxConfig, container_id: str, state: str, ledger_file: str,
            live_plans: Callable[[], list[tuple[NetworkPlan, bool]]]) -> NetworkPlan:
    """Plan the network, check that its address is free, and record the plan in the
    run's ledger: atomically with respect to other sandboxes (threads or processes)
    doing the same, and before anything is created.

    A sandbox whose cell has ended but whose network is still being removed does
    not make the address "in use": we wait for its teardown instead.
    """
    if config.ip is None:
        plan = plan_network(config, container_id, default_device=None, host_nameservers=[])
        write_json(ledger_file, plan.to_dict())
        return plan
    give_up = time.monotonic() + TEARDOWN_WAIT
    while True:
        with host_lock(state, "network.lock"):
            routes = host_routes()
            plan = plan_network(config, container_id, default_device=default_route_device(routes),
                                host_nameservers=host_nameservers())
            live = live_plans()
            ending = [p for p, tearing_down in live if tearing_down and p.subnet is not None
                      and p.subnet.overlaps(plan.subnet)]
            if not ending or time.monotonic() > give_up:
                check_free(plan, routes, [p for p, _ in live])
                write_json(ledger_file, plan.to_dict())
                return plan
        time.sleep(0.01)


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


# ---------------------------------------------------------------- apply

def apply(plan: NetworkPlan, state: str) -> None:
    """Create the plan's namespace, veth, addresses, routes, forwarding and NAT."""
    if not plan.has_veth:
        return
    inside_fd = off_loop(create_namespace, plan)
    try:
        off_loop(configure_links, plan, inside_fd)
    finally:
        os.close(inside_fd)
    if plan.nat:
        step("ip_forward")
        acquire_forwarding(state, plan.container_id)
        step("nat")
        run_iptables_restore(iptables_batch(nat_rules(plan), "-A"))


def step(name: str) -> None:
    if before_step is not None:
        before_step(name)


def create_namespace(plan: NetworkPlan) -> int:
    """Make a network namespace in this (worker) thread, pin it at /run/netns/<name>,
    and return a netlink socket inside it. unshare(CLONE_NEWNET) moves only the
    calling thread, so the kernel's other threads are unaffected, and no process
    is forked (pyroute2's NetNS forks a helper, `ip netns add` is a process)."""
    step("netns")
    libc = ctypes.CDLL(None, use_errno=True)
    os.makedirs(NETNS_DIR, exist_ok=True)
    path = plan.namespace_path
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
    if libc.mount(b"/proc/thread-self/ns/net", path.encode(), None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), f"bind-mounting the namespace on {path} failed")
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    return sock.detach()


def configure_links(plan: NetworkPlan, inside_fd: int) -> None:
    from pyroute2 import IPRoute
    step("veth")
    with IPRoute() as host:
        netns_fd = os.open(plan.namespace_path, os.O_RDONLY)
        try:
            host.link("add", ifname=plan.veth_host, kind="veth",
                      peer={"ifname": plan.veth_sandbox, "net_ns_fd": netns_fd})
        finally:
            os.close(netns_fd)
        step("host_side")
        index = host.link_lookup(ifname=plan.veth_host)[0]
        host.addr("add", index=index, address=plan.peer, prefixlen=plan.prefix)
        host.link("set", index=index, state="up")
    step("sandbox_side")
    with IPRoute(fileno=os.dup(inside_fd)) as inside:
        index = inside.link_lookup(ifname=plan.veth_sandbox)[0]
        inside.addr("add", index=index, address=plan.address, prefixlen=plan.prefix)
        inside.link("set", index=index, state="up")
        inside.link("set", index=inside.link_lookup(ifname="lo")[0], state="up")
        inside.route("add", dst="default", gateway=plan.peer)


def run_iptables_restore(batch: str) -> None:
    # One iptables-restore for all rules: one process, one xtables lock, all or
    # nothing. iptables (not nft directly) because the rules must sit in the
    # same FORWARD chain as the host's own (Docker, ufw): an ACCEPT in a table
    # of our own would not override a DROP policy there.
    done = subprocess.run(["iptables-restore", "--noflush", "-w", "5"], input=batch,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SandboxError(f"iptables-restore failed: {done.stderr.strip()}")


# ---------------------------------------------------------------- teardown

def teardown(plan: NetworkPlan, state: str,
             on_released: Callable[[], None] | None = None) -> None:
    """Remove whatever of the plan exists; idempotent, never touches anything else.

    The veth and namespace go first: once they are gone the address and subnet
    are free again (`on_released` is told), while the slower NAT removal
    (~25 ms with iptables-nft) still runs.
    """
    if not plan.has_veth:
        return
    errors = []
    for action in (delete_veth, delete_namespace, remove_nat, release_forwarding_of):
        try:
            action(plan, state)
        except Exception as exc:  # keep going: later steps must still run
            errors.append(f"{action.__name__}: {exc}")
        if action is delete_namespace and on_released is not None:
            on_released()
    if errors:
        raise SandboxError("network teardown incomplete: " + "; ".join(errors))


def remove_nat(plan: NetworkPlan, state: str) -> None:
    if not plan.nat_device:
        return
    rules = nat_rules(plan)
    done = subprocess.run(["iptables-restore", "--noflush", "-w", "5"],
                          input=iptables_batch(rules, "-D"), capture_output=True, text=True)
    if done.returncode != 0:
        # Some rule was never added (failure half-way): remove the others one by one.
        for table, rule in rules:
            delete_rule(table, rule)


def delete_rule(table: str, rule: str) -> None:
    import shlex
    subprocess.run(["iptables", "-w", "5", "-t", table, "-D", *shlex.split(rule)],
                   capture_output=True)


def release_forwarding_of(plan: NetworkPlan, state: str) -> None:
    release_forwarding(state, plan.container_id)


def delete_veth(plan: NetworkPlan, state: str) -> None:
    """Delete the pair explicitly: waiting for the kernel to free the namespace
    would leave the host side (and its route) behind for a moment."""
    def delete(ipr):
        for index in ipr.link_lookup(ifname=plan.veth_host):
            ipr.link("del", index=index)
    with_iproute(delete)


def delete_namespace(plan: NetworkPlan, state: str) -> None:
    unpin_namespace(plan.namespace_path)


def unpin_namespace(path: str) -> None:
    """Drop our mount of a namespace; the kernel frees it once runsc is gone too."""
    if not os.path.exists(path):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(path.encode(), MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# ---------------------------------------------------------------- ip_forward

def acquire_forwarding(state: str, holder: str) -> None:
    """Turn net.ipv4.ip_forward on for `holder`, remembering the value before the first."""
    with host_lock(state, "ip_forward.lock"):
        record = read_forwarding(state)
        if not record["holders"]:
            record["previous"] = read_file(IP_FORWARD).strip()
        record["holders"] = sorted(set(record["holders"]) | {holder})
        write_json(forwarding_file(state), record)
        write_file(IP_FORWARD, "1")


def release_forwarding(state: str, holder: str) -> None:
    """Drop `holder`; when no sandbox needs forwarding any more, restore the old value."""
    with host_lock(state, "ip_forward.lock"):
        record = read_forwarding(state)
        if holder not in record["holders"]:
            return
        record["holders"].remove(holder)
        if record["holders"]:
            write_json(forwarding_file(state), record)
            return
        if record.get("previous") is not None:
            write_file(IP_FORWARD, record["previous"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(forwarding_file(state))


def forwarding_file(state: str) -> str:
    return os.path.join(state, "ip_forward.json")


def read_forwarding(state: str) -> dict:
    try:
        with open(forwarding_file(state)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {"previous": None, "holders": []}


def read_file(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def write_file(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


# ---------------------------------------------------------------- leftovers

def our_namespaces() -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith("sbx-"))
    except FileNotFoundError:
        return []


def our_links() -> list[str]:
    return with_iproute(lambda ipr: sorted(
        name for name in (link.get_attr("IFLA_IFNAME") for link in ipr.get_links())
        if name and name.startswith("sbx")))


def our_iptables_rules() -> list[str]:
    """Rules tagged as ours, as `iptables-save` prints them (with their table)."""
    try:
        dump = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    rules, table = [], None
    for line in dump.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A") and f'"{COMMENT_TAG} sbx-' in line:
            rules.append(f"{table} {line}")
    return rules


# ---------------------------------------------------------------- threads

def with_iproute(action: Callable):
    """Run `action(IPRoute())` off the caller's thread (see off_loop)."""
    def job():
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            return action(ipr)
    return off_loop(job)


def off_loop(function: Callable, *args):
    """Run `function` in a fresh thread and return its result.

    pyroute2's synchronous API runs an asyncio loop of its own, which fails
    inside ipykernel's running loop; a thread has no loop. The caller waits in
    short slices so that a SIGINT is seen, but lets the worker finish before
    raising it: the worker's resources must be known to the teardown.
    """
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="sandbox-magic-netlink", daemon=True)
    worker.start()
    interrupted = False
    while worker.is_alive():
        try:
            worker.join(WORKER_POLL)
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def remove_orphans(state: str) -> list[str]:
    """Remove every tagged network resource (for `cleanup --all`)."""
    import shlex
    removed = []
    for rule in our_iptables_rules():
        table, spec = rule.split(" ", 1)
        subprocess.run(["iptables", "-w", "5", "-t", table, "-D", *shlex.split(spec)[1:]],
                       capture_output=True)
        removed.append(f"iptables {rule}")
    for name in our_links():
        with contextlib.suppress(Exception):
            with_iproute(lambda ipr, name=name: [ipr.link("del", index=i)
                                                  for i in ipr.link_lookup(ifname=name)])
        removed.append(f"link {name}")
    for name in our_namespaces():
        unpin_namespace(os.path.join(NETNS_DIR, name))
        removed.append(f"netns {name}")
    for holder in read_forwarding(state)["holders"]:
        release_forwarding(state, holder)
        removed.append(f"ip_forward holder {holder}")
    return removed
