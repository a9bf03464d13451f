"""Warm standbys and sessions, for real."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from IPython.core.error import UsageError

from sandbox_magic import Session, SandboxConfigError, ledger, run
from sandbox_magic.standby import STANDBYS
from tests.conftest import settle

PROBE = """echo "pid=$$ ppid=$PPID cwd=$(pwd) host=$(hostname)"
cat /proc/1/cmdline | tr '\\0' ' '; echo
read line; echo "read status $? [$line]"
echo "HOME=$HOME X=$X how=$how"
ls /tmp/standby-probe 2>&1
echo written > /tmp/standby-probe
echo to-stderr >&2
exit 7"""


def wait_for_standby(seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while STANDBYS.count() == 0 and time.monotonic() < end:
        time.sleep(0.02)
    assert STANDBYS.count() == 1, "no standby was booted"


def outcome(result):
    return (result.stdout, result.stderr, result.exit_code, result.signal, result.timed_out)


@pytest.mark.parametrize("script", [PROBE, "kill -KILL $$", "#!/usr/bin/env python3\n"
                                    "import os, sys\nprint(os.getpid(), sys.argv, os.getcwd())"])
def test_results_identical_with_and_without_standby(script, runsc_path):
    # `how`: the name a waiting init might use for its own variable.
    options = dict(cwd="/usr", hostname="same", env=["X=1", "how=user's"], runsc=runsc_path)
    cold = run(script, standby=False, **options)
    run("true", **options)              # leaves a standby for this configuration
    wait_for_standby()
    warm = run(script, **options)
    assert warm.warm and not cold.warm
    assert outcome(warm) == outcome(cold)
    assert warm.spec["process"] == cold.spec["process"]


def test_a_standby_serves_one_cell_and_never_shows_state():
    run("true")
    wait_for_standby()
    first = run("echo one > /tmp/standby-state; cat /tmp/standby-state")
    wait_for_standby()
    second = run("cat /tmp/standby-state")
    assert first.warm and second.warm and first.container_id != second.container_id
    assert first.stdout == "one\n" and second.exit_code != 0


def test_another_configuration_discards_the_standby():
    run("true", hostname="first")
    wait_for_standby()
    result = run("hostname", hostname="second")
    assert not result.warm and result.stdout == "second\n"


def test_standby_can_be_turned_off(shell):
    run("true")
    wait_for_standby()
    run("true", standby=False)           # discards the waiting one, schedules none
    assert STANDBYS.count() == 0 and STANDBYS.boots_in_flight() == 0
    shell.run_line_magic("config", "SandboxMagics.standby = False")
    shell.run_cell_magic("sandbox", "--out o", "true")
    assert STANDBYS.count() == 0 and STANDBYS.boots_in_flight() == 0


def test_network_standby_is_served_identically():
    options = dict(ip="10.213.110.2", hostname="netwarm")
    cold = run("cat /etc/hosts; cat /proc/net/route | wc -l", standby=False, **options)
    run("true", **options)
    wait_for_standby()
    warm = run("cat /etc/hosts; cat /proc/net/route | wc -l", **options)
    assert warm.warm and outcome(warm) == outcome(cold)


def test_percent_sandbox_list_counts_standbys_and_sessions(shell, capsys):
    run("true")
    wait_for_standby()
    with Session("listed"):
        shell.run_line_magic("sandbox", "list")
    text = capsys.readouterr().out
    assert "session listed: sbx-" in text and "standby sandboxes: 1" in text


DIES = """
import os, signal, time, sandbox_magic
from sandbox_magic.standby import STANDBYS
sandbox_magic.run("true")
while not STANDBYS.count():
    time.sleep(0.02)
