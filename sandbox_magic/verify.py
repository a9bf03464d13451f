"""Re-run the sandbox runs recorded in a notebook and compare what happens now."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nbformat

from .config import SandboxConfig
from .errors import SandboxError
from .records import record_of, records_in, status_of
from .runner import run_config


@dataclass(frozen=True)
class Verdict:
    cell: int           # code cell number, from 1
    recorded: str
    now: str
    verdict: str        # match | DIFFERENT | skipped | ERROR

    @property
    def ok(self) -> bool:
        return self.verdict in ("match", "skipped")


def describe(record: dict, status_only: bool) -> str:
    if status_only:
        return status_of(record)
    return (f"{status_of(record)}, out {record['stdout_sha256'][:8]}, "
            f"err {record['stderr_sha256'][:8]}")


def compare(recorded: dict, now: dict, status_only: bool) -> bool:
    keys = ["exit_code", "signal", "timed_out"]
    if not status_only:
        keys += ["stdout_sha256", "stderr_sha256"]
    return all(recorded.get(key) == now.get(key) for key in keys)


def verify_record(cell: int, record: dict, status_only: bool) -> Verdict:
    recorded = describe(record, status_only)
    if record.get("stopped"):
        return Verdict(cell, recorded, "-", "skipped")   # a person pressed Stop: not repeatable
    if record.get("session"):
        # It ran after other cells in a long-lived sandbox: a fresh re-run would not be the same.
        return Verdict(cell, recorded, f"(ran in session {record['session']})", "skipped")
    try:
        config = SandboxConfig.from_dict(record["config"])
        now = record_of(run_config(config))
    except (SandboxError, KeyError, TypeError) as exc:
        return Verdict(cell, recorded, f"cannot run: {exc}", "ERROR")
    verdict = "match" if compare(record, now, status_only) else "DIFFERENT"
    return Verdict(cell, recorded, describe(now, status_only), verdict)


def verify_notebook(path: str, status_only: bool = False,
                    on_verdict: Callable[[Verdict], None] | None = None) -> list[Verdict]:
    """Re-run every recorded sandbox run of the notebook at `path`, freshly."""
    notebook = nbformat.read(path, as_version=4)
    verdicts = []
    for cell, record in records_in(notebook):
        verdict = verify_record(cell, record, status_only)
        verdicts.append(verdict)
        if on_verdict:
            on_verdict(verdict)
    return verdicts


def table(verdicts: list[Verdict]) -> str:
    rows = [("cell", "recorded", "now", "verdict")] + [
        (str(v.cell), v.recorded, v.now, v.verdict) for v in verdicts]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip()
                     for row in rows)
