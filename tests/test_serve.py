"""fit-serve on a local Ray Serve (one instance for this module, 2 CPUs, localhost): the HTTP API through the
ingress, PNG bytes equal to fit-run's, images independent of their batch mates, 4xx answers for bad requests, JSON
503 + Retry-After under overload with bounded memory and health answered throughout, stalled uploads, API keys,
the OpenAI-style endpoint, jobs, cancelled work, and (slow) a replica killed with SIGKILL while serving."""
import base64
import io
import json
import os
import re
import signal
import socket
import threading
import time

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from engines.png import read_parameters  # noqa: E402
from fit_serve.app import build  # noqa: E402
from fit_serve.client import call, generate  # noqa: E402
from tests.serve_helpers import burst, free_port, model_stats, replica_pids  # noqa: E402

CONFIG = {"max_batch_size": 4, "batch_wait_ms": 300, "max_queue": 4, "threads": 1, "replica_cpus": 0.5,
          "retry_after_s": 2, "body_timeout_s": 8, "max_images": 3, "max_jobs": 2, "job_ttl_s": 30}
KEY_ENV, ENV_KEY, FILE_KEY = "FIT_SERVE_TEST_KEY", "env-key-7f3a9c", "file-key-0b1d2e"


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def base():
    port = free_port()
    os.environ[KEY_ENV] = ENV_KEY                   # before Ray starts: its workers inherit the environment
    ray.init(num_cpus=2, include_dashboard=False, namespace="fit-serve-tests", log_to_driver=False,
             _metrics_export_port=METRICS_PORT)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(CONFIG), name="fit", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        del os.environ[KEY_ENV]


