"""%%sandbox in real Jupyter kernels: live streaming, interrupt, notebooks via nbclient."""

import time
from pathlib import Path

import nbformat
import pytest


NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute_collecting(client, code, timeout=60, on_message=None):
    """Execute `code`; return (reply, [(seconds since start, iopub message)])."""
    start = time.monotonic()
    messages = []

    def record(message):
        messages.append((time.monotonic() - start, message))
        if on_message:
            on_message(message)

    reply = client.execute_interactive(code, timeout=timeout, output_hook=record)
    return reply, messages


def stream_times(messages, needle):
    return [at for at, m in messages
            if m["msg_type"] == "stream" and needle in m["content"]["text"]]


def test_output_reaches_the_notebook_while_the_script_runs(kernel):
    _, client = kernel
    reply, messages = execute_collecting(client, "%%sandbox\necho first\nsleep 2\necho second")
    assert reply["content"]["status"] == "ok"
    first, second = stream_times(messages, "first")[0], stream_times(messages, "second")[0]
    assert second - first >= 1.5, "the first line was not shown before the sleep ended"


def test_interrupt_kills_the_sandbox_within_two_seconds(kernel):
    manager, client = kernel
    interrupted_at = []

    def interrupt_when_started(message):
        if (not interrupted_at and message["msg_type"] == "stream"
                and "started" in message["content"]["text"]):
            interrupted_at.append(time.monotonic())
            manager.interrupt_kernel()

    reply, _ = execute_collecting(client, "%%sandbox\necho started\nsleep 60",
                                  on_message=interrupt_when_started)
    assert interrupted_at, "the cell never started"
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - interrupted_at[0] < 2.0
    # The kernel is still usable.
    again, messages = execute_collecting(client, "%%sandbox\necho alive")
    assert again["content"]["status"] == "ok" and stream_times(messages, "alive")


def test_failing_cell_error_in_kernel(kernel):
    _, client = kernel
    reply, messages = execute_collecting(client, "%%sandbox\nexit 3")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "SandboxExitError"
    errors = [m for _, m in messages if m["msg_type"] == "error"]
    assert errors[0]["content"]["traceback"] == ["SandboxExitError: sandbox exited with status 3"]


def test_committed_notebooks_have_no_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path
