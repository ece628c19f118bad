"""scripts/gpu_check.sh plumbing on a CPU, through the same commands the script runs (tests do not import
benchmarks/): the dry run lists every step of scripts/gpu_check.py with the right launcher, the cheap steps
run end to end on the CPU (same code as on the GPU, with --device cpu --quick), and the report merges results,
including steps that never wrote one."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "scripts.gpu_check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def steps() -> list[str]:
    proc = gpu_check("list")
    assert proc.returncode == 0, proc.stderr
    return [line.split()[0] for line in proc.stdout.splitlines()]


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"{sys.executable} -m pip install --no-deps --no-build-isolation -q -e ."
    run_lines = [line for line in lines if " -m scripts.gpu_check run " in line]
    assert [line.split(" run ")[1].split()[0] for line in run_lines] == steps() == [
        "pytest_gpu", "train_bf16", "ddp_nccl", "sampling", "export_onnx", "latency", "tensorrt_qdq"]
    ddp = next(line for line in lines if " run ddp_nccl " in line)
    assert "-m torch.distributed.run --standalone --nproc_per_node=1 -m scripts.gpu_check" in ddp
    assert all(line.startswith("timeout ") for line in run_lines)
    assert lines[-1] == f"{sys.executable} -m scripts.gpu_check report --out {out} --report-dir benchmarks/results"
    assert not out.exists()
    bad = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "gpu_check.sh: error: unknown argument --bogus" in bad.stderr


@pytest.mark.parametrize("step, extra", [
    ("pytest_gpu", []), ("train_bf16", []), ("sampling", []), ("tensorrt_qdq", []),
    ("latency", ["--config", "fitv2-tiny", "--shapes", "1x16,2x16", "--no-compile"]),
    pytest.param("export_onnx", [], marks=pytest.mark.slow),           # ~20 s of torch.export
])
def test_cheap_steps_run_on_the_cpu(tmp_path, step, extra):
    proc = gpu_check("run", step, "--out", str(tmp_path), "--device", "cpu", "--quick", *extra)
    result = json.loads((tmp_path / "steps" / f"{step}.json").read_text())
    assert proc.returncode == 0 and result["passed"], result
    assert result["step"] == step and proc.stdout.splitlines()[-1].startswith(f"{step}: ok")
    if step == "pytest_gpu":                                          # no TensorRT here: every gpu test skips
        assert result["tests"] > 0 and result["skipped"] == result["tests"]
        assert result["skip_reasons"][0].startswith("TensorRT tests need")
    if step == "latency":
        assert [(r["batch"], r["tokens"]) for r in result["rows"]] == [(1, 16), (2, 16)]
    if step == "tensorrt_qdq":                                        # no TensorRT, no CUDA: reported as skipped
        assert result["skipped"].startswith("needs ") and "skipped: needs" in proc.stdout


def test_report_merges_steps_and_names_missing_ones(tmp_path):
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "sampling.json").write_text(json.dumps(
        {"step": "sampling", "passed": True, "device": "cpu", "min_cosine": 1.0, "max_abs_diff": 0.0}))
    (tmp_path / "steps" / "latency.json").write_text(json.dumps(
        {"step": "latency", "passed": False, "error": "partial: the step did not finish", "config": "fitv2-xl",
         "dtype": "bf16 autocast", "repeats": 20, "rows": [{"batch": 2, "tokens": 256, "eager_ms": 1.5}]}))
    proc = gpu_check("report", "--out", str(tmp_path), "--report-dir", str(tmp_path / "results"))
    assert proc.returncode == 1                                          # the other steps left no result
    text = (tmp_path / "results" / "gpu_check.md").read_text()
    assert "| pytest_gpu | FAIL | no result (the step was killed or timed out) |" in text
    assert "| sampling | ok | cpu vs cpu: min cosine 1.0000000" in text
    assert "| latency | FAIL | partial: the step did not finish |" in text and "| 2 | 256 | 1.50 |" in text
    assert "**FAILED**" in text and proc.stdout.startswith("# GPU check")
    report = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
    assert [s["step"] for s in report["steps"]] == steps() and not report["passed"]