s = sandbox_magic.Session("doomed")
print("ready", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_cleanup_removes_standbys_and_sessions_of_a_dead_kernel():
    done = subprocess.run([sys.executable, "-c", DIES], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout == "ready\n" and done.returncode == -9
    time.sleep(0.5)
    removed = ledger.cleanup()
    assert len([item for item in removed if item.startswith("run ")]) == 2, removed
    assert ledger.leftovers() == []


EXITS = """
import sandbox_magic
sandbox_magic.run("true", ip="10.213.111.2")
s = sandbox_magic.Session("left-open", ip="10.213.112.2")
s.run("echo hi")
print("exiting", flush=True)
"""


def test_exit_ends_standbys_and_sessions():
    done = subprocess.run([sys.executable, "-c", EXITS], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "exiting" in done.stdout, done.stderr
    assert ledger.leftovers() == []


# ---------------------------------------------------------------- sessions

def test_session_keeps_files_and_identity(runsc_path):
    with Session("lab", hostname="labbox", ip="10.213.113.2", runsc=runsc_path) as session:
        first = session.run("echo kept > /root/notes; hostname")
        second = session.run("cat /root/notes; cat /etc/hosts | tail -1")
        assert first.ok and first.stdout == "labbox\n"
        assert second.stdout == "kept\n10.213.113.2\tlabbox\n"
        assert first.container_id == second.container_id == session.container_id
        assert second.session == "lab" and second.network.address == "10.213.113.2"
        # Each result's spec is the session's, running that cell's script.
        assert first.spec["process"]["args"][-1] == "/.sandbox-magic/cell-1"
        assert second.spec["process"]["args"][-1] == "/.sandbox-magic/cell-2"
        assert first.spec["hostname"] == "labbox"
    assert not os.path.exists("/root/notes")


def test_session_status_timeout_and_stop_kill_the_cell_not_the_session():
    with Session("st") as session:
        assert session.run("exit 137").exit_code == 137
        assert session.run("kill -KILL $$").signal == signal.SIGKILL
        timed = session.run("echo started; sleep 30 & sleep 20", timeout=1)
        assert timed.timed_out and timed.stdout == "started\n"
        stop = threading.Event()
        threading.Timer(1.0, stop.set).start()
        stopped = session.run("trap 'echo got INT; exit 3' INT; sleep 30 & wait", stop=stop)
        assert stopped.stopped and "got INT" in stopped.stdout
        survivors = session.run("cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
        assert survivors.ok and "sleep" not in survivors.stdout   # the cells' children too
        assert "read _" in survivors.stdout                       # the session's init lives


def test_session_interrupt_kills_the_cell_not_the_session():
    with Session("intr") as session:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            session.run("echo x > /tmp/still-here; sleep 30")
        assert time.monotonic() - start < 3.5
        assert session.run("cat /tmp/still-here").stdout == "x\n"


def test_session_streams_live():
    arrivals = []
    with Session("live") as session:
        start = time.monotonic()
        session.run("echo first; sleep 2; echo second",
                    on_stdout=lambda text: arrivals.append((time.monotonic() - start, text)))
    first = next(at for at, text in arrivals if "first" in text)
    second = next(at for at, text in arrivals if "second" in text)
    assert second - first >= 1.5


def test_session_names_are_unique_and_checked():
    with Session("dup"):
        with pytest.raises(SandboxConfigError, match="already running"):
            Session("dup")
    with pytest.raises(SandboxConfigError, match="not a session name"):
        Session("bad name")


def test_session_magics(shell, capsys):
    shell.run_line_magic("sandbox", "start m1 --hostname magichost -e A=1")
    try:
        shell.run_cell_magic("sandbox", "--session m1 --out o", "echo $A > /tmp/m; hostname")
        assert shell.user_ns["o"] == "magichost\n"
        shell.run_cell_magic("sandbox", "--session m1 --out o --timeout 5", "cat /tmp/m")
        assert shell.user_ns["o"] == "1\n"
        with pytest.raises(UsageError, match="set by %sandbox start"):
            shell.run_cell_magic("sandbox", "--session m1 --hostname x", "true")
        with pytest.raises(UsageError, match="no session named nope"):
            shell.run_cell_magic("sandbox", "--session nope", "true")
    finally:
        shell.run_line_magic("sandbox", "stop m1")
    assert "session m1 stopped" in capsys.readouterr().out
    with pytest.raises(UsageError, match="no session named m1"):
        shell.run_line_magic("sandbox", "stop m1")


def test_concurrent_cells_leave_no_orphan_standby():
    """Cells in several threads (the panel, user threads) each ask for a standby as they
    end; discard() must end every one of them."""
    results = []
    start = threading.Barrier(3)

    def cell(i):
        start.wait()
        results.append(run(f"echo {i}", hostname=f"concurrent{i}"))

    threads = [threading.Thread(target=cell, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(r.stdout for r in results) == ["0\n", "1\n", "2\n"]
    settle()
    assert STANDBYS.count() == 0 and STANDBYS.boots_in_flight() == 0
    assert ledger.leftovers() == []     # at once: no standby booting on after discard()


def test_a_boot_outdated_while_in_flight_ends_its_own_sandbox():
    """The race CI met: a standby boot that finishes after a later one (or after
    discard()) must not become the standby, nor be left running without an owner."""
    from sandbox_magic import make_config
    from sandbox_magic.config import sandbox_environment
    from sandbox_magic.runner import boot, locate, wait_for_teardowns
    from sandbox_magic.standby import StandbyPool

    config = make_config("true")
    environment = sandbox_environment(os.environ, config.env, config.env_all)

    def real_boot():
        return boot(config, locate(config.runsc), environment, ledger.state_root(), False,
                    waiter=True)

    release, booted = threading.Event(), threading.Event()

    def late_boot():
        release.wait(20)
        try:
            return real_boot()
        finally:
            booted.set()

    pool = StandbyPool()
    pool.prepare(("late",), late_boot)
    pool.prepare(("last",), real_boot)
    threading.Timer(0.5, release.set).start()
    pool.discard()                       # must wait for the late boot too
    assert booted.wait(20)
    time.sleep(0.3)                      # time for a buggy pool to install the late one
    assert pool.count() == 0 and pool.boots_in_flight() == 0
    wait_for_teardowns()
    assert ledger.leftovers() == []


SESSION_FIDELITY = [
    "echo out; echo err >&2; exit 3",
    "set -e\nfalse\necho never",
    "kill -KILL $$",
    "exit 137",
    "cat; echo eof:$?",
    "echo $# [$*] $0 $LINENO [$how] [$command]\ntrap 'echo trapped' EXIT\nf() { return 4; }; f; echo $?",
    "#!/usr/bin/env python3\nimport os, sys\nprint(sys.argv, os.getcwd(), sys.stdin.read() == '')",
]


@pytest.mark.parametrize("script", SESSION_FIDELITY)
def test_a_session_cell_runs_its_script_as_a_fresh_cell_does(script):
    """Session cells are read by a shell that waited for them (no program load); what
    the script sees and how it ends must be what a fresh cell gets."""
    def seen(result):
        text = re.sub(r"cell-\d+", "cell", result.stdout)
        return (text, result.stderr, result.exit_code, result.signal)

    env = ["how=user's", "command=also"]   # names a waiting shell might have used
    fresh = run(script, standby=False, env=env)
    with Session("fidelity", env=env) as session:
        time.sleep(0.3)                  # the first cell's process is waiting by now
        assert seen(session.run(script)) == seen(fresh)
        assert seen(session.run(script)) == seen(fresh)   # and right after another cell


def test_a_session_cell_whose_waiting_process_died_still_runs():
    with Session("phoenix") as session:
        assert session.run("echo one").stdout == "one\n"
        waiting = session.waiting.process
        os.killpg(waiting.pid, signal.SIGKILL)   # the next cell's `runsc exec`, killed
        waiting.wait(10)
        result = session.run("echo two; exit 4")
        assert (result.stdout, result.exit_code, result.signal) == ("two\n", 4, None)
