"""Executing notebooks in a real kernel (nbclient) and showing what they printed."""

from __future__ import annotations

from pathlib import Path

import nbformat

KERNEL_NAME = "python3"
CELL_TIMEOUT = 300  # seconds; nbclient's own default is no limit


def execute_notebook(path: Path, output: Path | None = None,
                     timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run every cell of `path` in a fresh kernel, in the notebook's directory; save to `output`."""
    from nbclient import NotebookClient
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name=KERNEL_NAME, timeout=timeout,
                            resources={"metadata": {"path": str(Path(path).resolve().parent)}})
    client.execute()
    if output is not None:
        nbformat.write(notebook, output)
    return notebook


def output_text(output: nbformat.NotebookNode) -> str:
    from .records import MIME
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return f"{output.ename}: {output.evalue}\n"
    data = output.get("data", {})
    if MIME in data:
        return "⟨record⟩ " + data.get("text/plain", "") + "\n"
    return data.get("text/plain", "") + ("\n" if data.get("text/plain") else "")


def summarize(notebook: nbformat.NotebookNode) -> str:
    """Each code cell's source and outputs, as plain text."""
    from .records import code_cells
    lines = []
    for number, cell in code_cells(notebook):
        lines.append(f"\n── cell {number} " + "─" * 50)
        lines += [f"  {line}" for line in cell.source.splitlines()]
        text = "".join(output_text(o) for o in cell.get("outputs", []))
        if text:
            lines.append("  ┄┄ output ┄┄")
            lines += [f"  {line}" for line in text.rstrip("\n").splitlines()]
    return "\n".join(lines)


def export_html(notebook: nbformat.NotebookNode, path: Path) -> Path:
    """An HTML export of an executed notebook (nbconvert)."""
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter().from_notebook_node(notebook)
    Path(path).write_text(body, encoding="utf-8")
    return Path(path)
