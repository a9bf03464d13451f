"""%%sandbox through a real IPython InteractiveShell."""

import os
import signal
import subprocess
import threading
import time

import pytest
from IPython.core.error import UsageError

from sandbox_magic import SandboxExitError, SandboxResult


def cell(shell, line, body):
    return shell.run_cell_magic("sandbox", line, body)


def test_output_is_printed(shell, capsys):
    cell(shell, "", "echo to-stdout; echo to-stderr >&2")
    captured = capsys.readouterr()
    assert "to-stdout" in captured.out and "to-stderr" in captured.err


def test_out_err_result_variables(shell, capsys):
    cell(shell, "--out o --err e --result r", "echo hello; echo oops >&2")
    assert shell.user_ns["o"] == "hello\n" and shell.user_ns["e"] == "oops\n"
    result = shell.user_ns["r"]
    assert isinstance(result, SandboxResult) and result.ok
    captured = capsys.readouterr()
    assert "hello" not in captured.out and "oops" not in captured.err


def test_failure_raises_called_process_error_with_one_line_status(shell):
    with pytest.raises(subprocess.CalledProcessError) as info:
        cell(shell, "--result r", "echo before; exit 3")
    assert isinstance(info.value, SandboxExitError)
    assert info.value.returncode == 3
    assert info.value._render_traceback_() == ["SandboxExitError: sandbox exited with status 3"]
    assert shell.user_ns["r"].exit_code == 3   # stored before raising


def test_signal_raises_with_negative_returncode(shell):
    with pytest.raises(SandboxExitError) as info:
        cell(shell, "", "kill -KILL $$")
    assert info.value.returncode == -9
    assert "killed by signal 9 (SIGKILL)" in str(info.value)


def test_no_raise_error_shows_status(shell, capsys):
    cell(shell, "--no-raise-error --result r", "exit 4")
    assert shell.user_ns["r"].exit_code == 4
    assert "sandbox exited with status 4" in capsys.readouterr().err


def test_failing_cell_in_run_cell_shows_one_line(shell, capsys):
    outcome = shell.run_cell("%%sandbox\nexit 7\n")
    assert isinstance(outcome.error_in_exec, SandboxExitError)
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "SandboxExitError: sandbox exited with status 7" in text
    assert "Traceback" not in text


def test_env_option_is_literal_with_quotes(shell):
    cell(shell, "-e 'A=x y; rm -rf /z' -e B=\"$HOME\" --out o", 'echo "$A|$B"')
    assert shell.user_ns["o"] == "x y; rm -rf /z|$HOME\n"


def test_options_cwd_hostname_timeout(shell):
    cell(shell, "--cwd /etc --hostname lab --out o", "pwd; hostname")
    assert shell.user_ns["o"] == "/etc\nlab\n"
    with pytest.raises(SandboxExitError, match="timed out after 1 s"):
        cell(shell, "--timeout 1 --result r", "sleep 20")
    assert shell.user_ns["r"].timed_out


@pytest.mark.parametrize("line, words", [
    ("--cwd /no/such/dir", "--cwd"),
    ("--root /no/such/root", "--root"),
    ("-e NOEQUALS", "NAME=VALUE"),
    ("--timeout -3", "--timeout"),
    ("--timeout nan", "--timeout"),
    ("--timeout inf", "--timeout"),
    ("--bogus", "unrecognized arguments: --bogus"),
    ("--out 1x", "--out"),
    ("-e 'unterminated", "cannot split"),
])
def test_bad_lines_are_usage_errors(shell, line, words):
    with pytest.raises(UsageError, match=words.replace("-", r"\-")):
        cell(shell, line, "touch /tmp/sandbox-magic-should-not-exist")
    assert not os.path.exists("/tmp/sandbox-magic-should-not-exist")


def test_config_defaults(shell):
    shell.run_line_magic("config", "SandboxMagics.hostname = 'configured'")
    shell.run_line_magic("config", "SandboxMagics.env = ['FROM_CONFIG=1']")
    shell.run_line_magic("config", "SandboxMagics.raise_error = False")
    cell(shell, "--out o", "hostname; echo $FROM_CONFIG; exit 2")
    assert shell.user_ns["o"] == "configured\n1\n"
    cell(shell, "--hostname given --out o", "hostname")
    assert shell.user_ns["o"] == "given\n"


def test_configured_runsc(shell, tmp_path):
    shell.run_line_magic("config", f"SandboxMagics.runsc = '{tmp_path}/missing-runsc'")
    with pytest.raises(UsageError, match="--runsc"):
        cell(shell, "", "true")


def test_help_documents_every_option(shell):
    doc = shell.find_cell_magic("sandbox").__doc__
    for option in ("--root", "--cwd", "--env", "--env-all", "--hostname", "--timeout",
                   "--out", "--err", "--result", "--no-raise-error", "--runsc"):
        assert option in doc


def test_line_magic_points_to_the_cell_magic(shell):
    with pytest.raises(UsageError, match="%%sandbox"):
        shell.run_line_magic("sandbox", "")


def test_sigint_while_the_cell_sleeps(shell):
    """Ctrl-C (SIGINT to the kernel) stops the sandbox, removes it, and raises
    KeyboardInterrupt within 2 seconds; the no_leftovers fixture checks the rest."""
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        cell(shell, "", "echo sleeping; sleep 30")
    assert time.monotonic() - start - 1.0 < 2.0


def test_repeated_sigint_during_teardown_leaves_nothing(shell):
    def interrupt_twice():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.15)
        os.kill(os.getpid(), signal.SIGINT)
    timer = threading.Timer(1.0, interrupt_twice)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        cell(shell, "", "trap '' INT; sleep 30")
    timer.join()


def test_interrupt_reaches_the_script_first(shell, capsys):
    """The script sees SIGINT before anything harsher: a trap can report it."""
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        cell(shell, "", "trap 'echo got SIGINT; exit 5' INT\necho ready\nsleep 30 & wait")
    assert "got SIGINT" in capsys.readouterr().out
