"""SandboxPanel headless: the form, its validation, previews, Run and Stop, for real."""

import shlex
import time

import pytest

from tests.conftest import settle

from sandbox_magic import SandboxPanel, ledger, make_config


def test_fields_give_config_spec_and_magic_line(shell):
    panel = SandboxPanel()
    panel.set(cwd="/tmp", hostname="lab", timeout=5, env={"A": "x y", "B": "$HOME"},
              ip="10.213.90.2/25", dns=["192.0.2.53"], nat=False)
    panel.script.value = "echo hi"
    assert not panel.run_button.disabled
    config = panel.config
    assert (config.cwd, config.hostname, config.timeout) == ("/tmp", "lab", 5.0)
    assert config.env == (("A", "x y"), ("B", "$HOME"))
    assert (config.network, config.ip, config.peer, config.nat, config.dns) == (
        "sandbox", "10.213.90.2/25", "10.213.90.3", False, ("192.0.2.53",))
    spec = panel.spec
    assert spec["hostname"] == "lab" and spec["process"]["cwd"] == "/tmp"
    assert "A=x y" in spec["process"]["env"]
    assert spec["linux"]["namespaces"][-1]["path"] == "/run/netns/sbx-XXXXXXXX"
    assert panel.magic_line in panel.line_preview.value
    assert "&quot;hostname&quot;: &quot;lab&quot;" in panel.spec_preview.value
    # The line, given to the magic's own parser, gives the same configuration.
    magics = next(m for m in shell.configurables if type(m).__name__ == "SandboxMagics")
    args = magics.sandbox_cell.parser.parse_args(shlex.split(panel.magic_line)[1:])
    from sandbox_magic.options import run_kwargs
    assert make_config("echo hi", **run_kwargs(args)) == config
    assert not ledger.leftovers()            # previews create nothing


@pytest.mark.parametrize("options, field, words", [
    (dict(timeout="soon"), "timeout", "--timeout"),
    (dict(cwd="/no/such/dir"), "cwd", "--cwd"),
    (dict(ip="10.213.91.0"), "ip", "network address"),
    (dict(ip="10.213.91.2", peer="10.9.9.9"), "peer", "outside"),
    (dict(hostname="bad name"), "hostname", "valid host name"),
    (dict(dns=["nope"], ip="10.213.91.2"), "dns", "not an IP"),
    (dict(env=["1X=2"]), "env", "variable name"),
])
def test_invalid_values_block_run_and_show_a_message(options, field, words):
    panel = SandboxPanel(script="touch /tmp/sandbox-magic-panel-should-not-run")
    panel.set(**options)
    assert panel.run_button.disabled and panel.result is None
    assert words in panel.messages[field].value
    assert all(not m.value for name, m in panel.messages.items() if name != field)
    panel.run_button.click()                 # click() fires even when disabled
    assert not panel.running and panel.wait(1) is None
    assert panel.line_preview.value == ""


def test_fixing_the_field_clears_the_message():
    panel = SandboxPanel(script="true", timeout="x")
    assert panel.messages["timeout"].value
    panel.set(timeout="")
    assert not panel.messages["timeout"].value and not panel.run_button.disabled


def test_env_rows_add_and_remove():
    panel = SandboxPanel(script="true")
    row = panel.add_env_row("FOO", "bar")
    assert panel.config.env == (("FOO", "bar"),)
    row.remove.click()
    assert panel.config.env == ()


def test_run_gives_result_output_and_status():
    panel = SandboxPanel(script="echo out; echo err >&2; exit 3")
    assert panel.start()
    assert panel.run_button.disabled              # no second run while one is going
    assert not panel.start()
    result = panel.wait(60)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert panel.output.outputs[:2] == (
        {"output_type": "stream", "name": "stdout", "text": "out\n"},
        {"output_type": "stream", "name": "stderr", "text": "err\n"})
    assert panel.output.outputs[2]["output_type"] == "display_data"   # the run record
    assert "exited with status 3" in panel.status.value
    assert not panel.run_button.disabled and panel.stop_button.disabled
    # The editor's summary names the script the record has.
    record = panel.output.outputs[2]["data"]["application/vnd.sandbox-magic.run+json"]
    assert f"sha256 {record['script_sha256'][:12]}" in panel.script_info.value
    assert "1 line · 30 bytes" in panel.script_info.value


