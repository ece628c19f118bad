"""Load on fit-serve: C concurrent clients sending mixed-size requests, batching off vs on, in one run; then the fault
and overload phases (benchmarks/serve_faults.py: a replica killed, a burst past --max-queue, stalled uploads,
SIGTERM with requests in flight).

    python benchmarks/serve_load.py [PACKAGE] [--clients 1,4,8,16] [--requests-per-client 8] [--max-seconds 40]
                                    [--max-batch-size 8] [--threads 0] [--out benchmarks/results/serve_load]
                                    [--phases load,kill,burst,stalled,sigterm] [--quick]
                                    [--serve-args "--api-key K"] [--api-key K]

Only a full run (every phase, not --quick) writes benchmarks/results/serve_load.{json,md} by default; a partial or
quick run writes /tmp/serve_load_quick.{json,md} unless --out says otherwise.

Starts a local Ray (localhost only) and deploys the application twice, side by side, one replica each:
``--max-batch-size 1`` (one request per engine call: batching off) and ``--max-batch-size B`` (on). Only one of
them gets requests at a time, and for each client count its two phases run back to back, so a change in the
machine's load hits both. In a phase, C client threads each send ``--requests-per-client`` requests one after
another (sizes and classes cycle through a fixed mixed list; the package's default sampler, steps and guidance),
after a short warm-up; a phase stops early after ``--max-seconds``. Reports images/s, p50/p95/p99 latency, and
the mean requests and padded tokens per engine call (from each answer's ``timing``). First, for reference, the
same mixed requests through the engine alone: one call each vs packed as the server packs them. Writes OUT.json
and OUT.md (the tables quoted in docs/serving.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from common import ROOT, cpu_name
from fit_serve.batching import Item, bucket_budget, group_key, plan_calls  # after common: the repository's path
from fit_serve.client import generate
from serve_faults import FAULT_PHASES, run_faults
from serve_faults import markdown as fault_markdown

SIZES = [(64, 64), (96, 64), (80, 80), (64, 96), (112, 48), (48, 112), (96, 96), (128, 64), (64, 128), (80, 64)]


def bodies(count: int, offset: int) -> list[dict]:
    return [{"width": w, "height": h, "class": (offset + i) % 8, "seed": offset + i}
            for i, (w, h) in ((i, SIZES[(offset + i) % len(SIZES)]) for i in range(count))]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def load_phase(base: str, clients: int, per_client: int, max_seconds: float) -> dict:
    """C clients, each sending its requests back to back; the phase's summary."""
    answers, lock = [], threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client(index: int) -> None:
        for body in bodies(per_client, 1000 * index):
            if time.monotonic() > deadline:
                return
            answer = generate(base, body, accept_json=True, timeout=120)
            with lock:
                answers.append(answer)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [a for a in answers if a.status == 200]
    timings = [a.json()["timing"] for a in ok]
    calls = sum(1 / t["batch_requests"] for t in timings)          # each call is reported by each of its requests
    latencies = [a.seconds for a in ok]
    return {
        "clients": clients, "requests": len(answers), "failed": len(answers) - len(ok), "seconds": round(wall, 2),
        "images_per_s": round(len(ok) / wall, 2),
        "p50_s": round(percentile(latencies, 50), 3), "p95_s": round(percentile(latencies, 95), 3),
        "p99_s": round(percentile(latencies, 99), 3),
        "requests_per_call": round(len(ok) / calls, 2),
        "tokens_per_call": round(sum(t["batch_tokens"] / t["batch_requests"] for t in timings) / calls, 1),
    }


def engine_only(package, threads: int, counts: list[int], repeats: int = 3) -> list[dict]:
    """The same mixed requests without the server: one engine call each vs packed as the server packs them
    (fit_serve.batching), sampling and decoding included; medians of ``repeats`` alternating runs."""
    import statistics

    from engines.pipeline import load

    rows = []
    with load(package, threads=threads) as pipe:
        buckets = [b.tokens for b in pipe.manifest.sizes.buckets]

        def generate_calls(calls):
            start = time.perf_counter()
            for call in calls:
                for latent in pipe.sample_latents(call):
                    pipe.decode(latent)
            return time.perf_counter() - start

        generate_calls([pipe.prepare(64, 64, 0, 0)])                   # warm-up
        for count in counts:
            jobs = [pipe.prepare(w, h, i % 8, i)[0] for i, (w, h) in ((i, SIZES[i % len(SIZES)]) for i in range(count))]
            tokens = [pipe.tokens(j.request.width, j.request.height) for j in jobs]
            items = [Item(group_key(jobs[i].settings, True, bucket_budget(buckets, pipe.max_tokens, n), i), n)
                     for i, n in enumerate(tokens)]
            packed = [[jobs[i] for i in call] for call in plan_calls(items, count, count * pipe.max_tokens)]
            one, many = [], []
            for _ in range(repeats):
                one.append(generate_calls([[j] for j in jobs]))
                many.append(generate_calls(packed))
            one_s, many_s = statistics.median(one), statistics.median(many)
            rows.append({"requests": count, "engine_calls_packed": len(packed), "one_at_a_time_s": round(one_s, 3),
                         "packed_s": round(many_s, 3), "speedup": round(one_s / many_s, 2)})
            print(f"engine only {json.dumps(rows[-1])}", flush=True)
    return rows


