"""fit-serve on a local Ray Serve (one instance for this module, 2 CPUs, localhost): the HTTP API, PNG bytes equal
to fit-run's, images independent of their batch mates, 4xx answers for bad requests, 503 + Retry-After under
overload with bounded memory, and (slow) a replica killed with SIGKILL while serving."""
import base64
import json
import os
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from engines.png import read_parameters
from fit_serve.app import build  # noqa: E402
from fit_serve.client import call, generate, wait_until_healthy  # noqa: E402
from tests.serve_helpers import burst, free_port  # noqa: E402

CONFIG = {"max_batch_size": 4, "batch_wait_ms": 300, "max_queue": 4, "threads": 1, "replica_cpus": 0.5,
          "retry_after_s": 2}


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def base():
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, namespace="fit-serve-tests", log_to_driver=False,
             _metrics_export_port=METRICS_PORT)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(CONFIG), name="fit", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_model_health_and_openapi(base):
    model = call(base + "/v1/model").json()
    assert model["name"] == "fitv2-shapes" and model["classes"][7] == "star"
    assert model["default_size"] == [80, 80] and model["pixel_granularity"] == 16 and model["max_tokens"] == 64
    assert model["buckets"][0]["tokens"] == 25 and "heun" in model["samplers"]
    assert "ntk-aware" in model["extrapolations"]
    assert model["max_batch_size"] == 4 and model["max_batch_tokens"] == 4 * 64
    assert model["backend"] == "onnxruntime" and model["variant"] == "ort"     # the default variant, tuned copy
    health = call(base + "/healthz")
    assert health.status == 200 and health.json()["status"] == "ok"
    assert "/v1/generate" in call(base + "/openapi.json").json()["paths"]


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
]


@pytest.mark.parametrize("method,path,body,status", BAD, ids=[f"{m} {p} {(b or b'')[:20]}" for m, p, b, _ in BAD])
def test_bad_requests_answer_4xx_with_one_json_line(base, method, path, body, status):
    answer = call(base + path, method, body, {"Content-Type": "application/json"})
    assert answer.status == status
    data = answer.json()
    assert list(data) == ["error"] and "\n" not in data["error"] and "Traceback" not in data["error"]


def test_overload_answers_503_with_retry_after_at_once_and_memory_stays_bounded(base):
    before = call(base + "/healthz").json()["max_rss_mb"]
    answers = burst(base, [{"width": 128, "height": 128, "class": i % 8, "seed": i, "steps": 16}
                           for i in range(200)], timeout=120)
    statuses = [a.status for a in answers]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    rejected = [a for a in answers if a.status == 503]
    served = [a for a in answers if a.status == 200]
    assert rejected and served
    assert all(a.headers.get("retry-after") == "2" for a in rejected)
    rejected_s = sorted(a.seconds for a in rejected)
    assert rejected_s[len(rejected_s) // 2] < max(a.seconds for a in served)    # refused before work is done
    after = wait_and_health(base)["max_rss_mb"]
    assert after - before < 200, f"replica peak RSS grew from {before} MB to {after} MB under a burst of 200"
    median = rejected_s[len(rejected_s) // 2]
    print(f"burst of 200: {len(served)} served, {len(rejected)} answered 503 (median {median:.2f} s, max "
          f"{rejected_s[-1]:.2f} s); replica peak RSS {before} -> {after} MB")


def wait_and_health(base):
    assert wait_until_healthy(base, 30)
    return call(base + "/healthz").json()


@pytest.mark.slow
def test_replica_killed_with_sigkill_is_restarted_and_other_requests_succeed(base):
    serve.run(build({**CONFIG, "replicas": 2, "batch_wait_ms": 20}), name="two", route_prefix="/two")
    two = base + "/two"
    try:
        pids = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.add(call(two + "/healthz").json()["pid"])
        assert len(pids) == 2
        victim = min(pids)
        results, stop = [], threading.Event()

        def client(i):
            while not stop.is_set():
                answer = generate(two, {"width": 64, "height": 64, "seed": i, "steps": 8}, timeout=60)
                results.append((time.monotonic(), answer.status))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        restarted = None
        while time.monotonic() < killed_at + 60 and restarted is None:
            pid = call(two + "/healthz", timeout=5)
            if pid.status == 200 and pid.json()["pid"] not in pids:
                restarted = time.monotonic() - killed_at
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(60)
        assert restarted is not None, "Ray did not restart the killed replica within 60 s"
        failed = [s for _, s in results if s != 200]
        after = [s for t, s in results if t > killed_at + 5]
        assert len(failed) <= 4 * 2, failed        # at most the requests that were inside the killed replica
        assert after and all(s == 200 for s in after)
        print(f"replica restarted {restarted:.1f} s after SIGKILL; {len(failed)} of {len(results)} requests failed "
              f"(HTTP {sorted(set(failed))})")
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
    import io

    serve.run(build({**CONFIG, "precision": "int8"}), name="int8", route_prefix="/int8")
    try:
        assert call(base + "/int8/v1/model").json()["variant"] == "int8"
        answer = generate(base + "/int8", {"width": 64, "height": 64, "seed": 1, "steps": 2})
        assert answer.status == 200
        assert read_parameters(io.BytesIO(answer.body))["variant"] == "int8"
    finally:
        serve.delete("int8")
