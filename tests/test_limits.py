"""Limits and secrets, for real: memory, CPU, processes; hidden paths; the env filter."""

import os
from pathlib import Path

import pytest

from sandbox_magic import SandboxConfigError, make_config, run
from sandbox_magic.runsc import cgroup_dirs

FORK_COUNTER = """#!/usr/bin/env python3
import os, time
children = 0
for _ in range(40):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(3)
        os._exit(0)
    children += 1
print(children)"""

CPU_HOG = """#!/usr/bin/env python3
import time
n, start = 0, time.time()
while time.time() - start < 2:
    n += 1
print(n)"""


@pytest.mark.parametrize("options, field", [
    (dict(memory="lots"), "memory"), (dict(memory="1M"), "memory"), (dict(memory=-5), "memory"),
    (dict(cpus=0), "cpus"), (dict(cpus="x"), "cpus"), (dict(pids=0), "pids"),
    (dict(pids="many"), "pids"), (dict(hide=["/"]), "hide"), (dict(hide=[""]), "hide"),
])
def test_bad_limits_and_hide(options, field):
    with pytest.raises(SandboxConfigError) as info:
        make_config("true", **options)
    assert info.value.field == field and f"--{field}" in str(info.value)


def test_sizes():
    assert make_config("true", memory="512M").memory == 512 << 20
    assert make_config("true", memory="1.5g").memory == 3 << 29
    assert make_config("true", memory="64MiB").memory == 64 << 20
    assert make_config("true", memory=str(100 << 20)).memory == 100 << 20


def test_memory_limit_ends_the_cell_with_a_clear_status(runsc_path):
    result = run("echo before; python3 -c 'x = bytearray(300 * 1024 * 1024)'; echo after",
                 memory="64M", runsc=runsc_path, standby=False)
    assert result.signal == 9 and result.limit_hit == "memory"
    assert "the memory limit (64 MiB) was reached" in result.status_text()
    assert result.spec["linux"]["resources"]["memory"]["limit"] == 64 << 20
    assert not cgroup_dirs(result.container_id)        # its cgroup is gone
    # The same script with room enough runs to the end: the limit, nothing else, did it.
    roomy = run("python3 -c 'x = bytearray(300 * 1024 * 1024)'; echo after", memory="1G",
                runsc=runsc_path, standby=False)
    assert roomy.ok and roomy.stdout == "after\n"


def test_cpu_limit_slows_a_hog():
    free = int(run(CPU_HOG, standby=False).stdout)
    limited = run(CPU_HOG, cpus=0.25, standby=False)
    assert limited.spec["linux"]["resources"]["cpu"] == {"quota": 25_000, "period": 100_000}
    assert int(limited.stdout) < 0.6 * free, (int(limited.stdout), free)


def test_pids_limit_caps_forks(runsc_path):
    unlimited = run(FORK_COUNTER, runsc=runsc_path, standby=False)
    limited = run(FORK_COUNTER, pids=10, runsc=runsc_path, standby=False)
    assert int(unlimited.stdout) == 40
    assert int(limited.stdout) < 10                     # the script itself counts too
    caps = limited.spec["process"]["capabilities"]["effective"]
    assert "CAP_SYS_ADMIN" not in caps and "CAP_SYS_RESOURCE" not in caps


def test_jupyter_runtime_dir_and_hidden_paths_appear_empty(tmp_path, monkeypatch):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "kernel-1234.json").write_text('{"key": "the-kernel-signing-key"}')
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    (secret_dir / "id_rsa").write_text("PRIVATE")
    secret_file = tmp_path / "token.txt"
    secret_file.write_text("TOKEN")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    result = run(f"ls -A {runtime} {secret_dir}; cat {secret_file}; echo end; "
                 f"grep -r the-kernel-signing-key {tmp_path} || echo not-found",
                 hide=[str(secret_dir), str(secret_file)], standby=False)
    assert "kernel-1234" not in result.stdout and "id_rsa" not in result.stdout
    assert "TOKEN" not in result.stdout and "PRIVATE" not in result.stdout
    assert result.stdout.endswith("end\nnot-found\n")


def test_magic_hidden_paths_config(shell, tmp_path):
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "x").write_text("x")
    shell.run_line_magic("config", f"SandboxMagics.hidden_paths = ['{tmp_path}/private']")
    shell.run_cell_magic("sandbox", "--out o", f"ls -A {tmp_path}/private | wc -l")
    assert shell.user_ns["o"].strip() == "0"


# Variables a Jupyter server and JupyterHub set in a kernel's environment.
JUPYTER_ENV = {
    "JPY_PARENT_PID": "4242", "JPY_SESSION_NAME": "/home/u/work.ipynb",
    "JUPYTERHUB_API_TOKEN": "hub-token", "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-u",
    "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api", "JUPYTERHUB_USER": "u",
    "JUPYTERHUB_SERVER_NAME": "", "JUPYTERHUB_OAUTH_CALLBACK_URL": "/user/u/oauth_callback",
    "JUPYTER_TOKEN": "server-token", "JUPYTERHUB_ACTIVITY_URL": "http://hub/api/activity",
    "MY_SERVICE_PASSWORD": "pw", "AWS_SECRET_ACCESS_KEY": "aws", "OPENAI_API_KEY": "sk",
}


def test_env_filter_against_jupyter_and_hub_variables(monkeypatch):
    for name, value in JUPYTER_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HARMLESS", "yes")
    result = run("env", standby=False)
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert seen["HARMLESS"] == "yes"
    assert not set(JUPYTER_ENV) & set(seen)


@pytest.mark.parametrize("mode", ["sandbox", "host"])
def test_host_loopback_services_are_out_of_reach_with_ip(mode):
    """A server on the host's 127.0.0.1 (as the Jupyter server and the kernel's ports
    are) cannot be reached from a sandbox with --ip: its loopback is its own."""
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    try:
        result = run(f"""#!/usr/bin/env python3
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3)
    print("reached")
except OSError as exc:
    print("refused", exc.errno)""", ip="10.213.130.2", network=mode, standby=False)
        assert result.stdout.startswith("refused"), result.stdout
        assert not accepted
    finally:
        server.close()
