"""Faults injected for real: processes killed mid-cell, a full disk under the state
root. In each case the cell ends with a clear error or status, the caller (the
kernel) carries on, and nothing is left (the autouse fixture checks)."""

import os
import signal
import subprocess
import threading
import time

import pytest

from sandbox_magic import SandboxError, ledger, run


def kill_when_running(role: str, delay: float = 0.7) -> threading.Thread:
    """SIGKILL the first runsc process of `role` (sandbox or gofer) of ours."""
    def killer():
        time.sleep(delay)
        root = ledger.runsc_root(ledger.state_root())
        for pid in ledger.processes_of(root):
            command = ledger.command_of(pid)
            if command.startswith(f"runsc-{role}"):
                os.kill(pid, signal.SIGKILL)
                return
    thread = threading.Thread(target=killer)
    thread.start()
    return thread


@pytest.mark.parametrize("role", ["sandbox", "gofer"])
def test_runsc_process_killed_mid_cell(role):
    killer = kill_when_running(role)
    start = time.monotonic()
    try:
        result = run("echo started; sleep 20; echo never", standby=False)
    except SandboxError as exc:
        assert "runsc" in str(exc)           # runsc's own failure, not a fake status
    else:
        assert not result.ok and "never" not in result.stdout
    killer.join()
    assert time.monotonic() - start < 15
    assert run("echo alive", standby=False).stdout == "alive\n"   # the caller carries on


@pytest.fixture
def tiny_state(tmp_path, monkeypatch):
    """A 256 KiB tmpfs as the state root: the disk fills up during the cell."""
    mount = tmp_path / "state"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=700", "tmpfs", str(mount)],
                   check=True)
    monkeypatch.setenv(ledger.STATE_ENV, str(mount))
    yield mount
    monkeypatch.delenv(ledger.STATE_ENV)
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_under_the_state_root(tiny_state):
    with pytest.raises(SandboxError, match="No space left|no space"):
        run("head -c 2000000 /dev/zero", standby=False)
    assert ledger.leftovers(str(tiny_state)) == []
    assert os.listdir(tiny_state / "runs") == []
    small = run("echo fits", standby=False)   # once the big output is gone, cells run again
    assert small.stdout == "fits\n"


def test_kernel_killed_mid_cell_then_cleanup(kernel):
    """A real kernel running a network cell is SIGKILLed: its sandbox, network and files
    outlive it until `sandbox-magic cleanup`, which removes them all."""
    import sys
    manager, client = kernel
    killed = []

    def kill_kernel_when_started(message):
        if not killed and message["msg_type"] == "stream" and \
                "started" in message["content"]["text"]:
            killed.append(True)
            os.kill(manager.provisioner.process.pid, signal.SIGKILL)

    with pytest.raises(TimeoutError):   # no reply ever comes: the kernel is dead
        client.execute_interactive("%%sandbox --ip 10.213.131.2\necho started\nsleep 60",
                                   timeout=15, output_hook=kill_kernel_when_started)
    assert killed
    time.sleep(0.5)
    assert any(item.startswith("netns") for item in ledger.leftovers())
    done = subprocess.run([sys.executable, "-m", "sandbox_magic", "cleanup"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "removed run sbx-" in done.stdout
    assert ledger.leftovers() == []
