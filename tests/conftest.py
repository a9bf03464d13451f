"""Shared fixtures. Everything runs for real: runsc, the kernel, the filesystem.

After every test, `no_leftovers` asserts that nothing of ours remains on the
machine (run dirs, runsc state, runsc processes); a leftover fails the test
that made it, and is then cleaned so that the next test starts clean.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sandbox_magic import ledger

REPO = Path(__file__).resolve().parent.parent
STOCK_RUNSC = REPO / ".cache" / "runsc-20221219" / "runsc"


def backports_runsc() -> str:
    path = shutil.which("runsc")
    assert path, "runsc is not installed: run `make test` (scripts/setup.sh --test)"
    return path


RUNSC_BUILDS = {
    "backports": backports_runsc,
    "stock-20221219": lambda: str(STOCK_RUNSC),
}


@pytest.fixture(params=sorted(RUNSC_BUILDS), ids=sorted(RUNSC_BUILDS))
def runsc_path(request) -> str:
    """Each Debian runsc build: the bookworm-backports one and the stock 2022 one."""
    path = RUNSC_BUILDS[request.param]()
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} missing: scripts/setup.sh --test caches the stock runsc")
    return path


def settle() -> None:
    """End the standby (a live sandbox kept for the next cell) and wait for every
    background teardown: what is left after this is a leak."""
    from sandbox_magic.runner import wait_for_teardowns
    from sandbox_magic.standby import STANDBYS
    STANDBYS.discard()
    wait_for_teardowns()


def wait_for_no_leftovers(seconds: float = 3.0) -> list[str]:
    from sandbox_magic.runner import wait_for_teardowns
    from sandbox_magic.standby import STANDBYS
    STANDBYS.discard()   # a standby is a live sandbox of ours, not a leak; end it first
    wait_for_teardowns()
    end = time.monotonic() + seconds
    while True:
        found = ledger.leftovers()
        if not found or time.monotonic() > end:
            return found
        time.sleep(0.05)


def force_clean(found: list[str]) -> None:
    """Remove everything of ours, so that one test's leak does not fail the next."""
    ledger.cleanup(everything=True)


@pytest.fixture(autouse=True)
def no_leftovers():
    before = ledger.leftovers()
    if before:
        force_clean(before)
    yield
    # Teardown is synchronous, but give an orphaned process an instant to die.
    found = wait_for_no_leftovers()
    if found:
        force_clean(found)
    assert not found, "left behind:\n" + "\n".join(found)


@pytest.fixture(scope="session", autouse=True)
def no_temp_files_left():
    """Temp dirs are leaks too: whatever the tests (and the notebooks, kernels,
    servers and users they start) create in the temp dir must be gone at the end.
    pytest's own base temp dir is pytest's to prune (tmp_path_retention_policy)."""
    temp = Path(os.environ.get("TMPDIR", "/tmp"))
    before = set(temp.iterdir())
    yield
    after = {path for path in temp.iterdir() if not path.name.startswith("pytest-of-")}
    assert not after - before, f"left in {temp}: {sorted(map(str, after - before))}"


@pytest.fixture(scope="session")
def ipython_shell():
    from IPython.testing.globalipapp import start_ipython
    shell = start_ipython()
    shell.run_line_magic("load_ext", "sandbox_magic")
    yield shell
    # What IPython does at exit (its temp history file among it), now, while the
    # temp-dir check can still see the result; then not a second time at exit.
    shell.atexit_operations()
    atexit.unregister(shell.atexit_operations)


@pytest.fixture
def shell(ipython_shell):
    """A real InteractiveShell with the extension loaded and default config."""
    magics = next(m for m in ipython_shell.configurables if type(m).__name__ == "SandboxMagics")
    saved = {name: getattr(magics, name) for name in magics.trait_names() if
             magics.trait_metadata(name, "config")}
    yield ipython_shell
    for name, value in saved.items():
        setattr(magics, name, value)


@pytest.fixture
def kernel():
    """A real ipykernel (through jupyter_client) with the extension loaded."""
    from jupyter_client.manager import start_new_kernel
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        reply = client.execute_interactive("%load_ext sandbox_magic", timeout=60)
        assert reply["content"]["status"] == "ok"
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)   # graceful: the kernel ends its standby at exit
