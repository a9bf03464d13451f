"""Latency of a network cell against `runsc --network=host do --ip ... true`.

Interleaved in one run (reference, sandbox mode, host mode, ...), medians and
ratios (goal: <= 0.85), plus the time the network adds to a cell's critical
path: set-up (plan, address check, namespace, veth, addresses, route, NAT) is
timed inside run(); teardown runs after the cell returns, and is timed too.

    .venv/bin/python benchmarks/bench_network.py [--rounds N] [--runsc PATH]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

import sandbox_magic
from sandbox_magic import network

stage_times: dict[str, list[float]] = {}


def timed_stage(name, function):
    def wrapper(first, *args, **kwargs):
        start = time.perf_counter()
        try:
            return function(first, *args, **kwargs)
        finally:
            # prepare() gets the config, apply()/teardown() the plan: count network runs only.
            if getattr(first, "ip", None) or getattr(first, "has_veth", False):
                stage_times.setdefault(name, []).append(time.perf_counter() - start)
    return wrapper


def instrument() -> None:
    # The runner looks these up on the module at call time.
    for name in ("prepare", "apply", "teardown"):
        setattr(network, name, timed_stage(name, getattr(network, name)))


def ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runsc", default=shutil.which("runsc"))
    args = parser.parse_args()
    instrument()
    reference_cmd = [args.runsc, "--network=host", "do", "--ip", "10.213.60.2", "true"]
    cases = {
        "runsc --network=host do --ip": lambda: subprocess.run(
            reference_cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        # Fresh boots (standby=False): bench_fast.py measures cells served by a standby.
        'run("true", ip=...) netstack': lambda: sandbox_magic.run(
            "true", ip="10.213.61.2", runsc=args.runsc, standby=False).check(),
        'run("true", ip=..., network="host")': lambda: sandbox_magic.run(
            "true", ip="10.213.62.2", network="host", runsc=args.runsc, standby=False).check(),
        'run("true") no network': lambda: sandbox_magic.run(
            "true", runsc=args.runsc, standby=False).check(),
    }
    version = subprocess.run([args.runsc, "--version"], capture_output=True, text=True)
    print(f"{version.stdout.splitlines()[0]}; {args.rounds} interleaved rounds, 2 warm-ups")
    for _ in range(2):
        for action in cases.values():
            action()
    sandbox_magic.wait_for_teardowns()
    stage_times.clear()
    samples = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, action in cases.items():
            start = time.perf_counter()
            action()
            samples[name].append(time.perf_counter() - start)
            time.sleep(0.06)   # as between cells: lets the background teardown finish
    sandbox_magic.wait_for_teardowns()
    reference = ms(samples["runsc --network=host do --ip"])
    for name, values in samples.items():
        ratio = ms(values) / reference
        print(f"{name:<38} median {ms(values):7.1f} ms   ratio {ratio:4.2f}")
    setup = [p + a for p, a in zip(stage_times["prepare"], stage_times["apply"])]
    print(f"network set-up on the critical path: median {ms(setup):5.1f} ms "
          f"(prepare {ms(stage_times['prepare']):.1f} + apply {ms(stage_times['apply']):.1f}; "
          f"goal <= 30 ms; n={len(setup)})")
    print(f"network teardown, after the cell returned: median "
          f"{ms(stage_times['teardown']):5.1f} ms")
    back_to_back = []
    for _ in range(max(5, args.rounds // 2)):
        start = time.perf_counter()
        sandbox_magic.run("true", ip="10.213.61.2", runsc=args.runsc, standby=False).check()
        back_to_back.append(time.perf_counter() - start)
    sandbox_magic.wait_for_teardowns()
    print(f"same address back to back (waits for the previous teardown): median "
          f"{ms(back_to_back):.1f} ms, ratio {ms(back_to_back) / reference:.2f}")


if __name__ == "__main__":
    main()
