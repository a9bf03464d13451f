"""Soak: 300 mixed cells in one real kernel (fresh, network, session, failing, timing
out, interrupted). Nothing is left at the end and the kernel's RSS stays flat."""

import time

import pytest

CYCLE = [
    ("fresh", "%%sandbox --out o\necho fresh $RANDOM"),
    ("fresh", "%%sandbox --out o\nseq 1 2000 | tail -1"),
    ("fresh", "%%sandbox --out o --hostname soak\nhostname"),
    ("network", "%%sandbox --ip 10.213.120.2 --out o\ncat /etc/hosts | tail -1"),
    ("network", "%%sandbox --ip 10.213.120.2 --no-nat --out o\ntrue"),
    ("session", "%%sandbox --session soak --out o\necho $((n=${n:-0}+1)) >> /tmp/count; wc -l < /tmp/count"),
    ("session", "%%sandbox --session soak --out o --timeout 5\nls /tmp | wc -l"),
    ("failing", "%%sandbox --no-raise-error --out o\nexit 3"),
    ("timeout", "%%sandbox --timeout 0.5 --no-raise-error --out o\nsleep 5"),
    ("interrupt", "%%sandbox\necho started\nsleep 30"),
]
CELLS = 300


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def execute(manager, client, kind, code):
    interrupted = []

    def on_message(message):
        if kind == "interrupt" and not interrupted and message["msg_type"] == "stream" \
                and "started" in message["content"]["text"]:
            interrupted.append(True)
            manager.interrupt_kernel()

    reply = client.execute_interactive(code, timeout=120, output_hook=on_message)
    status = reply["content"]["status"]
    if kind == "interrupt":
        assert status == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    else:
        assert status == "ok", (kind, reply["content"])


@pytest.mark.slow
def test_soak_300_mixed_cells(kernel, capsys):
    manager, client = kernel
    pid = manager.provisioner.process.pid
    client.execute_interactive("%sandbox start soak", timeout=60)
    start = time.monotonic()
    counts: dict[str, int] = {}
    baseline = None
    for number in range(CELLS):
        kind, code = CYCLE[number % len(CYCLE)]
        execute(manager, client, kind, code)
        counts[kind] = counts.get(kind, 0) + 1
        if number == 2 * len(CYCLE) - 1:
            baseline = rss_mb(pid)      # after warm-up: imports, caches, first standbys
    final = rss_mb(pid)
    reply = client.execute_interactive("%sandbox stop soak", timeout=60)
    assert reply["content"]["status"] == "ok"
    elapsed = time.monotonic() - start
    with capsys.disabled():
        print(f"\nsoak: {CELLS} cells {counts} in {elapsed:.0f} s; kernel RSS "
              f"{baseline:.1f} MB after {2 * len(CYCLE)} cells, {final:.1f} MB at the end "
              f"(growth {final - baseline:+.1f} MB, goal <= 50 MB)")
    assert final - baseline <= 50