def test_status_for_signal_and_timeout():
    panel = SandboxPanel(script="kill -KILL $$")
    panel.run_button.click()
    assert panel.wait(60).signal == 9 and "killed by signal 9 (SIGKILL)" in panel.status.value
    panel.set(timeout=1, script="sleep 20")
    panel.run_button.click()
    assert panel.wait(60).timed_out and "timed out after 1 s" in panel.status.value


def test_stop_ends_a_long_script_and_leaves_nothing():
    panel = SandboxPanel(script="echo started; sleep 60", ip="10.213.92.2")
    panel.run_button.click()
    deadline = time.monotonic() + 30
    while not panel.output.outputs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not panel.stop_button.disabled
    start = time.monotonic()
    result = panel.stop()
    assert time.monotonic() - start < 3
    assert result.stopped and result.signal is not None
    assert "stopped" in panel.status.value
    settle()
    assert ledger.leftovers() == []


def test_runsc_failure_is_shown(tmp_path):
    root = tmp_path / "empty-root"
    root.mkdir()
    panel = SandboxPanel(script="true", root=str(root))
    panel.run_button.click()
    assert panel.wait(60) is None
    assert "error:" in panel.status.value and "/bin/sh" in panel.status.value


def test_percent_sandbox_panel_uses_the_configured_defaults(shell):
    shell.run_line_magic("config", "SandboxMagics.hostname = 'from-config'")
    shell.run_line_magic("config", "SandboxMagics.memory = '256M'")
    panel = shell.run_line_magic("sandbox", "panel")
    assert isinstance(panel, SandboxPanel)
    assert panel.fields["hostname"].value == "from-config"
    assert panel.fields["memory"].value == "256M"    # every default, limits included


def test_unknown_option_to_set():
    with pytest.raises(TypeError, match="bogus"):
        SandboxPanel().set(bogus=1)


def test_panel_notebook_executes(tmp_path):
    from pathlib import Path

    from sandbox_magic.notebooks import execute_notebook
    path = Path(__file__).resolve().parent.parent / "notebooks" / "panel.ipynb"
    executed = execute_notebook(path, tmp_path / "panel.ipynb")
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs)
    assert "exited with status 3 | hello from panel-demo" in text
    assert "Run disabled: True" in text and "--timeout" in text
    assert "10.99.0.2\tpanel-demo | peer: 10.99.0.3" in text
    assert "stopped (killed by signal" in text


def test_panel_runs_in_a_session():
    from sandbox_magic import Session
    panel = SandboxPanel(script="true", session="nope")
    assert panel.run_button.disabled and "no session named nope" in panel.messages["session"].value
    with Session("pan") as session:
        panel.set(session="pan", timeout=5, script="echo kept > /tmp/panel-file")
        assert not panel.run_button.disabled
        assert panel.magic_line == "%%sandbox --session pan --timeout 5"
        panel.run_button.click()
        assert panel.wait(60).ok
        panel.script.value = "cat /tmp/panel-file"
        panel.run_button.click()
        result = panel.wait(60)
        assert result.stdout == "kept\n" and result.session == "pan"
        assert result.container_id == session.container_id


def test_limits_and_hidden_paths_in_the_form():
    panel = SandboxPanel(script="true")
    panel.set(memory="lots")
    assert panel.run_button.disabled and "--memory" in panel.messages["memory"].value
    panel.set(memory="256M", cpus="0.5", pids="32", hide=["/srv/data"])
    assert not panel.run_button.disabled
    assert (panel.config.memory, panel.config.cpus, panel.config.pids, panel.config.hide) == (
        256 << 20, 0.5, 32, ("/srv/data",))
    assert "--memory 256M --cpus 0.5 --pids 32" in panel.magic_line
    assert "--hide /srv/data" in panel.magic_line
    assert panel.spec["linux"]["resources"]["memory"]["limit"] == 256 << 20


def test_a_second_run_shows_only_its_own_output():
    panel = SandboxPanel(script="echo first")
    panel.start()
    panel.wait(60)
    panel.set(script="echo second")
    panel.start()
    result = panel.wait(60)
    assert result.stdout == "second\n"
    streams = [o["text"] for o in panel.output.outputs if o["output_type"] == "stream"]
    assert streams == ["second\n"]
