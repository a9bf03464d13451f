"""Output at scale: whole streams on disk, bounded display, linear --out, flat memory."""

import gc
import os
import subprocess
import sys
import textwrap

from sandbox_magic import run
from sandbox_magic.streams import BoundedWriter


def test_bounded_writer_shows_head_and_tail():
    shown = []
    writer = BoundedWriter(shown.append, limit=10)
    for piece in ["abc", "defgh", "ijklmnop", "qrstuvwxyz"]:
        writer.write(piece)
    writer.close()
    text = "".join(shown)
    assert text.startswith("abcde") and text.endswith("vwxyz")
    assert "[… 16 characters left out …]" in text


def test_bounded_writer_passes_small_output_through():
    shown = []
    writer = BoundedWriter(shown.append, limit=100)
    writer.write("hello\n")
    writer.close()
    assert "".join(shown) == "hello\n"


def test_large_output_goes_to_a_file_removed_with_the_result():
    size = 5_000_000
    result = run(f"head -c {size} /dev/zero | tr '\\0' x; echo; echo done >&2")
    assert result.stdout_output.bytes == size + 1 and result.stdout_output.cached is None
    path = result.stdout_path
    assert os.path.getsize(path) == size + 1
    assert result.stdout == "x" * size + "\n"          # the whole text, read back
    assert result.stderr == "done\n" and result.stderr_output.cached == "done\n"
    del result
    gc.collect()
    assert not os.path.exists(path)


def test_magic_shows_a_bounded_part_and_out_gets_everything(shell, capsys):
    shell.run_line_magic("config", "SandboxMagics.output_limit = 1000")
    shell.run_line_magic("config", "SandboxMagics.record = False")
    shell.run_cell_magic("sandbox", "--result r", "seq 1 100000")
    shown = capsys.readouterr().out
    assert shown.startswith("1\n2\n3\n") and shown.rstrip().endswith("100000")
    assert "characters left out; all of it is in result.stdout" in shown
    assert len(shown) < 2000
    shell.run_cell_magic("sandbox", "--out whole", "seq 1 100000")
    assert shell.user_ns["whole"] == "".join(f"{i}\n" for i in range(1, 100001))


def test_memory_stays_flat_for_a_large_output():
    """100 MB through the magic, in a real InteractiveShell: the process's peak RSS
    grows far less than the output (the benchmark measures 300 MB in a kernel)."""
    code = textwrap.dedent("""
        import io, resource
        from contextlib import redirect_stdout
        from IPython.testing.globalipapp import start_ipython
        shell = start_ipython()
        shell.run_line_magic("load_ext", "sandbox_magic")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        shown = io.StringIO()
        with redirect_stdout(shown):
            shell.run_cell_magic("sandbox", "--result r",
                                 "head -c 100000000 /dev/zero | tr '\\\\0' x")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = shell.user_ns["r"]
        assert result.ok and result.stdout_output.bytes == 100_000_000, result
        assert len(shown.getvalue()) < 300_000
        print((after - before) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    growth_mb = int(done.stdout.strip().splitlines()[-1])
    assert growth_mb < 64, f"peak RSS grew by {growth_mb} MB"
