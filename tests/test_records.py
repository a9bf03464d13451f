"""Run records, execute/verify/doctor/demo commands, and every notebook in notebooks/."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from sandbox_magic import SandboxPanel, run
from sandbox_magic.notebooks import execute_notebook
from sandbox_magic.records import MIME, SCHEMA, STREAM_TEXT_LIMIT, record_of, records_in, sha256

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "sandbox_magic", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def test_record_schema_on_real_runs():
    result = run("echo hello; echo oops >&2; exit 4", hostname="rec", timeout=30, env=["A=1"])
    record = record_of(result)
    assert record["schema"] == SCHEMA
    assert record["config"] == result.config.to_dict()
    assert record["config"]["hostname"] == "rec" and record["config"]["env"] == ["A=1"]
    assert record["script_sha256"] == sha256("echo hello; echo oops >&2; exit 4")
    assert record["spec_sha256"] == sha256(json.dumps(result.spec, sort_keys=True))
    assert record["runsc_version"] == result.runsc_version and record["platform"] in (
        "systrap", "ptrace")
    assert record["host_kernel"] == os.uname().release
    assert record["started"].endswith("+00:00") and record["duration"] > 0
    assert (record["exit_code"], record["signal"], record["timed_out"]) == (4, None, False)
    assert record["stdout"] == "hello\n" and record["stdout_bytes"] == 6
    assert record["stdout_sha256"] == sha256("hello\n")
    assert record["stderr"] == "oops\n" and record["stderr_bytes"] == 5
    json.dumps(record)   # JSON-ready, as nbformat stores it


def test_large_streams_keep_digest_and_size_not_text():
    result = run(f"head -c {STREAM_TEXT_LIMIT + 1} /dev/zero | tr '\\0' x")
    record = record_of(result)
    assert record["stdout"] is None and record["stdout_bytes"] == STREAM_TEXT_LIMIT + 1
    assert record["stdout_sha256"] == sha256("x" * (STREAM_TEXT_LIMIT + 1))


def test_panel_runs_leave_a_record_in_its_output():
    panel = SandboxPanel(script="echo from-panel")
    panel.run_button.click()
    assert panel.wait(60).ok
    records = [o["data"][MIME] for o in panel.output.outputs if MIME in o.get("data", {})]
    assert records and records[0]["stdout"] == "from-panel\n"


@pytest.fixture(scope="module")
def executed_quickstart(tmp_path_factory):
    path = tmp_path_factory.mktemp("exec") / "quickstart.ipynb"
    done = cli("execute", str(REPO / "notebooks" / "quickstart.ipynb"), "-o", str(path))
    assert done.returncode == 0, done.stderr
    return path


def test_execute_saves_records_and_verify_passes(executed_quickstart):
    notebook = nbformat.read(executed_quickstart, as_version=4)
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                   for o in c.outputs)
    for expected in ("file on the host? False", "exit 137 -> 137 None 137",
                     "SIGKILL  -> None 9 -9", "True - timed out after 2 s",
                     "42 exited with status 0"):
        assert expected in text
    records = records_in(notebook)
    assert len(records) >= 6 and all(r["schema"] == SCHEMA for _, r in records)
    statuses = {(r["exit_code"], r["signal"], r["timed_out"]) for _, r in records}
    assert {(137, None, False), (None, 9, False), (None, 9, True)} <= statuses
    done = cli("verify", str(executed_quickstart))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cell  recorded" in done.stdout and "DIFFERENT" not in done.stdout
    assert f"{len(records)} of {len(records)} runs reproduced" in done.stdout


def alter(path, tmp_path, cell_number, **changes):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    for output in code_cells[cell_number - 1].outputs:
        if MIME in output.get("data", {}):
            output["data"][MIME].update(changes)
    altered = tmp_path / "altered.ipynb"
    nbformat.write(notebook, altered)
    return altered


def test_verify_fails_and_names_the_cell_for_an_altered_status(executed_quickstart, tmp_path):
    cell, _ = records_in(nbformat.read(executed_quickstart, as_version=4))[0]
    altered = alter(executed_quickstart, tmp_path, cell, exit_code=1)
    done = cli("verify", str(altered))
    assert done.returncode == 1
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"{cell} "))
    assert "exit 1" in row and "DIFFERENT" in row
    assert f"differing: cell {cell}" in done.stdout


def test_verify_fails_for_an_altered_digest_unless_status_only(executed_quickstart, tmp_path):
    cell, _ = records_in(nbformat.read(executed_quickstart, as_version=4))[0]
    altered = alter(executed_quickstart, tmp_path, cell, stdout_sha256="0" * 64)
    done = cli("verify", str(altered))
    assert done.returncode == 1 and f"differing: cell {cell}" in done.stdout
    assert cli("verify", "--status-only", str(altered)).returncode == 0


def test_verify_without_records(tmp_path):
    empty = tmp_path / "empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), empty)
    done = cli("verify", str(empty))
    assert done.returncode == 1 and "no sandbox run records" in done.stdout


def test_doctor_with_and_without_runsc(tmp_path):
    ready = cli("doctor")
    assert ready.returncode == 0, ready.stdout
    assert "ok   runsc" in ready.stdout and "ok   sandbox" in ready.stdout
    assert "netstack" in ready.stdout and "ready: a sandboxed cell can run" in ready.stdout
    without = cli("doctor", env=dict(os.environ, PATH=str(tmp_path)))
    assert without.returncode == 1
    assert "FAIL runsc" in without.stdout and "apt-get install" in without.stdout


def test_demo_command(tmp_path):
    done = cli("demo", "--output", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "HTML export:" in done.stdout and "executed notebook:" in done.stdout
    assert "── cell 1" in done.stdout and "⟨record⟩ sandbox run sbx-" in done.stdout
    assert (tmp_path / "quickstart.executed.html").stat().st_size > 10_000


# quickstart and panel have tests of their own (test_kernel.py, test_panel.py).
EXPECTED = {
    "networking": ["hello 10.99.1.2, from the host", "10.99.1.2\tlab", "nameserver 192.0.2.53",
                   "without --ip: exited with status 1", "Connection refused"],
    "reproducible-experiment": ["2 of 2 runs reproduced", "verify exit status: 0"],
    "teaching-template": ["grade: 4/4"],
}


def test_every_notebook_is_tested():
    assert {p.stem for p in NOTEBOOKS} == set(EXPECTED) | {"quickstart", "panel"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_executes(name, tmp_path):
    path = REPO / "notebooks" / f"{name}.ipynb"
    executed = execute_notebook(path, tmp_path / path.name)   # raises on any cell error
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code"
                   for o in c.outputs)
    for expected in EXPECTED[name]:
        assert expected in text, (expected, text[-2000:])
    assert records_in(executed)