class FlakyMethod:
    """A deployment handle method whose first ``failures`` calls fail with ``error``."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error, self.calls = failures, error, 0

    def remote(self, *args):
        self.calls += 1

        async def answer():
            if self.calls <= self.failures:
                raise self.error
            return args
        return answer()


def test_a_call_whose_replica_died_is_tried_again_up_to_three_times_and_nothing_else_is():
    import asyncio

    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import ReplicaUnavailableError

    from fit_serve.retry import call_with_retry

    retried = []
    twice = FlakyMethod(2, ActorDiedError())
    assert asyncio.run(call_with_retry(twice, 7, on_retry=lambda: retried.append(1))) == (7,)
    assert twice.calls == 3 and len(retried) == 2
    gone = FlakyMethod(3, ReplicaUnavailableError("gone"))
    with pytest.raises(ReplicaUnavailableError):
        asyncio.run(call_with_retry(gone))
    assert gone.calls == 3
    broken = FlakyMethod(1, ValueError("a bug, not a dead replica"))
    with pytest.raises(ValueError):
        asyncio.run(call_with_retry(broken))
    assert broken.calls == 1


def test_model_health_and_openapi(base):
    model = call(base + "/v1/model").json()
    assert model["name"] == "fitv2-shapes" and model["classes"][7] == "star"
    assert model["default_size"] == [80, 80] and model["pixel_granularity"] == 16 and model["max_tokens"] == 64
    assert model["buckets"][0]["tokens"] == 25 and "heun" in model["samplers"]
    assert "ntk-aware" in model["extrapolations"]
    assert model["max_batch_size"] == 4 and model["max_batch_tokens"] == 4 * 64
    assert model["backend"] == "onnxruntime" and model["variant"] == "ort"     # the default variant, tuned copy
    assert model["limits"]["max_images"] == 3 and model["limits"]["admission_limit"] == 8 + 4
    health = call(base + "/healthz")
    assert health.status == 200 and health.json()["status"] == "ok"
    assert health.json()["replicas"] == {"running": 1, "target": 1}
    paths = call(base + "/openapi.json").json()["paths"]
    assert {"/v1/generate", "/v1/images/generations", "/v1/jobs", "/v1/jobs/{job_id}"} <= set(paths)


def test_docs_page_loads_nothing_from_other_sites(base):
    page = call(base + "/docs")
    assert page.status == 200 and b"swagger-ui-bundle.js" in page.body
    assert b"http://" not in page.body and b"https://" not in page.body and b"//cdn" not in page.body
    script = call(base + "/docs/swagger-ui-bundle.js")
    assert script.status == 200 and len(script.body) > 100_000
    assert call(base + "/docs/../app.py").status == 404 and call(base + "/docs/index.html").status == 404


def test_png_bytes_equal_fit_run(base, tmp_path):
    from cli.run import run

    fields = {"width": 96, "height": 64, "class": "star", "seed": 3, "steps": 3, "cfg": 2.5,
              "extrapolation": "ntk-aware"}
    answer = generate(base, fields)
    assert answer.status == 200 and answer.headers["content-type"] == "image/png"
    request = dict(width=96, height=64, label="star", seed=3, num=1, snap=False, steps=3, sampler=None, cfg=2.5,
                   extrapolation="ntk-aware")
    [path] = run(None, request, "onnxruntime", None, 1, tmp_path / "a.png", False, True)
    assert answer.body == path.read_bytes()
    (tmp_path / "b.png").write_bytes(answer.body)
    assert read_parameters(tmp_path / "b.png")["class_name"] == "star"


def test_json_answer_has_png_parameters_and_timing(base):
    answer = generate(base, {"width": 64, "height": 64, "seed": 1, "steps": 2}, accept_json=True)
    assert answer.status == 200
    data = answer.json()
    assert base64.b64decode(data["image_png_base64"]).startswith(b"\x89PNG")
    assert data["parameters"]["width"] == 64 and data["parameters"]["sampler"] == "ab2"           # the package's
    assert data["parameters"]["time_shift"] == 6.0 and data["parameters"]["tail_compression"] == 1.0
    assert data["timing"]["batch_requests"] == 1 and data["timing"]["total_s"] > 0


def test_image_same_alone_and_in_a_mixed_batch(base):
    target = {"width": 48, "height": 32, "class": 2, "seed": 11, "steps": 3, "cfg": 2.0}
    mix = [{"width": 80, "height": 80, "class": 1, "seed": 3, "steps": 3, "cfg": 5.0, "extrapolation": "ntk-aware"},
           target,
           {"width": 96, "height": 64, "class": "ring", "seed": 4, "steps": 3, "cfg": 1.5},
           {"width": 64, "height": 64, "class": 0, "seed": 5, "steps": 3, "sampler": "sde"}]
    together = burst(base, mix, accept_json=True)
    assert [a.status for a in together] == [200] * 4
    shared = together[1].json()["timing"]["batch_requests"]
    assert shared == 3, "the three requests of the package's sampler (one bucket) should have shared one engine call"
    assert together[3].json()["timing"]["batch_requests"] == 1          # sde: a loop of its own
    for fields, mixed in zip(mix[1:4:2], together[1:4:2]):
        alone = generate(base, fields, accept_json=True).json()
        assert alone["timing"]["batch_requests"] == 1
        assert alone["image_png_base64"] == mixed.json()["image_png_base64"]


BAD = [
    ("POST", "/v1/generate", b"not json", 400), ("POST", "/v1/generate", b"[1]", 400),
    ("POST", "/v1/generate", b"x" * 200_000, 413), ("POST", "/v1/generate", b'{"width": 97}', 422),
    ("POST", "/v1/generate", b'{"width": 1024, "height": 1024}', 422),
    ("POST", "/v1/generate", b'{"class": "dragon"}', 422), ("POST", "/v1/generate", b'{"steps": 0}', 422),
    ("POST", "/v1/generate", b'{"cfg": -2}', 422), ("POST", "/v1/generate", b'{"seed": -1}', 422),
    ("POST", "/v1/generate", b'{"prompt": "cat"}', 422), ("POST", "/v1/generate", b'{"width": "64"}', 422),
    ("GET", "/v1/generate", None, 405), ("GET", "/v1/nothing", None, 404),
    ("POST", "/v1/images/generations", b'{"size": "64"}', 422),
    ("POST", "/v1/images/generations", b'{"size": "64x64x1"}', 422),
    ("POST", "/v1/images/generations", b'{"size": "97x64"}', 422),
    ("POST", "/v1/images/generations", b'{"n": 4}', 422), ("POST", "/v1/images/generations", b'{"n": 0}', 422),
    ("POST", "/v1/images/generations", b'{"n": "2"}', 422),
    ("POST", "/v1/images/generations", b'{"quality": "hd"}', 422),
    ("POST", "/v1/images/generations", b'{"response_format": "url"}', 422),
    ("POST", "/v1/images/generations", b'{"prompt": "a dragon"}', 422),
    ("POST", "/v1/images/generations", b'{"prompt": 3}', 422),
    ("POST", "/v1/images/generations", b'{"seed": 18446744073709551615, "n": 2}', 422),
    ("POST", "/v1/images/generations", b'{"seed": "x", "n": 2}', 422),
    ("POST", "/v1/images/generations", b"x" * 200_000, 413),
    ("POST", "/v1/images/generations", b"{", 400),
    ("POST", "/v1/jobs", b'{"steps": 0}', 422), ("POST", "/v1/jobs", b'{"size": "64x64"}', 422),
    ("GET", "/v1/jobs/does-not-exist", None, 404), ("GET", "/v1/jobs/" + "x" * 300, None, 404),
]


@pytest.mark.parametrize("method,path,body,status", BAD, ids=[f"{m} {p[:30]} {(b or b'')[:20]}" for m, p, b, _ in BAD])
def test_bad_requests_answer_4xx_with_one_json_line(base, method, path, body, status):
    answer = call(base + path, method, body, {"Content-Type": "application/json"})
    assert answer.status == status
    data = answer.json()
    assert list(data) == ["error"]
    message = data["error"]["message"] if path == "/v1/images/generations" else data["error"]   # OpenAI's shape
    assert "\n" not in message and "Traceback" not in message and answer.body.count(b"\n") == 0


def test_docs_page_renders_every_operation_in_a_browser_without_network(base):
    """Headless Chromium that can resolve no host but 127.0.0.1 renders /docs with every route of the API."""
    import re
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("needs Chromium")
    page = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--dump-dom",
                           base + "/docs"], capture_output=True, text=True, timeout=120).stdout
    assert set(re.findall(r'data-path="([^"]+)"', page)) == {
        "/v1/generate", "/v1/images/generations", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/model", "/healthz"}


def test_openai_endpoint_with_the_official_client_and_plain_http(base):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    answer = client.images.generate(prompt="star", size="96x64", n=2, response_format="b64_json",
                                    extra_body={"seed": 3, "steps": 3, "cfg": 2.5, "extrapolation": "ntk-aware"})
    assert len(answer.data) == 2 and answer.created > 0 and answer.data[0].revised_prompt == "star"
    fields = {"width": 96, "height": 64, "class": "star", "steps": 3, "cfg": 2.5, "extrapolation": "ntk-aware"}
    for i, image in enumerate(answer.data):         # seeds seed, seed + 1: the /v1/generate bytes of each
        assert base64.b64decode(image.b64_json) == generate(base, {**fields, "seed": 3 + i}).body
    plain = call(base + "/v1/images/generations", "POST", {"prompt": "", "size": "64x64", "steps": 2},
                 {"Content-Type": "application/json"})
    assert plain.status == 200
    [image] = plain.json()["data"]
    assert image["revised_prompt"] == "" and image["seed"] == 0
    assert read_parameters(io.BytesIO(base64.b64decode(image["b64_json"])))["class"] is None    # unconditional
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.images.generate(prompt="star", size="64x64", n=4)
    assert "n must be a whole number from 1 to 3" in str(info.value)


def test_api_keys_guard_every_v1_route_and_never_show(base, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# comment\n\n{FILE_KEY}\n")
    serve.run(build({**CONFIG, "api_key_env": KEY_ENV, "api_keys_file": str(keys)}), name="keyed",
              route_prefix="/keyed")
    keyed = base + "/keyed"
    try:
        assert call(keyed + "/healthz").status == 200                   # open
        routes = [("GET", "/v1/model", None), ("POST", "/v1/generate", b'{"steps": 1}'),
                  ("POST", "/v1/images/generations", b'{"steps": 1}'), ("POST", "/v1/jobs", b'{"steps": 1}'),
                  ("GET", "/v1/jobs/x", None)]
        for method, path, body in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ENV_KEY},
                            {"Authorization": f"Basic {ENV_KEY}"}):
                answer = call(keyed + path, method, body, headers)
                assert answer.status == 401 and answer.headers["www-authenticate"] == "Bearer", (path, headers)
                assert list(answer.json()) == ["error"]
        for key in (ENV_KEY, FILE_KEY):
            auth = {"Authorization": f"Bearer {key}"}
            assert call(keyed + "/v1/model", headers=auth).json()["api_key_required"] is True
            assert generate(keyed, {"steps": 1}, headers=auth).status == 200
        assert call(keyed + "/v1/jobs/x", headers={"Authorization": f"Bearer {FILE_KEY}"}).status == 404
        assert "bearer" in call(keyed + "/openapi.json").json()["components"]["securitySchemes"]
        config = json.dumps(serve.status().applications["keyed"].deployments["FitIngress"].__dict__, default=str)
        assert ENV_KEY not in config and FILE_KEY not in config
    finally:
        serve.delete("keyed")
    logs = ray._private.worker.global_worker.node.get_logs_dir_path()
    for root, _, files in os.walk(logs):
        for name in files:
            with open(os.path.join(root, name), "rb") as file:
                text = file.read()
            assert ENV_KEY.encode() not in text and FILE_KEY.encode() not in text, name


def test_jobs_report_progress_and_the_result_then_expire_or_make_room(base):
    fields = {"width": 64, "height": 64, "seed": 5, "steps": 30, "class": "ring"}
    submitted = call(base + "/v1/jobs", "POST", fields, {"Content-Type": "application/json"})
    assert submitted.status == 202 and submitted.headers["location"] == f"jobs/{submitted.json()['id']}"
    job_id = submitted.json()["id"]
    seen, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        state = call(f"{base}/v1/jobs/{job_id}").json()
        seen.append((state["state"], state["progress"]["steps_done"]))
        if state["state"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert state["state"] == "done", state
    assert state["progress"] == {"steps_done": 30, "steps_total": 30}
    assert base64.b64decode(state["result"]["image_png_base64"]) == generate(base, fields).body
    assert state["result"]["parameters"]["class_name"] == "ring"
    # max_jobs 2: two more jobs make room by dropping the oldest finished one
    for seed in (1, 2):
        assert call(base + "/v1/jobs", "POST", {"steps": 1, "seed": seed}).status == 202
    assert call(f"{base}/v1/jobs/{job_id}").status == 404
    print(f"job states seen while polling: {sorted(set(s for s, _ in seen))}, progress values {len(set(seen))}")


def test_a_client_that_goes_away_stops_costing_engine_time(base):
    """A 128x128 request of 1000 heun steps (about 2000 network evaluations), abandoned after 1.5 s: its engine
    call stops at the next step, and the next request is served at once."""
    before = model_stats("fit")
    started = time.monotonic()
    gone = generate(base, {"width": 128, "height": 128, "class": 1, "steps": 1000, "sampler": "heun"}, timeout=1.5)
    assert gone.status == 0                                         # the client gave up
    deadline = time.monotonic() + 30
    while model_stats("fit")["stopped_calls"] == before["stopped_calls"] and time.monotonic() < deadline:
        time.sleep(0.2)
    after = model_stats("fit")
    assert after["stopped_calls"] == before["stopped_calls"] + 1
    assert after["steps"] - before["steps"] < 500, after["steps"] - before["steps"]
    small = generate(base, {"width": 64, "height": 64, "steps": 2}, accept_json=True)
    assert small.status == 200
    print(f"abandoned after 1.5 s: the call stopped after {after['steps'] - before['steps']} of 1000 steps; the "
          f"next request took {small.seconds:.2f} s ({time.monotonic() - started:.1f} s after the first was sent)")


def test_overload_answers_json_503_with_retry_after_at_once_health_stays_and_memory_is_bounded(base):
    before = model_stats("fit")["max_rss_mb"]
    health = []
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            health.append(call(base + "/healthz", timeout=10).status)
            time.sleep(0.2)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        answers = burst(base, [{"width": 128, "height": 128, "class": i % 8, "seed": i, "steps": 16}
                               for i in range(200)], timeout=120)
    finally:
        stop.set()
        prober.join()
    statuses = [a.status for a in answers]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    rejected = [a for a in answers if a.status == 503]
    served = [a for a in answers if a.status == 200]
    assert rejected and served
    assert all(a.headers.get("retry-after") == "2" for a in rejected)
    assert all(list(a.json()) == ["error"] and "busy" in a.json()["error"] for a in rejected)
    rejected_s = sorted(a.seconds for a in rejected)
    assert rejected_s[len(rejected_s) // 2] < max(a.seconds for a in served)    # refused before work is done
    assert health and set(health) == {200}, health      # health never waits behind generation
    after = model_stats("fit")["max_rss_mb"]
    assert after - before < 200, f"replica peak RSS grew from {before} MB to {after} MB under a burst of 200"
    median = rejected_s[len(rejected_s) // 2]
    print(f"burst of 200: {len(served)} served, {len(rejected)} answered 503 (median {median:.2f} s, max "
          f"{rejected_s[-1]:.2f} s); {len(health)} health probes all 200; replica peak RSS {before} -> {after} MB")


def http_reply(sock: socket.socket) -> bytes:
    """One HTTP reply read from ``sock``: the head, and the body up to its Content-Length (the two may come in
    separate reads), or whatever came before the connection closed."""
    reply = b""
    while True:
        head, _, rest = reply.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if _ and length and len(rest) >= int(length.group(1)):
            return reply
        chunk = sock.recv(4096)
        if not chunk:
            return reply
        reply += chunk


def test_stalled_uploads_starve_neither_health_nor_generation(base):
    """20 clients send headers and one body byte, then stall (more than the model replica's 8 slots): health and
    a generation are answered while they stall, and each stalled upload gets a JSON 408 after the body timeout."""
    stalled = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        stalled.append(sock)
    try:
        time.sleep(0.5)
        assert call(base + "/healthz", timeout=30).status == 200
        answer = generate(base, {"width": 64, "height": 64, "steps": 2}, timeout=30)
        assert answer.status == 200
        for sock in stalled:                            # still waiting: nothing answered them yet
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
        replies = []
        for sock in stalled:
            sock.settimeout(40)
            replies.append(http_reply(sock))
    finally:
        for sock in stalled:
            sock.close()
    assert all(r.startswith(b"HTTP/1.1 408") for r in replies), {r[:20] for r in replies}
    body = json.loads(replies[0].split(b"\r\n\r\n", 1)[1])
    assert body == {"error": "the request body did not arrive within 8 s"}


@pytest.mark.slow
def test_a_replica_killed_with_sigkill_loses_no_request(base):
    """2 model replicas under 4 looping clients, one killed with SIGKILL: the ingress retries the requests it held
    on the other replica, so every request gets a 200 with the same PNG bytes as before the kill."""
    serve.run(build({**CONFIG, "replicas": 2, "batch_wait_ms": 20}), name="two", route_prefix="/two")
    two = base + "/two"
    try:
        deadline = time.monotonic() + 60
        while len(replica_pids("two")) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        pids = replica_pids("two")
        assert len(pids) == 2
        bodies = [{"width": 64, "height": 64, "seed": i, "steps": 8} for i in range(4)]
        expected = [generate(two, fields).body for fields in bodies]
        assert all(png.startswith(b"\x89PNG") for png in expected)
        results, stop = [], threading.Event()

        def client(i):
            while not stop.is_set():
                answer = generate(two, bodies[i], timeout=90)
                results.append((time.monotonic(), answer.status, answer.body == expected[i]))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(min(pids), signal.SIGKILL)
        restarted = None
        while time.monotonic() < killed_at + 60 and restarted is None:
            if len(replica_pids("two") - pids) == 1 and call(two + "/healthz").json()["replicas"]["running"] == 2:
                restarted = time.monotonic() - killed_at
            time.sleep(0.2)
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join(120)
        assert restarted is not None, "Ray did not restart the killed replica within 60 s"
        during = [r for r in results if r[0] > killed_at]
        assert during, "no request was answered after the kill"
        failed = [(status, same) for _, status, same in results if status != 200 or not same]
        assert not failed, failed
        print(f"replica restarted {restarted:.1f} s after SIGKILL; all {len(results)} requests answered 200 with "
              f"the same PNG ({len(during)} after the kill)")
    finally:
        serve.delete("two")


@pytest.mark.slow
def test_metrics_are_exported_in_prometheus_format(base):
    assert generate(base, {"steps": 1}).status == 200
    names = ["fit_serve_requests", "fit_serve_queue_length", "fit_serve_batch_requests", "fit_serve_batch_tokens",
             "fit_serve_request_latency_s"]
    deadline, text = time.monotonic() + 40, ""
    while time.monotonic() < deadline and not all(n in text for n in names):
        time.sleep(2)
        text = call(f"http://127.0.0.1:{METRICS_PORT}/metrics").body.decode()
    assert all(n in text for n in names), [n for n in names if n not in text]


def test_an_engine_failure_answers_500_for_its_call_only(base, tmp_path):
    """A package whose manifest promises more classes than its graph embeds: class 15 makes ONNX Runtime fail.
    That engine call's requests get 500 with one JSON line; a request in another call is served."""
    import shutil

    from engines.pipeline import DEFAULT_MODEL_DIR

    package = shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "pkg")
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["model"]["num_classes"] = 20
    manifest["model"]["class_names"] += [f"extra{i}" for i in range(12)]
    (package / "manifest.json").write_text(json.dumps(manifest))
    serve.run(build({**CONFIG, "package": str(package)}), name="broken", route_prefix="/broken")
    try:
        failing, fine = burst(base + "/broken", [{"width": 64, "height": 64, "class": 15, "steps": 2},
                                                 {"width": 64, "height": 64, "class": 1, "steps": 3}])
        assert failing.status == 500 and fine.status == 200
        error = failing.json()["error"]
        assert list(failing.json()) == ["error"] and error.startswith("generation failed:") and "\n" not in error
    finally:
        serve.delete("broken")


