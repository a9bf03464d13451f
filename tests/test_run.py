"""run() against real runsc: output, wait status, filesystem, environment,
timeouts, runsc's own failures. Parametrized over both Debian runsc builds
where the behaviour must hold for each."""

import os
import signal
import stat
import time

import pytest

import sandbox_magic
from sandbox_magic import SandboxConfigError, SandboxError, run


def test_output_and_exit_code(runsc_path):
    result = run("echo out; echo err >&2; exit 3", runsc=runsc_path)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert (result.exit_code, result.signal, result.returncode) == (3, None, 3)
    assert not result.timed_out and not result.ok
    assert result.container_id.startswith("sbx-")
    assert result.spec["process"]["args"][0] == "/bin/sh"
    assert result.config.script.startswith("echo out")
    assert 0 < result.duration < 30


def test_exit_137_is_not_sigkill(runsc_path):
    exited = run("exit 137", runsc=runsc_path)
    killed = run("kill -KILL $$", runsc=runsc_path)
    assert (exited.exit_code, exited.signal, exited.returncode) == (137, None, 137)
    assert (killed.exit_code, killed.signal, killed.returncode) == (None, 9, -9)
    assert killed.status_text() == "killed by signal 9 (SIGKILL)"
    assert exited.status_text() == "exited with status 137"


def test_signal_other_than_kill(runsc_path):
    result = run("kill -TERM $$", runsc=runsc_path)
    assert (result.exit_code, result.signal) == (None, signal.SIGTERM)


def test_success(runsc_path):
    result = run("true", runsc=runsc_path)
    assert result.ok and result.exit_code == 0 and result.signal is None
    assert result.check() is result


def test_shebang_scripts(runsc_path):
    py = run("#!/usr/bin/env python3\nimport os, sys\nprint(os.getcwd(), sys.argv[0])\n",
             cwd="/usr", runsc=runsc_path)
    assert py.stdout == "/usr /.sandbox-magic/cell\n", py.stderr
    bash = run("#!/bin/bash\necho $((2**10)) ${BASH_VERSION%%.*}", runsc=runsc_path)
    assert bash.stdout.split()[0] == "1024"
    dash = run("echo $((2**10))", runsc=runsc_path)  # /bin/sh is dash: no **
    assert dash.exit_code != 0


def test_hostname_and_namespaces(runsc_path):
    default = run("hostname", runsc=runsc_path)
    assert default.stdout.strip() == os.uname().nodename
    named = run("hostname; echo $$; cat /proc/net/dev | tail -n +3 | cut -d: -f1",
                hostname="lab-1", runsc=runsc_path)
    lines = [line.strip() for line in named.stdout.splitlines()]
    assert lines[0] == "lab-1"
    assert lines[1] == "1"                   # own pid namespace: the script's shell is init
    assert lines[2:] == ["lo"]               # own, empty network namespace


def test_all_capabilities_like_runsc_do(runsc_path):
    result = run("grep CapEff /proc/self/status", runsc=runsc_path)
    effective = int(result.stdout.split()[1], 16)
    assert effective & (1 << 21)             # CAP_SYS_ADMIN
    assert effective & (1 << 0)              # CAP_CHOWN


def test_writes_stay_inside(tmp_path, runsc_path):
    existing = tmp_path / "existing.txt"
    existing.write_text("original\n")
    new = tmp_path / "created.txt"
    result = run(f"echo changed > {existing}; echo new > {new}; cat {existing} {new}; "
                 f"rm -f /etc/hostname && echo removed", runsc=runsc_path)
    assert result.stdout == "changed\nnew\nremoved\n", result.stderr
    assert existing.read_text() == "original\n"
    assert not new.exists()
    assert os.path.exists("/etc/hostname")


def test_each_run_is_fresh(runsc_path):
    run("echo 1 > /tmp/sandbox-magic-state-probe", runsc=runsc_path)
    second = run("cat /tmp/sandbox-magic-state-probe", runsc=runsc_path)
    assert second.exit_code != 0 and not os.path.exists("/tmp/sandbox-magic-state-probe")


def test_ls_works_with_backports_build():
    # The stock 2022 build answers statx(AT_NO_AUTOMOUNT) with EINVAL (DESIGN.md §3);
    # the build the set-up installs must not.
    result = run("ls / >/dev/null && stat -c %n /etc")
    assert result.ok and result.stdout == "/etc\n", result.stderr


def test_cwd_and_root(tmp_path, runsc_path):
    result = run("pwd", cwd="/var", runsc=runsc_path)
    assert result.stdout == "/var\n"
    root = tmp_path / "rootfs"
    (root / "data").mkdir(parents=True)
    with pytest.raises(SandboxError, match="/bin/sh"):
        run("true", root=str(root), runsc=runsc_path)   # spec runsc rejects: no /bin/sh there


def test_environment_filter_and_literal_env(monkeypatch, runsc_path):
    monkeypatch.setenv("SBX_PLAIN", "visible")
    monkeypatch.setenv("SBX_API_TOKEN", "hidden")
    monkeypatch.setenv("JPY_SESSION_NAME", "hidden")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hidden")
    monkeypatch.setenv("JUPYTER_TOKEN", "hidden")
    script = ('echo "$SBX_PLAIN|$SBX_API_TOKEN|$JPY_SESSION_NAME|$JUPYTERHUB_API_TOKEN|'
              '$JUPYTER_TOKEN|$LITERAL"')
    filtered = run(script, env=["LITERAL=$HOME; rm -rf /x `id`"], runsc=runsc_path)
    assert filtered.stdout == "visible|||||$HOME; rm -rf /x `id`\n"
    everything = run(script, env_all=True, runsc=runsc_path)
    assert everything.stdout == "visible|hidden|hidden|hidden|hidden|\n"


