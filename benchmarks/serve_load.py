"""Load on fit-serve: C concurrent clients sending mixed-size requests, batching off vs on, in one run.

    python benchmarks/serve_load.py [PACKAGE] [--clients 1,4,8,16] [--requests-per-client 8] [--max-seconds 40]
                                    [--max-batch-size 8] [--threads 2] [--out benchmarks/results/serve_load]

Starts a local Ray (localhost only) and deploys the application twice: ``--max-batch-size 1`` (one request per
engine call: batching off) and ``--max-batch-size B`` (on). For each client count C, C threads each send
``--requests-per-client`` requests one after another (sizes and classes cycle through a fixed mixed list;
the package's default sampler, steps and guidance), after a short warm-up; a phase stops early after
``--max-seconds``. Reports images/s, p50/p95/p99 latency, and the mean requests and padded tokens per engine call
(from each answer's ``timing``). Writes OUT.json and OUT.md (the markdown table quoted in docs/serving.md).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fit_serve.client import generate  # noqa: E402

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


def run(package, clients: list[int], per_client: int, max_seconds: float, max_batch_size: int, threads: int,
        batch_wait_ms: float) -> dict:
    import ray
    from ray import serve

    from fit_serve.app import build

    port = 8000 + os.getpid() % 1000
    base = f"http://127.0.0.1:{port}"
    results = {}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for label, size in (("off", 1), ("on", max_batch_size)):
            config = {"package": package, "threads": threads, "max_batch_size": size, "batch_wait_ms": batch_wait_ms,
                      "max_queue": 1024}
            serve.run(build(config), name="fit", route_prefix="/")
            load_phase(base, 2, 2, max_seconds)                        # warm-up
            results[label] = [load_phase(base, c, per_client, max_seconds) for c in clients]
            for row in results[label]:
                print(f"batching {label:3s} {json.dumps(row)}", flush=True)
            serve.delete("fit")
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


def markdown(results: dict, meta: dict) -> str:
    load = ", ".join(f"{x:g}" for x in meta["load_average_after"])
    lines = [f"{meta['date']}, {meta['machine']} (load average {load} after the run); {meta['package']}, "
             f"{meta['settings']}.", "",
             "| clients | batching | images/s | p50 s | p95 s | p99 s | requests / call | tokens / call | speed-up |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for off, on in zip(results["off"], results["on"]):
        for label, row in (("off", off), ("on", on)):
            gain = f"{row['images_per_s'] / off['images_per_s']:.2f}x" if label == "on" else ""
            lines.append(f"| {row['clients']} | {label} | {row['images_per_s']} | {row['p50_s']} | {row['p95_s']} | "
                         f"{row['p99_s']} | {row['requests_per_call']} | {row['tokens_per_call']} | {gain} |")
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
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load"))
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    package = None if args.package is None else str(Path(args.package).resolve())
    results = run(package, clients, args.requests_per_client, args.max_seconds, args.max_batch_size, args.threads,
                  args.batch_wait_ms)
    from engines.manifest import load_manifest
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
    table = markdown(results, meta)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
