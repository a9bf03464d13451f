"""Per-cell latency of sandbox_magic.run("true") against `runsc --network=none do true`.

Both are measured interleaved in one run (A, B, A, B, ...) so that machine load
affects them alike; prints medians, quartiles and the ratio (goal: <= 1.0).

    .venv/bin/python benchmarks/bench_cell.py [--rounds N] [--runsc PATH]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

import sandbox_magic


def time_once(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def runsc_do(runsc: str) -> None:
    subprocess.run([runsc, "--network=none", "do", "true"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sandbox_run(runsc: str) -> None:
    # A fresh boot each time: a standby would serve the cell (see bench_fast.py for that).
    result = sandbox_magic.run("true", runsc=runsc, standby=False)
    assert result.ok, result


def describe(name: str, samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=4)
    return (f"{name:<34} median {statistics.median(samples) * 1000:7.1f} ms   "
            f"(q1 {q[0] * 1000:6.1f}, q3 {q[2] * 1000:6.1f}, n={len(samples)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runsc", default=shutil.which("runsc"))
    args = parser.parse_args()
    version = subprocess.run([args.runsc, "--version"], capture_output=True,
                             text=True).stdout.split("\n")[0]
    print(f"{version} at {args.runsc}; {args.rounds} interleaved rounds after 3 warm-ups")
    for _ in range(3):
        runsc_do(args.runsc)
        sandbox_run(args.runsc)
    ours, reference = [], []
    for _ in range(args.rounds):
        reference.append(time_once(lambda: runsc_do(args.runsc)))
        ours.append(time_once(lambda: sandbox_run(args.runsc)))
    print(describe("runsc --network=none do true", reference))
    print(describe('sandbox_magic.run("true")', ours))
    ratio = statistics.median(ours) / statistics.median(reference)
    print(f"ratio run()/runsc do: {ratio:.2f}  (goal <= 1.00)")


if __name__ == "__main__":
    main()
