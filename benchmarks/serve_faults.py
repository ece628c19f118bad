"""Fault and overload phases of benchmarks/serve_load.py, each against a ``fit-serve`` process of its own (the command
line of this checkout, whatever its server code), on a free localhost port:

    kill      2 replicas under C looping clients; SIGKILL one replica process: requests answered / 5xx / lost,
              when a replacement replica had loaded the model (half the survivor's memory) and when the last
              failure came
    burst     a burst of B requests at a server with --max-queue Q: statuses, the 503s' content type and
              Retry-After, how fast the 503s came, and /healthz probed during the burst
    stalled   S uploads that send their headers and one body byte, then stall; meanwhile a generation request and
              /healthz: answered or not, in how long; whether the server dropped the stalled connections
    sigterm   R requests in flight, then SIGTERM: statuses, exit code, seconds to exit, Ray's failure line or not;
              requests sent during the drain (one every 0.5 s until the exit): statuses and content types

A model replica is found among the fit-serve process's descendants by its Ray process title
(``ray::ServeReplica:fit:FitModel``: application and deployment). Requests carry ``Authorization: Bearer KEY``
when an API key is given.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ROOT
from fit_serve.app import APP_NAME
from fit_serve.client import Answer, call
from fit_serve.model import MODEL_NAME

FAULT_PHASES = ("kill", "burst", "stalled", "sigterm")


class Server:
    """One ``fit-serve`` process on a free port; ``base`` is its URL."""

    def __init__(self, args: list[str], extra: str = "", api_key: str = ""):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "cli.serve", "--port", str(self.port), *args, *shlex.split(extra)]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.stderr = ""

    def wait_healthy(self, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fit-serve exited: {self.process.communicate()[1][-2000:]}")
            if call(self.base + "/healthz", headers=self.headers, timeout=2).status == 200:
                return
            time.sleep(0.3)
        raise RuntimeError("fit-serve did not become healthy")

    def generate(self, body: dict, timeout: float = 120) -> Answer:
        return call(self.base + "/v1/generate", "POST", body, self.headers, timeout)

    def stop(self, signum: int = signal.SIGINT, timeout: float = 180) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            self.stderr = self.process.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.stderr = self.process.communicate()[1]
        return self.process.returncode

    def model_replicas(self) -> list[int]:
        """pids of the model replica processes below this server, largest resident memory first."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(parent, []).append(int(entry.name))
        found, frontier = {}, [self.process.pid]
        while frontier:
            pid = frontier.pop()
            for child in children.get(pid, []):
                frontier.append(child)
                try:
                    title = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    rss = int(Path(f"/proc/{child}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
                except (OSError, ValueError):
                    continue
                if title.startswith(f"ray::ServeReplica:{APP_NAME}:{MODEL_NAME}"):
                    found[child] = rss
        return sorted(found, key=lambda p: -found[p])


def body(i: int, steps: int, size: int = 64) -> dict:
    return {"width": size, "height": size, "class": i % 8, "seed": i, "steps": steps}


def summary(answers: list[Answer]) -> dict:
    statuses = Counter(a.status for a in answers)
    return {"requests": len(answers), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "content_types_of_errors": sorted({a.headers.get("content-type", "") for a in answers
                                               if a.status >= 400})}


def kill_phase(args, quick: bool) -> dict:
    """SIGKILL one of 2 model replicas while C clients loop."""
    server = Server(["--replicas", "2", "--replica-cpus", "0.5", "--threads", "1", *args.common], args.serve_args,
                    args.api_key)
    try:
        server.wait_healthy()
        seconds = 12 if quick else 40
        before_kill = 3 if quick else 8
        answers, lock, stop_at = [], threading.Lock(), time.monotonic() + seconds

        def client(index: int) -> None:
            i = 0
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                answer = server.generate(body(1000 * index + i, args.fault_steps))
                with lock:
                    answers.append((sent, time.monotonic(), answer))
                i += 1

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.fault_clients)]
        for t in threads:
            t.start()
        time.sleep(before_kill)
        replicas = server.model_replicas()
        victim = replicas[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replacement_s = None
        while time.monotonic() < stop_at:
            if replacement_s is None and set(server.model_replicas()) - set(replicas):
                replacement_s = round(time.monotonic() - killed_at, 2)
            time.sleep(0.2)
        for t in threads:
            t.join()
        give_up = time.monotonic() + 60                   # a replacement slower than the phase: wait for it
        while replacement_s is None and time.monotonic() < give_up:
            if set(server.model_replicas()) - set(replicas):
                replacement_s = round(time.monotonic() - killed_at, 2)
            time.sleep(0.2)
        failures = [(done, a) for _, done, a in answers if a.status != 200]
        return {"clients": args.fault_clients, "seconds": seconds, "replicas_before": len(replicas),
                **summary([a for _, _, a in answers]),
                "lost_connections": sum(1 for _, a in failures if a.status == 0),
                "replacement_process_s": replacement_s,
                "last_failure_after_kill_s": round(max(done for done, _ in failures) - killed_at, 2) if failures
                else None}
    finally:
        server.stop()


def burst_phase(args, quick: bool) -> dict:
    """B requests at once at --max-queue Q, /healthz probed meanwhile."""
    size = 20 if quick else args.burst
    server = Server(["--max-queue", str(args.max_queue), "--max-batch-size", "4", "--threads", "1", *args.common],
                    args.serve_args, args.api_key)
    try:
        server.wait_healthy()
        probes, done = [], threading.Event()

        def probe() -> None:
            while not done.is_set():
                probes.append(call(server.base + "/healthz", headers=server.headers, timeout=10))
                time.sleep(0.25)

        prober = threading.Thread(target=probe)
        prober.start()
        with ThreadPoolExecutor(size) as pool:
            answers = list(pool.map(lambda i: server.generate(body(i, args.fault_steps * 4)), range(size)))
        done.set()
        prober.join()
        refused = [a for a in answers if a.status == 503]
        return {"burst": size, "max_queue": args.max_queue, **summary(answers),
                "refused_with_retry_after": sum(1 for a in refused if "retry-after" in a.headers),
                "refused_median_s": round(statistics.median(a.seconds for a in refused), 3) if refused else None,
                "served_median_s": round(statistics.median(a.seconds for a in answers if a.status == 200), 3)
                if any(a.status == 200 for a in answers) else None,
                "healthz_during_burst": {str(k): v for k, v in sorted(Counter(p.status for p in probes).items())}}
    finally:
        server.stop()


def stalled_phase(args, quick: bool) -> dict:
    """S uploads stall after one body byte; a real request and /healthz meanwhile."""
    count = 8 if quick else args.stalled
    wait = 20 if quick else 60
    server = Server(["--threads", "1", "--max-batch-size", "2", *args.common], args.serve_args, args.api_key)
    sockets = []
    try:
        server.wait_healthy()
        auth = f"Authorization: {server.headers['Authorization']}\r\n" if "Authorization" in server.headers else ""
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall((f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
                       f"Content-Length: 100\r\n\r\n{{").encode())
            sockets.append(s)
        time.sleep(1)
        with ThreadPoolExecutor(2) as pool:
            generated = pool.submit(server.generate, body(1, args.fault_steps), wait)
            health = pool.submit(call, server.base + "/healthz", "GET", None, server.headers, wait)
            generated, health = generated.result(), health.result()
        dropped = 0
        for s in sockets:
            s.settimeout(0.5)
            try:
                s.recv(1024)                                  # b"": closed; bytes: answered (e.g. 408)
                dropped += 1
            except socket.timeout:                            # still held open
                pass
            except OSError:
                dropped += 1
        return {"stalled_uploads": count, "wait_s": wait,
                "generate": {"status": generated.status, "seconds": round(generated.seconds, 2)},
                "healthz": {"status": health.status, "seconds": round(health.seconds, 2)},
                "stalled_closed_or_answered_by_server": dropped}
    finally:
        for s in sockets:
            s.close()
        server.stop()


def sigterm_phase(args, quick: bool) -> dict:
    """R requests in flight, then SIGTERM; a request every 0.5 s during the drain."""
    server = Server(["--threads", "1", "--max-batch-size", "4", *args.common], args.serve_args, args.api_key)
    server.wait_healthy()

    def during_drain() -> list[Answer]:
        late = []
        while server.process.poll() is None:
            time.sleep(0.5)
            late.append(server.generate(body(len(late), 2), 60))
        return late

    with ThreadPoolExecutor(args.in_flight + 1) as pool:
        pending = [pool.submit(server.generate, body(i, args.fault_steps * 10, 128), 300)
                   for i in range(args.in_flight)]
        time.sleep(1.5)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        late = pool.submit(during_drain)
        code = server.stop(signal.SIGTERM)
        exit_s = round(time.monotonic() - signalled, 2)
        answers = [p.result() for p in pending]
    return {"in_flight": args.in_flight, **summary(answers), "exit_code": code, "exit_s": exit_s,
            "ray_failure_line": "graceful_shutdown" in server.stderr or "Traceback" in server.stderr,
            "during_drain": summary(late.result())}


def run_faults(args, phases: list[str], quick: bool) -> dict:
    runners = {"kill": kill_phase, "burst": burst_phase, "stalled": stalled_phase, "sigterm": sigterm_phase}
    results = {}
    for name in phases:
        results[name] = runners[name](args, quick)
        print(f"fault {name}: {results[name]}", flush=True)
    return results


def markdown(results: dict) -> list[str]:
    lines = []
    if "kill" in results:
        r = results["kill"]
        lines += ["", f"SIGKILL of one of {r['replicas_before']} replicas under {r['clients']} looping clients "
                      f"({r['seconds']} s):", "",
                  "| requests | statuses | lost connections | error content types | replacement process | "
                  "last failure after kill |", "|---:|---|---:|---|---:|---:|",
                  f"| {r['requests']} | {r['statuses']} | {r['lost_connections']} | "
                  f"{', '.join(r['content_types_of_errors']) or '-'} | {r['replacement_process_s']} s | "
                  f"{r['last_failure_after_kill_s']} s |"]
    if "burst" in results:
        r = results["burst"]
        lines += ["", f"A burst of {r['burst']} requests with --max-queue {r['max_queue']}:", "",
                  "| statuses | 503 with Retry-After | 503 content types | median 503 s | median 200 s | "
                  "/healthz during the burst |", "|---|---:|---|---:|---:|---|",
                  f"| {r['statuses']} | {r['refused_with_retry_after']} | "
                  f"{', '.join(r['content_types_of_errors']) or '-'} | {r['refused_median_s']} | "
                  f"{r['served_median_s']} | {r['healthz_during_burst']} |"]
    if "stalled" in results:
        r = results["stalled"]
        lines += ["", f"{r['stalled_uploads']} stalled uploads (headers and 1 body byte), then one request and "
                      f"/healthz (waiting at most {r['wait_s']} s):", "",
                  "| /v1/generate | /healthz | stalled connections the server closed or answered |", "|---|---|---:|",
                  f"| {r['generate']['status']} in {r['generate']['seconds']} s | {r['healthz']['status']} in "
                  f"{r['healthz']['seconds']} s | {r['stalled_closed_or_answered_by_server']} |"]
    if "sigterm" in results:
        r = results["sigterm"]
        lines += ["", f"SIGTERM with {r['in_flight']} requests in flight:", "",
                  "| statuses | exit code | seconds to exit | Ray failure line | requests sent during the drain: "
                  "statuses | their content types |", "|---|---:|---:|---|---|---|",
                  f"| {r['statuses']} | {r['exit_code']} | {r['exit_s']} | "
                  f"{'yes' if r['ray_failure_line'] else 'no'} | {r['during_drain']['statuses']} | "
                  f"{', '.join(r['during_drain']['content_types_of_errors']) or '-'} |"]
    return lines
