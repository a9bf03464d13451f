"""Pure stages: validation, environment filter, OCI spec, wait-status decoding."""

import math
import os

import pytest

from sandbox_magic import SandboxConfigError, make_config
from sandbox_magic.config import sandbox_environment
from sandbox_magic.result import decode_wait_status, parse_runsc_log
from sandbox_magic.spec import CAPABILITIES_38, SCRIPT_PATH, build_spec, script_command


def spec_for(script="true", **options):
    config = make_config(script, **options)
    return build_spec(config, environment={"PATH": "/bin"}, script_source="/x/cell")


@pytest.mark.parametrize("options, field, words", [
    (dict(root="/no/such/root"), "root", "--root"),
    (dict(cwd="/no/such/dir"), "cwd", "--cwd"),
    (dict(env=["NOEQUALS"]), "env", "NAME=VALUE"),
    (dict(env=["1BAD=x"]), "env", "not a valid variable name"),
    (dict(env=["=x"]), "env", "not a valid variable name"),
    (dict(timeout=-1), "timeout", "positive"),
    (dict(timeout=0), "timeout", "positive"),
    (dict(timeout=math.inf), "timeout", "positive"),
    (dict(timeout=math.nan), "timeout", "positive"),
    (dict(timeout="soon"), "timeout", "positive"),
    (dict(hostname="bad host"), "hostname", "valid host name"),
    (dict(hostname="-x"), "hostname", "valid host name"),
    (dict(hostname="a" * 65), "hostname", "valid host name"),
    (dict(runsc="/no/such/runsc"), "runsc", "not an executable"),
    (dict(env_all="yes"), "env_all", "True or False"),
])
def test_bad_options_name_the_option_and_the_fix(options, field, words):
    with pytest.raises(SandboxConfigError) as info:
        make_config("true", **options)
    error = info.value
    assert error.field == field
    assert isinstance(error, ValueError)
    assert f"--{field.replace('_', '-')}" in str(error)
    assert words in str(error)


def test_cwd_defaults_to_kernel_directory_and_resolves_relative(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert make_config("true").cwd == str(tmp_path)
    assert make_config("true", cwd="sub").cwd == str(tmp_path / "sub")


def test_cwd_default_falls_back_to_slash_for_other_root(tmp_path, monkeypatch):
    monkeypatch.chdir("/usr")
    assert make_config("true", root=str(tmp_path)).cwd == "/"


def test_cwd_must_exist_inside_the_root(tmp_path):
    (tmp_path / "data").mkdir()
    assert make_config("true", root=str(tmp_path), cwd="/data").cwd == "/data"
    with pytest.raises(SandboxConfigError, match="inside the root"):
        make_config("true", root=str(tmp_path), cwd="/etc")


def test_env_is_literal_and_ordered():
    config = make_config("true", env=["A=1", "B=$HOME; rm -rf /x", "A=2", "C="])
    assert config.env == (("A", "1"), ("B", "$HOME; rm -rf /x"), ("A", "2"), ("C", ""))
    assert make_config("true", env={"X": "y"}).env == (("X", "y"),)


def test_environment_filter_drops_secrets_and_jupyter_variables():
    base = {"PATH": "/bin", "HOME": "/root", "GITHUB_TOKEN": "t", "db_password": "p",
            "AWS_SECRET_ACCESS_KEY": "s", "MY_API_KEY": "k", "SSH_PRIVATE_KEY": "k",
            "GOOGLE_CREDENTIALS": "c", "JPY_SESSION_NAME": "n", "JUPYTERHUB_API_TOKEN": "t",
            "JUPYTERHUB_USER": "u", "JUPYTER_TOKEN": "t", "JPY_PARENT_PID": "1",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline", "LANG": "C.UTF-8"}
    env = sandbox_environment(base, [("EXTRA", "1"), ("HOME", "/tmp")], env_all=False)
    assert env == {"PATH": "/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "EXTRA": "1"}
    everything = sandbox_environment(base, [], env_all=True)
    assert everything == base
    # -e wins over the filter: the user asked for it by name.
    assert sandbox_environment(base, [("GITHUB_TOKEN", "mine")], False)["GITHUB_TOKEN"] == "mine"


def test_spec_is_runsc_do_like():
    spec = spec_for("echo hi", cwd="/tmp", hostname="lab")
    assert spec["root"] == {"path": "/", "readonly": False}
    assert spec["hostname"] == "lab"
    assert spec["process"]["cwd"] == "/tmp"
    assert spec["process"]["args"] == ["/bin/sh", SCRIPT_PATH]
    assert spec["process"]["env"] == ["PATH=/bin"]
    assert set(spec["process"]["capabilities"]) == {
        "bounding", "effective", "inheritable", "permitted", "ambient"}
    assert spec["process"]["capabilities"]["effective"] == list(CAPABILITIES_38)
    assert [ns["type"] for ns in spec["linux"]["namespaces"]] == [
        "pid", "ipc", "uts", "mount", "network"]
    assert all("path" not in ns for ns in spec["linux"]["namespaces"])
    assert spec["mounts"] == [{"destination": "/.sandbox-magic", "type": "bind",
                               "source": "/x/cell", "options": ["rbind", "ro"]}]


def test_shebang_picks_the_interpreter():
    assert script_command("#!/usr/bin/env python3\nprint(1)") == [SCRIPT_PATH]
    assert script_command("echo '#!'") == ["/bin/sh", SCRIPT_PATH]


def test_hostname_defaults_to_the_hosts():
    assert make_config("true").hostname == os.uname().nodename


def test_config_round_trips_through_dict():
    config = make_config("echo hi", env=["A=1"], timeout=5, hostname="h")
    assert make_config(**config.to_dict()) == config


@pytest.mark.parametrize("status, expected", [
    (0, (0, None)), (3 << 8, (3, None)), (137 << 8, (137, None)),
    (9, (None, 9)), (2, (None, 2)), (15, (None, 15)),
])
def test_wait_status_tells_exit_from_signal(status, expected):
    assert decode_wait_status(status) == expected


def test_runsc_log_parsing():
    ok = "I1204 20:16:09.25 2278 main.go:222] Exiting with status: 35072\n"
    assert parse_runsc_log(ok).wait_status == 35072
    fatal = ("W1204 util.go:64] FATAL ERROR: running container: failed to load /bin/x: "
             "no such file or directory\nW1204 main.go:231] Failure to execute command, err: 1\n")
    outcome = parse_runsc_log(fatal)
    assert outcome.wait_status is None and "failed to load /bin/x" in outcome.error
    assert parse_runsc_log("") == parse_runsc_log("garbage")
