"""The fit-serve command line (cli/serve.py over fit_serve/launch.py): one-line errors before Ray starts,
--emit-config, and Ctrl-C while requests are in flight (every request gets its image, the command exits 130, no Ray
process is left behind)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
yaml = pytest.importorskip("yaml")

from fit_serve.client import wait_until_healthy  # noqa: E402
from tests.serve_helpers import burst, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def fit_serve(*args):
    from click.testing import CliRunner

    from cli.serve import main

    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("args,message", [
    (["/nonexistent/package"], "does not exist"),
    (["--port", "0"], "--port"),
    (["--max-batch-size", "0"], "--max-batch-size"),
    (["--max-batch-tokens", "10"], "below the package's 64 tokens"),
    (["--backend", "nope"], "--backend"),
    (["--precision", "fp16"], "no fp16 transformer that onnxruntime can run; it holds fp32, ort, int8, ov"),
    (["--backend", "openvino", "--precision", "ort"], "transformer variant 'ort' runs on onnxruntime only"),
    (["--emit-config", "/nonexistent/folder/serve.yaml"], "does not exist"),
    (["--address", "auto", "--metrics-port", "9100"], "--metrics-port applies to a local Ray"),
    (["--address", "auto", "--metrics-host", "127.0.0.1"], "--metrics-host applies to a local Ray"),
    (["--metrics-host", "10.1.2.3"], "--metrics-host 10.1.2.3: Ray's metrics endpoint listens either on 127.0.0.1 "
                                     "or on every interface (0.0.0.0)"),
    (["--max-cost", "0"], "--max-cost"),
    (["--drain-s", "-1"], "--drain-s"),
])
def test_mistakes_end_in_one_line(args, message):
    result = fit_serve(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith("fit-serve: error:") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_damaged_package_is_refused_before_ray_starts(tmp_path):
    import shutil

    from engines.pipeline import DEFAULT_MODEL_DIR

    package = shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "pkg")
    data = bytearray((package / "transformer.onnx").read_bytes())
    data[-10] ^= 1
    (package / "transformer.onnx").write_bytes(bytes(data))
    result = fit_serve(str(package), "--port", "1")
    assert result.exit_code == 2 and "sha256 of transformer.onnx does not match" in result.output


def test_a_port_in_use_is_refused_before_ray_starts():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = fit_serve("--port", str(taken.getsockname()[1]))
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1:" in result.output
    assert result.output.count("\n") == 1


def test_emit_config_is_a_serve_config(tmp_path):
    path = tmp_path / "serve.yaml"
    result = fit_serve("--emit-config", str(path), "--replicas", "3", "--max-batch-size", "6", "--host", "0.0.0.0",
                       "--precision", "int8")
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(path.read_text())
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    [app] = config["applications"]
    assert app["import_path"] == "fit_serve.app:build" and app["route_prefix"] == "/"
    assert app["args"]["replicas"] == 3 and app["args"]["max_batch_size"] == 6 and app["args"]["package"] is None
    from fit_serve.app import ServeConfig

    assert ServeConfig.from_dict(app["args"]).replicas == 3 and app["args"]["precision"] == "int8"
    assert [p.name for p in tmp_path.iterdir()] == ["serve.yaml"]


def test_emit_config_names_where_the_api_key_is_never_the_key(tmp_path, monkeypatch):
    # fit-serve --api-key puts the key into its own environment (for the replicas): set, then delete, so that the
    # teardown restores the variable as it was (it leaked into later tests' servers, which then wanted a key)
    monkeypatch.setenv("FIT_SERVE_API_KEY", "")
    monkeypatch.delenv("FIT_SERVE_API_KEY")
    keys = tmp_path / "keys.txt"
    keys.write_text("key-from-file-5c2e\n")
    result = fit_serve("--emit-config", "-", "--api-key", "secret-key-91ab", "--api-keys-file", str(keys))
    assert result.exit_code == 0, result.output
    assert "secret-key-91ab" not in result.output and "key-from-file-5c2e" not in result.output
    args = yaml.safe_load(result.stdout)["applications"][0]["args"]
    assert args["api_key_env"] == "FIT_SERVE_API_KEY" and args["api_keys_file"] == str(keys.resolve())
    monkeypatch.setenv("FIT_SERVE_API_KEY", "from-env-77")         # the environment variable works as the option
    args = yaml.safe_load(fit_serve("--emit-config", "-").stdout)["applications"][0]["args"]
    assert args["api_key_env"] == "FIT_SERVE_API_KEY" and "from-env-77" not in str(args)


def test_a_keys_file_without_keys_is_one_line(tmp_path):
    empty = tmp_path / "keys.txt"
    empty.write_text("# no key yet\n\n")
    result = fit_serve("--api-keys-file", str(empty), "--port", "1")
    assert result.exit_code == 2 and result.stderr.strip().endswith(f"API keys file {empty} holds no key")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [{"replicas": 0}, {"max_batch_tokens": 0}, {"threads": 1.5}, {"max_queue": True},
                                  {"batch_wait_ms": -1}, {"backend": "nope"}, {"max_batch": 4}, {"precision": 8},
                                  {"max_images": 0}, {"body_timeout_s": -1}, {"api_key_env": ""},
                                  {"ingress_replicas": 0}])
def test_serve_config_refuses_bad_args(args):
    """The ``args`` of a Serve config file that someone edited by hand are checked too (one line)."""
    from engines.errors import BackendError
    from fit_serve.app import ServeConfig

    with pytest.raises((ValueError, BackendError)) as info:
        ServeConfig.from_dict(args)
    assert "\n" not in str(info.value)


def descendants(pid: int) -> set[int]:
    """Process ids below ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the Ray processes")
def test_ctrl_c_with_requests_in_flight_answers_each_and_leaves_no_process():
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cli.serve", "--port", str(port), "--threads", "1",
                               "--max-batch-size", "2"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until_healthy(f"http://127.0.0.1:{port}", 90), "fit-serve did not start within 90 s"
        ray_processes = descendants(server.pid)
        assert ray_processes
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(burst, f"http://127.0.0.1:{port}",
                                  [{"width": 128, "height": 128, "seed": i, "steps": 30} for i in range(4)], False, 60)
            time.sleep(1.0)
            server.send_signal(signal.SIGINT)
            answers = pending.result(timeout=90)
        _, stderr = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 130 and stderr.rstrip().endswith("fit-serve: interrupted")
    # the replica holds 2 x 2 requests: all 4 are in flight, and the drain finishes each
    assert [a.status for a in answers] == [200] * 4, [(a.status, a.error, a.body[:200]) for a in answers]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(alive(p) for p in ray_processes):
        time.sleep(0.5)
    assert not [p for p in ray_processes if alive(p)], "Ray processes left behind"
