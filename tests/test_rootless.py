"""A normal user's kernel: the same cell runs through runsc's rootless mode.

The test makes a user, gives it a readable copy of the package and of the
venv's libraries (the clone may live under /root, mode 0700), and runs a
%%sandbox cell in a real InteractiveShell as that user, with each runsc build.
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import uuid
from pathlib import Path

import pytest

import sandbox_magic

USER = "sbx-magic-test"
PACKAGE = Path(sandbox_magic.__file__).resolve().parent

CHECK = textwrap.dedent("""
    import json, os, sys
    import sandbox_magic
    from IPython.testing.globalipapp import start_ipython
    from sandbox_magic import ledger
    shell = start_ipython()
    shell.run_line_magic("load_ext", "sandbox_magic")
    probe = sys.argv[2]   # a host path that does not exist
    shell.run_cell_magic("sandbox", "--runsc " + sys.argv[1] + " --result r --out o --no-raise-error",
                         f"id -u; hostname; echo written > {probe} && cat {probe}; exit 3")
    r = shell.user_ns["r"]
    from IPython.core.error import UsageError
    try:
        shell.run_cell_magic("sandbox", "--ip 10.213.70.2 --runsc " + sys.argv[1], "true")
        ip_error = None
    except UsageError as exc:
        ip_error = str(exc)
    shell.run_cell_magic("sandbox", "--network host --no-netns --out net --runsc " + sys.argv[1],
                         "cat /proc/net/dev | wc -l")
    from sandbox_magic.standby import STANDBYS
    STANDBYS.discard()   # the standby kept for a next cell is live, not a leak
    sandbox_magic.wait_for_teardowns()
    print(json.dumps({"out": r.stdout, "exit_code": r.exit_code, "signal": r.signal,
                      "ip_error": ip_error, "host_net_lines": int(shell.user_ns["net"]),
                      "state": ledger.state_root(), "leftovers": ledger.leftovers(),
                      "euid": os.geteuid()}))
""")


@pytest.fixture(scope="module")
def normal_user():
    created = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], check=True)
        created = True
    yield pwd.getpwnam(USER)
    if created:
        subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True)
        subprocess.run(["userdel", USER], capture_output=True)


@pytest.fixture(scope="module")
def readable_install(tmp_path_factory, normal_user):
    """A world-readable copy of the package, its libraries and the runsc builds."""
    base = tmp_path_factory.mktemp("rootless")
    base.chmod(0o755)
    for parent in base.parents:
        if str(parent).startswith("/tmp/pytest"):
            parent.chmod(0o755)
    shutil.copytree(PACKAGE, base / "src" / "sandbox_magic",
                    ignore=shutil.ignore_patterns("__pycache__"))
    site = sysconfig.get_paths()["purelib"]
    copy = subprocess.run(["cp", "-al", site, str(base / "site")], capture_output=True)
    if copy.returncode != 0:
        shutil.copytree(site, base / "site", symlinks=True)
    (base / "check.py").write_text(CHECK)
    subprocess.run(["chmod", "-R", "a+rX", str(base / "src"), str(base / "check.py")], check=True)
    # The user's HOME and TMPDIR (IPython's profile dir, its history file): inside
    # `base`, so that they go with it.
    home = base / "home"
    home.mkdir()
    os.chown(home, normal_user.pw_uid, normal_user.pw_gid)
    yield base
    state = Path(f"/tmp/sandbox-magic-{normal_user.pw_uid}")
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(base)


def test_cell_runs_rootless_as_a_normal_user(readable_install, normal_user, runsc_path):
    runsc_copy = readable_install / f"runsc-{abs(hash(runsc_path))}"
    shutil.copy2(runsc_path, runsc_copy)
    runsc_copy.chmod(0o755)
    home = readable_install / "home"
    probe = f"/tmp/sandbox-magic-rootless-{uuid.uuid4().hex[:8]}"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home), "LANG": "C.UTF-8",
           "PYTHONPATH": f"{readable_install}/src:{readable_install}/site"}
    done = subprocess.run(
        ["su", USER, "-s", "/bin/sh", "-c",
         f"cd {home} && env {' '.join(f'{k}={v}' for k, v in env.items())} "
         f"/usr/bin/python3 {readable_install}/check.py {runsc_copy} {probe}"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["euid"] == normal_user.pw_uid
    assert report["out"].splitlines() == ["0", os.uname().nodename, "written"]
    assert (report["exit_code"], report["signal"]) == (3, None)
    # su leaves XDG_RUNTIME_DIR unset: the private per-uid fallback is used.
    assert report["state"] == f"/tmp/sandbox-magic-{normal_user.pw_uid}"
    assert report["leftovers"] == []
    # Networking with a namespace of its own needs root, and says so; the host's works.
    assert "needs root" in report["ip_error"] and "--ip" in report["ip_error"]
    assert report["host_net_lines"] > 3
    assert not os.path.exists(probe)     # written inside: only in the sandbox's overlay
    # After the process exited, its state root holds no run and no runsc state.
    state = Path(report["state"])
    assert list((state / "runs").iterdir()) == [] and list((state / "runsc").iterdir()) == []
