"""Run records: what ran, in what sandbox, with what result, as notebook outputs.

Each run leaves a display-data output with MIME type MIME (and a short
text/plain and text/html summary), so that Jupyter stores it in the .ipynb and
`sandbox-magic verify` can re-run it months later and compare. Pure functions,
except reading a notebook.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import os

from .result import SandboxResult

SCHEMA = "sandbox-magic/run/1"
MIME = "application/vnd.sandbox-magic.run+json"
STREAM_TEXT_LIMIT = 64 * 1024   # bytes of a stream kept as text in the record


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).hexdigest()


def record_of(result: SandboxResult) -> dict:
    """The record of one run (schema sandbox-magic/run/1)."""
    record = {
        "schema": SCHEMA,
        "config": result.config.to_dict(),
        "script_sha256": sha256(result.config.script),
        "spec_sha256": sha256(json.dumps(result.spec, sort_keys=True)),
        "runsc_version": result.runsc_version,
        "platform": result.platform,
        "host_kernel": os.uname().release,
        "started": result.started,
        "duration": round(result.duration, 6),
        "exit_code": result.exit_code,
        "signal": result.signal,
        "timed_out": result.timed_out,
        "stopped": result.stopped,
        "container_id": result.container_id,
        "session": result.session,
        "network": dataclasses.asdict(result.network) if result.network else None,
    }
    for name in ("stdout", "stderr"):
        output = getattr(result, f"{name}_output")
        record[f"{name}_sha256"] = output.sha256
        record[f"{name}_bytes"] = output.bytes
        record[name] = output.text() if output.bytes <= STREAM_TEXT_LIMIT else None
    return record


def status_of(record: dict) -> str:
    """The record's ending in words, as SandboxResult.status_text() says it."""
    if record.get("timed_out"):
        return "timed out"
    if record.get("stopped"):
        return "stopped"
    if record.get("signal") is not None:
        return f"killed by signal {record['signal']}"
    return f"exit {record.get('exit_code')}"


def summary(record: dict) -> str:
    return (f"sandbox run {record['container_id']}: {status_of(record)} in "
            f"{record['duration']:.2f} s · runsc {record['runsc_version']} ({record['platform']})"
            f" · stdout {record['stdout_bytes']} B {record['stdout_sha256'][:12]}")


class RunRecord:
    """A run record as a displayable object: display(RunRecord(result))."""

    def __init__(self, result: SandboxResult) -> None:
        self.record = record_of(result)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        text = summary(self.record)
        return {MIME: self.record, "text/plain": text,
                "text/html": f'<div class="sandbox-magic-record" style="color:#57606a;'
                             f'font-size:smaller">{html.escape(text)}</div>'}


def code_cells(notebook):
    """(number, counting code cells from 1, cell) for each code cell of a notebook."""
    cells = (cell for cell in notebook.cells if cell.cell_type == "code")
    return enumerate(cells, start=1)


def records_in(notebook) -> list[tuple[int, dict]]:
    """(code cell number, counting from 1, record) for every record in an nbformat notebook."""
    found = []
    for number, cell in code_cells(notebook):
        for output in cell.get("outputs", []):
            data = output.get("data", {}) if output.get("output_type") in (
                "display_data", "execute_result") else {}
            if MIME in data:
                record = data[MIME]
                found.append((number, json.loads(record) if isinstance(record, str) else record))
    return found


def notebook_of(results: list[SandboxResult]):
    """A notebook holding the records of `results`, one code cell each (for verify)."""
    from nbformat.v4 import new_code_cell, new_notebook, new_output
    cells = []
    for result in results:
        bundle = RunRecord(result)._repr_mimebundle_()
        cell = new_code_cell(f"%%sandbox  # re-run from the record of {result.container_id}\n"
                             + result.config.script)
        cell.outputs = [new_output("display_data", data=bundle)]
        cells.append(cell)
    return new_notebook(cells=cells)
