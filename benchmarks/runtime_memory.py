"""Resident memory of the ONNX Runtime backend over many calls with alternating (batch, seq) shapes.

    python benchmarks/runtime_memory.py PACKAGE [--calls 1000] [--json out.json]

Runs the transformer ``--calls`` times cycling through several sequence lengths and batch sizes, once per
session-option setting, and records RSS (from /proc/self/statm) along the way. Each setting runs in its own
subprocess so one setting's allocations cannot hide another's. Linux only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import rss_mib

SETTINGS = {
    "ONNX Runtime defaults (arena, mem pattern on)": dict(memory="arena", memory_pattern=True),
    "memory=arena (runtime default: mem pattern off)": dict(memory="arena"),
    "memory=shrink": dict(memory="shrink"),
    "memory=off": dict(memory="off"),
}
SHAPES = [(1, 64), (2, 1024), (1, 256), (2, 576), (1, 1000), (2, 100)]


def measure(package: str, calls: int, options: dict) -> dict:
    from engines.backends import create_backend

    backend = create_backend("onnxruntime", package, threads=1, **options).activate()
    contract = backend.manifest.graph
    trace, seconds = [], 0.0
    for i in range(calls):
        b, n = SHAPES[i % len(SHAPES)]
        feed = contract.example_feed(b, n, seed=i)
        start = time.perf_counter()
        backend.infer(feed)
        seconds += time.perf_counter() - start
        if (i + 1) % max(1, calls // 10) == 0 or i == len(SHAPES) - 1:
            trace.append((i + 1, round(rss_mib(), 1)))
    first_cycle = trace[0][1]
    return {"rss_mib": trace, "growth_after_first_cycle_mib": round(trace[-1][1] - first_cycle, 1),
            "peak_mib": max(r for _, r in trace), "seconds_in_infer": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.package, args.calls, SETTINGS[args.one])))
        return
    results = {}
    for name in SETTINGS:
        proc = subprocess.run([sys.executable, __file__, args.package, "--calls", str(args.calls), "--one", name],
                              capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout)
    report = {"calls": args.calls, "shapes (batch, seq)": SHAPES, "results": results}
    lines = ["| session options | RSS after first cycle (MiB) | RSS range over the run (MiB) | RSS after last call "
             "(MiB) | time in infer (s) |", "|---|---|---|---|---|"]
    for name, r in results.items():
        values = [v for _, v in r["rss_mib"]]
        lines.append(f"| {name} | {values[0]} | {min(values)}–{max(values)} | {values[-1]} | {r['seconds_in_infer']} |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.splitext(args.json)[0] + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
