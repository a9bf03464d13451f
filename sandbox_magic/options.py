"""The options of a sandboxed run, declared once for the magic and the CLI.

Each entry is an argparse argument. The magic applies them with IPython's
`magic_arguments`; the CLI adds them to its own parser. Defaults are None so
that the magic can tell "not given" from a value and fall back to its
traitlets configuration.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import SandboxConfig


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
    Option(("--ip",), dict(metavar="ADDR[/PREFIX]", default=None,
           help="Give the sandbox its own network namespace with this IPv4 address "
                "(prefix default 24), a veth pair to the host and NAT. Needs root.")),
    Option(("--peer",), dict(metavar="ADDR", default=None,
           help="The host side of the veth (default: the last octet of --ip plus one).")),
    Option(("--network",), dict(choices=("none", "sandbox", "host"), default=None,
           help="none: loopback only (default without --ip); sandbox: gVisor's own "
                "network stack (default with --ip); host: gVisor's hostinet, in the "
                "sandbox's namespace, or the host's with --no-netns.")),
    Option(("--no-netns",), dict(action="store_true", default=False,
           help="Use the host's network namespace (only with --network host).")),
    Option(("--no-nat",), dict(action="store_true", default=False,
           help="Host-only networking: no MASQUERADE/FORWARD rules.")),
    Option(("--hide",), dict(metavar="PATH", action="append", default=[],
           help="Make PATH appear empty inside the sandbox (repeatable), besides the "
                "Jupyter runtime directory, ~/.jupyter, JupyterHub's files and "
                "SandboxMagics.hidden_paths.")),
    Option(("--memory",), dict(metavar="SIZE", default=None,
           help="Memory limit of the sandbox, e.g. 512M or 2G; exceeding it kills the "
                "sandbox (status: killed, memory limit reached).")),
    Option(("--cpus",), dict(metavar="N", default=None,
           help="CPU time limit, in CPUs (e.g. 0.5: half of one CPU).")),
    Option(("--pids",), dict(metavar="N", default=None,
           help="At most N processes inside (RLIMIT_NPROC; the script runs without "
                "CAP_SYS_ADMIN and CAP_SYS_RESOURCE, which would lift it).")),
    Option(("--dns",), dict(metavar="ADDR", action="append", default=[],
           help="Nameserver for the sandbox's /etc/resolv.conf (repeatable; default: the "
                "host's non-loopback nameservers, else 8.8.8.8).")),
)


def run_kwargs(args: argparse.Namespace, defaults: dict | None = None) -> dict:
    """The keyword arguments of make_config()/run() from parsed RUN_OPTIONS;
    `defaults` fill in options that were not given (the magic's traitlets)."""
    defaults = defaults or {}

    def given(name):
        value = getattr(args, name)
        return defaults.get(name) if value is None else value

    return dict(
        root=given("root") or "/", cwd=args.cwd,
        env=[*defaults.get("env", []), *args.env],
        env_all=bool(given("env_all")), hostname=given("hostname"),
        timeout=given("timeout"), runsc=given("runsc"),
        network=args.network, ip=args.ip, peer=args.peer, netns=not args.no_netns,
        nat=not args.no_nat, dns=args.dns or None,
        hide=[*defaults.get("hide", []), *args.hide] or None,
        memory=given("memory"), cpus=given("cpus"), pids=given("pids"))

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
    Option(("--session",), dict(metavar="NAME", default=None,
           help="Run the cell in the session NAME (see %%sandbox start): files stay from "
                "cell to cell. Only --timeout and the output options go with it.")),
)


def magic_line(config: "SandboxConfig") -> str:
    """The `%%sandbox ...` line that gives `config` (options left at their default
    are left out; values are quoted so that the magic's shell-like split reads them back)."""
    from .config import DEFAULT_PREFIX, default_peer
    words = []

    def add(flag, value=None):
        words.append(flag if value is None else f"{flag} {shlex.quote(str(value))}")

    if config.root != "/":
        add("--root", config.root)
    if config.cwd != os.getcwd():
        add("--cwd", config.cwd)
    for name, value in config.env:
        add("-e", f"{name}={value}")
    if config.env_all:
        add("--env-all")
    if config.hostname != socket.gethostname():
        add("--hostname", config.hostname)
    if config.timeout is not None:
        add("--timeout", f"{config.timeout:g}")
    if config.runsc:
        add("--runsc", config.runsc)
    for path in config.hide:
        add("--hide", path)
    if config.memory is not None:
        add("--memory", f"{config.memory // (1 << 20)}M" if config.memory % (1 << 20) == 0
            else config.memory)
    if config.cpus is not None:
        add("--cpus", f"{config.cpus:g}")
    if config.pids is not None:
        add("--pids", config.pids)
    if config.ip:
        interface = config.address
        prefix = "" if interface.network.prefixlen == DEFAULT_PREFIX else \
            f"/{interface.network.prefixlen}"
        add("--ip", f"{interface.ip}{prefix}")
        if config.peer != str(default_peer(interface.ip)):
            add("--peer", config.peer)
        if config.network != "sandbox":
            add("--network", config.network)
        if not config.nat:
            add("--no-nat")
        for server in config.dns:
            add("--dns", server)
    elif config.network == "host":
        add("--network", "host")
        add("--no-netns")
    return " ".join(["%%sandbox"] + words)