def test_utf8_split_across_chunks(runsc_path):
    pieces = []
    result = run(r"printf '\303'; sleep 0.3; printf '\251\n'; printf '\342\202'; sleep 0.3;"
                 r" printf '\254\n'", on_stdout=pieces.append, runsc=runsc_path)
    assert result.stdout == "é\n€\n"
    assert "\ufffd" not in "".join(pieces)


def test_output_is_live(runsc_path):
    arrivals = []
    start = time.monotonic()
    result = run("echo first; sleep 2; echo second",
                 on_stdout=lambda text: arrivals.append((time.monotonic() - start, text)),
                 runsc=runsc_path)
    assert result.stdout == "first\nsecond\n"
    first_at = next(at for at, text in arrivals if "first" in text)
    second_at = next(at for at, text in arrivals if "second" in text)
    assert second_at - first_at >= 1.5      # "first" was shown before the sleep ended


def test_large_output_in_order(runsc_path):
    result = run("seq 1 200000; seq 1 1000 >&2", runsc=runsc_path)
    assert result.stdout == "".join(f"{i}\n" for i in range(1, 200001))
    assert result.stderr == "".join(f"{i}\n" for i in range(1, 1001))


def test_timeout_kills_the_sandbox(runsc_path):
    start = time.monotonic()
    result = run("echo started; sleep 30", timeout=1, runsc=runsc_path)
    assert result.timed_out and result.signal == signal.SIGKILL and result.exit_code is None
    assert result.stdout == "started\n"
    assert time.monotonic() - start < 5
    assert "timed out after 1 s" in result.status_text()


def test_bad_input_creates_nothing(tmp_path):
    from sandbox_magic import ledger
    before = os.listdir(ledger.runs_dir(ledger.state_root())) if os.path.isdir(
        ledger.runs_dir(ledger.state_root())) else []
    for options in (dict(cwd="/nope"), dict(env=["X"]), dict(timeout=-2), dict(root="/nope")):
        with pytest.raises(SandboxConfigError):
            run("touch /tmp/should-not-run", **options)
    assert not os.path.exists("/tmp/should-not-run")
    after = os.listdir(ledger.runs_dir(ledger.state_root())) if os.path.isdir(
        ledger.runs_dir(ledger.state_root())) else []
    assert after == before


def test_runsc_missing_from_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="runsc not found.*apt-get install"):
        run("true")


def test_runsc_that_is_not_runsc(tmp_path):
    fake = tmp_path / "runsc"
    fake.write_text("#!/bin/sh\necho 'segmentation fault' >&2\nexit 139\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxError, match="does not look like runsc.*segmentation fault"):
        run("true", runsc=str(fake))


def test_runsc_crashing_half_way(tmp_path, runsc_path):
    """runsc run dies (SIGKILL) while the script runs: a SandboxError, not an
    exit status, and its orphaned sandbox and gofer are removed."""
    wrapper = tmp_path / "runsc"
    wrapper.write_text(f"""#!/bin/sh
case " $* " in
  *" run "*) "{runsc_path}" "$@" & child=$!; sleep 1; kill -KILL $child; exit 0;;
  *) exec "{runsc_path}" "$@";;
esac
""")
    wrapper.chmod(0o755)
    start = time.monotonic()
    with pytest.raises(SandboxError, match="without reporting the script's status"):
        run("echo started; sleep 30", runsc=str(wrapper))
    assert time.monotonic() - start < 10


def test_result_is_returned_for_failures_and_check_raises(runsc_path):
    result = run("exit 5", runsc=runsc_path)
    with pytest.raises(sandbox_magic.SandboxExitError) as info:
        result.check()
    assert info.value.returncode == 5
    import subprocess
    assert isinstance(info.value, subprocess.CalledProcessError)


def test_state_root_is_private():
    from sandbox_magic import ledger
    info = os.stat(ledger.state_root())
    assert stat.S_IMODE(info.st_mode) == 0o700


def test_official_release_version_form(tmp_path):
    """Official builds say `runsc version release-YYYYMMDD.N`: the date is found and
    the post-2023 capability set is used (the binary underneath is the backports one)."""
    import shutil as sh
    from sandbox_magic.runsc import locate
    from sandbox_magic.spec import CAPABILITIES_41
    real = sh.which("runsc")
    wrapper = tmp_path / "runsc"
    wrapper.write_text(f"""#!/bin/sh
if [ "$1" = "--version" ]; then echo "runsc version release-20260817.0"; echo "spec: 1.1.0"; exit 0; fi
exec "{real}" "$@"
""")
    wrapper.chmod(0o755)
    binary = locate(str(wrapper))
    assert (binary.version, binary.date) == ("release-20260817.0", 20260817)
    assert binary.capabilities == CAPABILITIES_41 and not binary.breaks_stat
    assert {"overlay2", "debug-command", "ignore-cgroups"} <= binary.flags
    result = run("grep CapEff /proc/self/status", runsc=str(wrapper))
    assert result.ok and result.runsc_version == "release-20260817.0"


def test_stock_build_is_recognised_as_breaking_stat():
    from tests.conftest import STOCK_RUNSC
    from sandbox_magic.runsc import locate
    binary = locate(str(STOCK_RUNSC))
    assert binary.date == 20221219 and binary.breaks_stat
    assert len(binary.capabilities) == 38
    assert {"overlay2", "debug-command", "ignore-cgroups"} <= binary.flags
