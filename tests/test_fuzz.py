"""Hostile input, fuzzed with hypothesis: every magic line runs or is a usage error,
nothing is created before validation, and values reach the sandbox literally."""

import os
import shlex
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from sandbox_magic import SandboxConfigError, ledger, make_config, run

OPTIONS = ["--root", "--cwd", "-e", "--env", "--env-all", "--hostname", "--timeout", "--out",
           "--err", "--result", "--no-raise-error", "--runsc", "--ip", "--peer", "--network",
           "--no-netns", "--no-nat", "--dns", "--memory", "--cpus", "--pids", "--hide",
           "--session", "--bogus", "-x"]
NASTY = ["", " ", ";", "&&", "$(touch /tmp/fuzz-pwned)", "`touch /tmp/fuzz-pwned`", "'", '"',
         "\\", "/", "..", "-1", "nan", "inf", "1e999", "10.0.0.2", "10.0.0.0/8", "::1",
         "A=B; rm -rf /x", "NAME=VALUE", "x" * 300, "\u00e9", "\t", "/nonexistent", "0",
         "1G", "host", "sandbox", "none"]
word = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(NASTY),
                 st.text(alphabet=string.printable, max_size=12))
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def runs_dir_entries() -> list[str]:
    path = ledger.runs_dir(ledger.state_root())
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


@SETTINGS
@given(words=st.lists(word, max_size=6))
def test_magic_lines_run_or_are_usage_errors(shell, words):
    line = " ".join(shlex.quote(w) if i % 2 else w for i, w in enumerate(words))
    before = runs_dir_entries()
    try:
        # The script would leave a mark on the host if it ever ran outside the sandbox.
        shell.run_cell_magic("sandbox", line + " --no-raise-error --out fuzz_out",
                             "touch /tmp/fuzz-ran-on-host")
    except UsageError:
        assert runs_dir_entries() == before            # nothing was created
    assert not os.path.exists("/tmp/fuzz-ran-on-host")
    assert not os.path.exists("/tmp/fuzz-pwned")


@settings(max_examples=400, deadline=None)
@given(options=st.dictionaries(
    st.sampled_from(["root", "cwd", "env", "env_all", "hostname", "timeout", "runsc", "network",
                     "ip", "peer", "netns", "nat", "dns", "hide", "memory", "cpus", "pids"]),
    st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=True),
              st.sampled_from(NASTY), st.lists(st.sampled_from(NASTY), max_size=3))))
def test_config_validation_never_fails_otherwise(options):
    try:
        config = make_config("true", **options)
    except SandboxConfigError as exc:
        assert str(exc).startswith("--")               # names the option
    else:
        assert make_config(**config.to_dict()) == config


@settings(max_examples=12, deadline=None)
@given(value=st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                            blacklist_characters="\0"), max_size=40))
def test_env_values_arrive_literally(value):
    result = run('printf %s "$FUZZ"', env=[f"FUZZ={value}"], standby=False)
    assert result.stdout == value
