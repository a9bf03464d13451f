"""`sandbox-magic doctor`: one line per fact that decides whether a cell can run here."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from .errors import SandboxError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None      # True fine, False blocks a cell, None worth knowing
    detail: str
    hint: str = ""

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "note"}[self.ok]
        return f"{mark} {self.name:<10} {self.detail}" + (f"  → {self.hint}" if self.hint else "")


def checks() -> list[Check]:
    from .runsc import INSTALL_HINT, locate
    try:
        binary = locate()
    except SandboxError as exc:
        return [Check("runsc", False, str(exc).split(";")[0], INSTALL_HINT), *host_checks(None)]
    found = [Check("runsc", True, f"{binary.path}, version {binary.version}")]
    if binary.breaks_stat:
        found.append(Check("build", None, "Debian 12's stock build: `ls` and `stat` fail inside "
                           "the sandbox (statx bug)",
                           "apt-get install -t bookworm-backports runsc"))
    found.append(Check("platform", True, binary.platform + " (runsc's default, left alone)"))
    return found + host_checks(binary) + [sandbox_check(binary)]


def host_checks(binary) -> list[Check]:
    kernel = os.uname().release
    found = [Check("kernel", True, kernel)]
    if binary is not None:
        if binary.needs_proc_sys_net_workaround(kernel):
            found.append(Check("netstack", True, "gVisor #10704 applies to this runsc on this "
                               "kernel: the /proc/sys/net work-around is used automatically"))
        else:
            found.append(Check("netstack", True, "no work-around needed"))
    if os.geteuid() == 0:
        found.append(Check("user", True, "root: every option works"))
    else:
        found.append(Check("user", None, f"uid {os.geteuid()}: cells run in runsc's rootless "
                           "mode; --ip needs root", "run the kernel as root for --ip"))
    iptables = shutil.which("iptables")
    if iptables:
        version = subprocess.run([iptables, "--version"], capture_output=True, text=True)
        found.append(Check("iptables", True, f"{iptables} ({version.stdout.strip()}): NAT for --ip"))
    else:
        found.append(Check("iptables", None, "not found: --ip works only with --no-nat",
                           "apt-get install iptables"))
    nft = shutil.which("nft")
    found.append(Check("nft", None if not nft else True, nft or "not found (not needed)"))
    return found


def sandbox_check(binary) -> Check:
    from .runner import run
    try:
        result = run("true", runsc=binary.path)
    except SandboxError as exc:
        return Check("sandbox", False, f"a sandbox cannot run: {exc}")
    if not result.ok:
        return Check("sandbox", False, f"`true` in a sandbox: {result.status_text()}: "
                     f"{result.stderr.strip()[:200]}")
    return Check("sandbox", True, f"`true` ran in a sandbox in {result.duration * 1000:.0f} ms")
