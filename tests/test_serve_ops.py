"""Operating fit-serve (docs/serving.md, "Operations"): a local run starts its own Ray whatever else runs on the
machine (a stale address file, another cluster), it joins a token-authenticated cluster with the token alone, the
metrics endpoint listens on the host it is given and its histogram sums are the observed values, a request above
the cost limit is refused before any work, and SIGTERM to fit-serve's process group (Ray's processes included) with
requests in flight answers every one of them, and refuses new ones with a JSON 503, before it exits 143.

Each test keeps Ray's files in a temporary folder of its own (HOME and RAY_TMPDIR), so nothing here reads or
writes the machine's /tmp/ray or ~/.ray; a cluster started here is stopped by the ids of its processes."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")

from fit_serve.client import Answer, call, generate, wait_until_healthy  # noqa: E402
from tests.serve_helpers import free_port  # noqa: E402
from tests.test_serve_cli import alive, descendants  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find processes and sockets")


@pytest.fixture
def ray_home():
    """A short temporary folder for HOME and RAY_TMPDIR (Ray's socket paths must stay short), and the environment
    that uses it."""
    with tempfile.TemporaryDirectory(prefix="fit-ray-") as folder:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": folder, "RAY_TMPDIR": folder}
        for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "FIT_SERVE_API_KEY"):
            env.pop(name, None)
        yield Path(folder), env


def start_fit_serve(env: dict, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cli.serve", "--port", str(port), "--threads", "1", *args],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)     # a process group of its own, as a shell's job
    base = f"http://127.0.0.1:{port}"
    if not wait_until_healthy(base, 120):
        server.kill()
        raise AssertionError(f"fit-serve did not start: {server.communicate()[1][-2000:]}")
    return server, base


def stop(server: subprocess.Popen, signum: int, group: bool = False) -> str:
    """Send ``signum`` (with ``group`` to its whole process group, as ``kill %1``, ``timeout`` or a supervisor do),
    wait for the exit; stderr."""
    if group:
        os.killpg(server.pid, signum)
    else:
        server.send_signal(signum)
    try:
        return server.communicate(timeout=120)[1]
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def wait_until_draining(base: str, seconds: float) -> Answer:
    """Poll GET /healthz until it answers 503 ``draining``; the last answer (whatever it is after ``seconds``)."""
    answer, deadline = Answer(0), time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = call(base + "/healthz", timeout=10)
        if answer.status == 503 and answer.json().get("status") == "draining":
            break
        time.sleep(0.1)
    return answer


def metric_values(text: str, name: str) -> list[float]:
    """The values of every series of ``name`` (all tags) in a Prometheus text page."""
    return [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]


def metrics_once(port: int, name: str, count: float, seconds: float = 60) -> str:
    """The Prometheus page at ``port`` once the series ``name`` reads ``count`` (Ray exports every few seconds);
    the last page read when it does not within ``seconds``."""
    text, deadline = "", time.monotonic() + seconds
    while time.monotonic() < deadline and metric_values(text, name) != [count]:
        time.sleep(1)
        text = call(f"http://127.0.0.1:{port}/metrics").body.decode()
    return text


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6, hex)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_local_run_beside_a_stale_address_file_with_exact_metrics_and_a_drain_on_sigterm(ray_home):
    """A stale current-cluster address file made ray.init join it ("num_cpus and num_gpus must not be provided");
    the metrics endpoint listens on 127.0.0.1 like --host; histogram sums are exact; SIGTERM with 5 requests in
    flight, sent to fit-serve's whole process group (the raylet and GCS died of it and the drain hung), answers all
    5 with their image; during the drain /healthz says "draining" and new generation requests get a JSON 503 (Ray's
    plain-text 404 before: the application was gone); exit 143, without Ray's graceful-shutdown failure."""
    folder, env = ray_home
    (folder / "ray").mkdir()
    (folder / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")    # nothing listens there
    metrics_port = free_port()
    server, base = start_fit_serve(env, "--max-batch-size", "4", "--metrics-port", str(metrics_port),
                                   "--drain-s", "120",      # the replica holds 2 x 4 requests: all 5 in flight
                                   "--max-cost", "100000")
    try:
        ray_processes = descendants(server.pid)
        answer = generate(base, {"steps": 2, "seed": 1}, accept_json=True)      # 80x80: 25 tokens, alone
        assert answer.status == 200 and answer.json()["timing"]["batch_tokens"] == 25
        text = metrics_once(metrics_port, "ray_fit_serve_request_latency_s_count", 1)
        assert metric_values(text, "ray_fit_serve_batch_tokens_sum") == [25.0]     # Ray's Histogram: 24
        assert metric_values(text, "ray_fit_serve_batch_requests_sum") == [1.0]    # Ray's Histogram: 0.5
        assert 'ray_fit_serve_batch_tokens_bucket{' in text and metric_values(text, "ray_fit_serve_batch_tokens_bucket")
        [latency] = metric_values(text, "ray_fit_serve_request_latency_s_sum")     # this request's alone
        assert answer.json()["timing"]["total_s"] <= latency <= answer.seconds
        assert listening_addresses(metrics_port) == {"0100007F"}                 # 127.0.0.1 only

        model = call(base + "/v1/model")
        assert model.status == 200 and model.json()["limits"]["max_cost"] == 100000, model.body[:300]
        refused = generate(base, {"sampler": "dopri5"})             # 60,002 evaluations at most x 25 tokens
        assert refused.status == 422 and refused.json()["error"].startswith("this request costs 1,500,050 (")
        text = metrics_once(metrics_port, "ray_fit_serve_request_latency_s_count", 3)
        assert metric_values(text, "ray_fit_serve_batch_tokens_count") == [1.0]    # the refused one: no call

        bodies = [{"width": 128, "height": 128, "seed": i, "steps": 150} for i in range(5)]
        with ThreadPoolExecutor(len(bodies) + 1) as pool:
            pending = [pool.submit(lambda b: (generate(base, b, timeout=180), time.monotonic()), b) for b in bodies]
            time.sleep(1.5)
            signalled = time.monotonic()
            stderr_future = pool.submit(stop, server, signal.SIGTERM, True)     # Ray's processes get it too
            health = wait_until_draining(base, 60)
            late = generate(base, {"steps": 2, "seed": 9}, timeout=60)
            late_openai = call(base + "/v1/images/generations", "POST", {"prompt": "", "size": "80x80"},
                               {"Content-Type": "application/json"})
            answers = [p.result(timeout=200) for p in pending]
            stderr = stderr_future.result(timeout=200)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert [a.status for a, _ in answers] == [200] * 5, [(a.status, a.error, a.body[:100]) for a, _ in answers]
    assert all(a.body.startswith(b"\x89PNG") for a, _ in answers)
    assert health.status == 503 and health.json()["status"] == "draining", (health.status, health.body[:300])
    assert (late.status, late.json(), late.headers.get("retry-after")) == (
        503, {"error": "the server is shutting down"}, "1"), (late.status, late.error, late.body[:300])
    assert late.body.count(b"\n") == 0
    assert late_openai.status == 503 and late_openai.json()["error"]["message"] == "the server is shutting down"
    assert any(finished > signalled for _, finished in answers)             # they were in flight at the signal
    assert server.returncode == 143 and stderr.rstrip().endswith("fit-serve: terminated"), stderr[-2000:]
    assert "graceful" not in stderr.lower() and "Traceback" not in stderr, stderr[-2000:]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(alive(p) for p in ray_processes):
        time.sleep(0.5)
    assert not [p for p in ray_processes if alive(p)], "Ray processes left behind"


def cluster_processes(folder: Path) -> list[int]:
    """Ids of the processes whose command line names ``folder`` (the cluster started with it), not this one's."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def token_cluster(ray_home):
    """A one-node cluster (``ray start --head``) with token authentication, its Ray files in a folder of its own;
    (address, token, environment) for its clients. Stopped by process id (``ray stop`` would stop every Ray on
    the machine)."""
    folder, env = ray_home
    subprocess.run([*RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    token = (folder / ".ray" / "auth_token").read_text().strip()
    port = free_port()
    started = subprocess.run([*RAY, "start", "--head", "--port", str(port), "--num-cpus", "2",
                              "--include-dashboard", "false", "--disable-usage-stats",
                              "--temp-dir", str(folder / "ray"), "--ray-client-server-port", str(free_port()),
                              "--dashboard-agent-listen-port", str(free_port()),
                              "--metrics-export-port", str(free_port())],
                             env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        yield f"127.0.0.1:{port}", token, env
    finally:
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for pid in cluster_processes(folder):
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(alive(p) for p in cluster_processes(folder)):
                time.sleep(0.5)


@pytest.mark.slow
def test_local_run_beside_another_cluster_and_joining_it_with_its_token(token_cluster, tmp_path):
    """Beside a running cluster (its address file current) a local fit-serve starts a Ray of its own and leaves the
    cluster running; then fit-serve --address joins the cluster with RAY_AUTH_TOKEN alone (no RAY_AUTH_MODE)."""
    address, token, env = token_cluster
    home = Path(env["HOME"])
    gcs = [p for p in cluster_processes(home) if b"gcs_server" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert gcs
    server, base = start_fit_serve(env)
    try:
        assert generate(base, {"steps": 2}).status == 200
    finally:
        stderr = stop(server, signal.SIGINT)
    assert server.returncode == 130, stderr[-2000:]
    assert all(alive(p) for p in gcs)                               # the other cluster is still up

    joining = {**env, "HOME": str(tmp_path), "RAY_AUTH_TOKEN": token}   # no token file, no RAY_AUTH_MODE
    server, base = start_fit_serve(joining, "--address", address, "--replica-cpus", "0.5")
    try:
        assert generate(base, {"steps": 2}).status == 200
    finally:
        stderr = stop(server, signal.SIGINT)
    assert server.returncode == 130 and "Connected to Ray cluster" in stderr, stderr[-2000:]