def test_precision_picks_the_variant_every_replica_runs(base):
    """fit-serve --precision int8: the replicas run the int8 variant, as fit-run --precision int8 does."""

    serve.run(build({**CONFIG, "precision": "int8"}), name="int8", route_prefix="/int8")
    try:
        assert call(base + "/int8/v1/model").json()["variant"] == "int8"
        answer = generate(base + "/int8", {"width": 64, "height": 64, "seed": 1, "steps": 2})
        assert answer.status == 200
        assert read_parameters(io.BytesIO(answer.body))["variant"] == "int8"
    finally:
        serve.delete("int8")


def test_schema_fuzzing_finds_no_server_error_and_no_disagreement(base):
    """Schemathesis drives every operation of /openapi.json with schema-valid and schema-invalid requests (a
    bounded number each), on an application whose limits keep every generation small: no 5xx, every status,
    content type and body as the document says, and every schema-invalid request refused with a 4xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks

    serve.run(build({**CONFIG, "max_steps": 3, "max_cfg": 5.0, "max_jobs": 4}), name="fuzz", route_prefix="/fuzz")
    fuzz = base + "/fuzz"
    try:
        schema = schemathesis.openapi.from_dict(call(fuzz + "/openapi.json").json())
        selected = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
                    checks.response_schema_conformance, checks.negative_data_rejection]
        cases = []
        for result in schema.get_all_operations():
            operation = result.ok()
            modes = [schemathesis.GenerationMode.POSITIVE]
            if "requestBody" in operation.definition.raw:       # only bodies can be schema-invalid here
                modes.append(schemathesis.GenerationMode.NEGATIVE)
            for mode in modes:
                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(max_examples=15, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
                def drive(case):
                    cases.append(case.call_and_validate(base_url=fuzz, checks=selected).status_code)

                drive()
        assert len(cases) >= 6 * 5 and all(status < 500 for status in cases)
        print(f"schema fuzzing: {len(cases)} requests, statuses {sorted(set(cases))}")
    finally:
        serve.delete("fuzz")