def run(package, clients: list[int], per_client: int, max_seconds: float, max_batch_size: int, threads: int,
        batch_wait_ms: float) -> dict:
    import ray
    from ray import serve

    from fit_serve.app import build

    port = 8000 + os.getpid() % 1000
    base = f"http://127.0.0.1:{port}"
    results = {"off": [], "on": []}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for label, size in (("off", 1), ("on", max_batch_size)):
            config = {"package": package, "threads": threads, "max_batch_size": size, "batch_wait_ms": batch_wait_ms,
                      "max_queue": 1024, "replica_cpus": 0}
            serve.run(build(config), name=label, route_prefix=f"/{label}")
            load_phase(f"{base}/{label}", 2, 2, max_seconds)            # warm-up
        for clients_now in clients:                                     # off and on alternate: drift hits both
            for label in ("off", "on"):
                row = load_phase(f"{base}/{label}", clients_now, per_client, max_seconds)
                results[label].append(row)
                print(f"batching {label:3s} {json.dumps(row)}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def markdown(results: dict, engine: list[dict], meta: dict) -> str:
    load = ", ".join(f"{x:g}" for x in meta["load_average_after"])
    lines = [f"{meta['date']}, {meta['machine']} (load average {load} after the run); {meta['package']}, "
             f"{meta['settings']}."]
    if not results["off"]:                                  # the load phase did not run
        return "\n".join(lines) + "\n"
    lines += ["", "| clients | batching | images/s | p50 s | p95 s | p99 s | requests / call | tokens / call | "
                  "speed-up |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for off, on in zip(results["off"], results["on"]):
        for label, row in (("off", off), ("on", on)):
            gain = f"{row['images_per_s'] / off['images_per_s']:.2f}x" if label == "on" else ""
            lines.append(f"| {row['clients']} | {label} | {row['images_per_s']} | {row['p50_s']} | {row['p95_s']} | "
                         f"{row['p99_s']} | {row['requests_per_call']} | {row['tokens_per_call']} | {gain} |")
    lines += ["", "The same engine without the server (sampling and decoding the first N of the mixed sizes):", "",
              "| requests | one call each, s | packed, s (engine calls) | speed-up |", "|---:|---:|---:|---:|"]
    for row in engine:
        lines.append(f"| {row['requests']} | {row['one_at_a_time_s']} | {row['packed_s']} "
                     f"({row['engine_calls_packed']}) | {row['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default=None, help="model package (default: the shipped model)")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=40.0, help="time limit of each phase")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads of the replica (0 = auto)")
    parser.add_argument("--out", default=None, help="OUT.json and OUT.md (default: benchmarks/results/serve_load for "
                                                    "a full run, /tmp/serve_load_quick otherwise)")
    parser.add_argument("--phases", default=",".join(("load",) + FAULT_PHASES))
    parser.add_argument("--quick", action="store_true", help="short fault phases and small counts (a check)")
    parser.add_argument("--fault-clients", type=int, default=4, help="looping clients while a replica is killed")
    parser.add_argument("--fault-steps", type=int, default=8, help="steps of the fault phases' requests")
    parser.add_argument("--burst", type=int, default=60, help="requests sent at once in the burst phase")
    parser.add_argument("--max-queue", type=int, default=4, help="fit-serve --max-queue of the burst phase")
    parser.add_argument("--stalled", type=int, default=16, help="stalled uploads")
    parser.add_argument("--in-flight", type=int, default=6, help="requests in flight at SIGTERM")
    parser.add_argument("--serve-args", default="", help="more fit-serve options for the fault phases")
    parser.add_argument("--api-key", default="", help="sent as Authorization: Bearer KEY in the fault phases")
    args = parser.parse_args()
    phases = args.phases.split(",")
    unknown = sorted(set(phases) - {"load", *FAULT_PHASES})
    if unknown:
        parser.error(f"unknown phase {unknown[0]}; phases: load, {', '.join(FAULT_PHASES)}")
    full = not args.quick and set(phases) == {"load", *FAULT_PHASES}
    args.out = args.out or str(ROOT / "benchmarks" / "results" / "serve_load" if full else "/tmp/serve_load_quick")
    clients = [int(c) for c in args.clients.split(",")]
    package = None if args.package is None else str(Path(args.package).resolve())
    args.common = [] if package is None else [package]
    engine, results = [], {"off": [], "on": []}
    if "load" in phases:
        engine = engine_only(package, args.threads, [4, 8])
        results = run(package, clients, args.requests_per_client, args.max_seconds, args.max_batch_size,
                      args.threads, args.batch_wait_ms)
    faults = run_faults(args, [p for p in FAULT_PHASES if p in phases], args.quick)
    from engines.package import load_manifest
    from engines.pipeline import DEFAULT_MODEL_DIR

    manifest = load_manifest(package or DEFAULT_MODEL_DIR)
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()}-core {cpu_name()} CPU, {platform.system()}",
        "package": manifest.name,
        "settings": (f"{manifest.sampler.method} {manifest.sampler.steps} steps, cfg {manifest.guidance.default_scale}"
                     f", 1 replica, ONNX Runtime threads {args.threads or 'auto'}, batch on = --max-batch-size "
                     f"{args.max_batch_size} --batch-wait-ms {args.batch_wait_ms:g}, "
                     f"{args.requests_per_client} requests per client, "
                     f"sizes {', '.join(f'{w}x{h}' for w, h in SIZES)}"),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    table = markdown(results, engine, meta) + "".join(line + "\n" for line in fault_markdown(faults))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {**meta, "phases": phases, "quick": args.quick, "results": results, "engine_only": engine,
              "faults": faults}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
