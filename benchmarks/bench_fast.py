"""Fast cells: fresh, standby, network, session and output throughput, against runsc do.

One run on this machine prints medians and ratios (goals in brackets):
  fresh cell vs `runsc --network=none do true`                        [<= 1.0]
  fresh cell after 1 s idle (served by a standby) vs the same          [<= 0.4]
  network cell vs `runsc --network=host do --ip ... true`              [<= 0.85]
  network cell after 1 s idle (standby with its network built)        [<= 0.4]
  session cell vs `runsc --network=none do true`                       [<= 0.3]
      (and, for information, a session cell right after another)
  50 MB of output vs `runsc --network=none do sh -c ...` capturing it  [>= 0.8 throughput]
      (and, for information, IPython's %%bash streaming the same)
  kernel peak RSS growth for a 300 MB cell in a real kernel           [<= 64 MB]

    .venv/bin/python benchmarks/bench_fast.py [--rounds N]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import redirect_stdout

import sandbox_magic
from sandbox_magic.standby import STANDBYS
from sandbox_magic.streams import BoundedWriter

RUNSC = shutil.which("runsc")
FIFTY_MB = "head -c 50000000 /dev/zero | tr '\\0' x"


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def quiet(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def median_ms(samples) -> float:
    return statistics.median(samples) * 1000


def report(name: str, ours: list[float], reference: list[float], goal: str) -> None:
    ratio = statistics.median(ours) / statistics.median(reference)
    print(f"{name:<44} {median_ms(ours):7.1f} ms vs {median_ms(reference):7.1f} ms  "
          f"ratio {ratio:4.2f}  ({goal})")


def latency(rounds: int) -> None:
    do_none = [RUNSC, "--network=none", "do", "true"]
    do_net = [RUNSC, "--network=host", "do", "--ip", "10.213.200.2", "true"]
    fresh, ref_none, standby, net, ref_net, net_standby = ([] for _ in range(6))
    session_cells, session_back_to_back = [], []
    with sandbox_magic.Session("bench") as session:
        for _ in range(rounds):
            ref_none.append(timed(lambda: quiet(do_none)))
            fresh.append(timed(lambda: sandbox_magic.run("true", standby=False).check()))
            sandbox_magic.run("true").check()            # leaves a standby
            time.sleep(1.0)
            standby.append(timed(lambda: sandbox_magic.run("true").check()))
            ref_net.append(timed(lambda: quiet(do_net)))
            net.append(timed(lambda: sandbox_magic.run("true", ip="10.213.201.2",
                                                       standby=False).check()))
            sandbox_magic.run("true", ip="10.213.201.2").check()
            time.sleep(1.0)
            net_standby.append(timed(lambda: sandbox_magic.run(
                "true", ip="10.213.201.2").check()))
            STANDBYS.discard()
            sandbox_magic.wait_for_teardowns()
            # A notebook's pace: the kernel was idle before the cell (its process waits).
            session_cells.append(timed(lambda: session.run("true").check()))
            # A loop calling session.run(): the next cell's `runsc exec` is not up yet.
            session_back_to_back.append(timed(lambda: session.run("true").check()))
    report("fresh cell (no standby)", fresh, ref_none, "goal <= 1.0")
    report("fresh cell after 1 s idle (standby)", standby, ref_none, "goal <= 0.4")
    report("network cell (no standby)", net, ref_net, "goal <= 0.85")
    report("network cell after 1 s idle (standby)", net_standby, ref_net, "goal <= 0.4")
    report("session cell", session_cells, ref_none, "goal <= 0.3")
    report("  session cell right after another", session_back_to_back, ref_none,
           "for information")


def throughput(rounds: int) -> None:
    ours, reference, bash = [], [], []
    from IPython.testing.globalipapp import start_ipython
    shell = start_ipython()
    for _ in range(rounds):
        reference.append(timed(lambda: subprocess.run(
            [RUNSC, "--network=none", "do", "sh", "-c", FIFTY_MB], capture_output=True,
            check=True)))
        writer = BoundedWriter(lambda text: None, limit=200_000)
        ours.append(timed(lambda: sandbox_magic.run(FIFTY_MB, on_stdout=writer.write,
                                                    standby=False).check()))
        with redirect_stdout(io.StringIO()):
            bash.append(timed(lambda: shell.run_cell_magic("bash", "", FIFTY_MB)))
    size = 50.0
    print(f"{'50 MB output: run() with bounded display':<44} {size / statistics.median(ours):6.1f} MB/s"
          f" vs runsc do captured {size / statistics.median(reference):6.1f} MB/s  throughput "
          f"ratio {statistics.median(reference) / statistics.median(ours):4.2f}  (goal >= 0.8)")
    print(f"{'  for information: IPython %%bash':<44} {size / statistics.median(bash):6.1f} MB/s")


KERNEL_CODE = """
import resource, gc
gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""


def kernel_rss() -> None:
    from jupyter_client.manager import start_new_kernel
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        client.execute_interactive("%load_ext sandbox_magic\n" + KERNEL_CODE, timeout=60)
        client.execute_interactive(
            "%%sandbox --result big\nhead -c 300000000 /dev/zero | tr '\\0' x",
            timeout=600, output_hook=lambda message: None)
        report_lines = []
        client.execute_interactive(
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print((after - before) // 1024, big.stdout_output.bytes)", timeout=60,
            output_hook=lambda m: report_lines.append(m["content"].get("text", "")))
        growth, size = "".join(report_lines).split()
        print(f"{'kernel peak RSS growth, 300 MB cell':<44} {growth} MB for {int(size) / 1e6:.0f} MB"
              f" of output  (goal <= 64 MB)")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    version = subprocess.run([RUNSC, "--version"], capture_output=True, text=True).stdout
    print(f"{version.splitlines()[0]}; {args.rounds} interleaved rounds; medians")
    latency(args.rounds)
    throughput(max(3, args.rounds // 2))
    kernel_rss()


if __name__ == "__main__":
    sys.exit(main())
