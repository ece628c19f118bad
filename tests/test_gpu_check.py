"""scripts/gpu_check.sh plumbing on a CPU: the dry run lists every step of benchmarks/gpu_check.py with the
right launcher, each step's entry exists, the cheap steps run end to end on the CPU (same code as on the GPU,
with --device cpu --quick), and the report merges results, including steps that never wrote one."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"{sys.executable} -m pip install --no-deps --no-build-isolation -q -e ."
    steps = [line.split(" run ")[1].split()[0] for line in lines if " -m benchmarks.gpu_check run " in line]
    assert steps == list(gpu_check.STEPS)
    ddp = next(line for line in lines if " run ddp_nccl " in line)
    assert "-m torch.distributed.run --standalone --nproc_per_node=1 -m benchmarks.gpu_check" in ddp
    assert all(line.startswith("timeout ") for line in lines if " run " in line)
    assert lines[-1] == f"{sys.executable} -m benchmarks.gpu_check report --out {out} --report-dir benchmarks/results"
    assert not out.exists()
    bad = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "gpu_check.sh: error: unknown argument --bogus" in bad.stderr


def test_every_step_has_an_entry_and_the_list_matches():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "list"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    listed = [line.split()[0] for line in proc.stdout.splitlines()]
    assert listed == list(gpu_check.STEPS) and all(callable(f) for f in gpu_check.STEPS.values())
    assert set(gpu_check.TORCHRUN_STEPS) <= set(listed)


@pytest.mark.parametrize("step", ["train_bf16", "sampling",
                                  pytest.param("export_onnx", marks=pytest.mark.slow)])   # ~20 s of torch.export
def test_cheap_steps_run_on_the_cpu(tmp_path, step):
    result = gpu_check.run_step(step, tmp_path, device="cpu", quick=True)
    assert result["passed"], result
    assert json.loads((tmp_path / "steps" / f"{step}.json").read_text())["step"] == step


def test_latency_rows_and_report(tmp_path):
    result = gpu_check.step_latency(tmp_path, device="cpu", quick=True, config="fitv2-tiny", batches=(1, 2),
                                    tokens=(16,), compile_too=False)
    assert result["passed"] and [(r["batch"], r["tokens"]) for r in result["rows"]] == [(1, 16), (2, 16)]
    gpu_check._write_step(tmp_path, "latency", result)
    gpu_check._write_step(tmp_path, "sampling", {"passed": True, "device": "cpu", "min_cosine": 1.0,
                                                 "max_abs_diff": 0.0})
    report = gpu_check.write_report(tmp_path, tmp_path / "results")
    assert not report["passed"]                                         # the other steps left no result
    text = (tmp_path / "results" / "gpu_check.md").read_text()
    assert "| pytest_gpu | FAIL | no result (the step was killed or timed out) |" in text
    assert "| sampling | ok | cpu vs cpu: min cosine 1.0000000" in text
    assert "| 2 | 16 | " in text and "**FAILED**" in text
    assert json.loads((tmp_path / "results" / "gpu_check.json").read_text())["steps"][0]["step"] == "pytest_gpu"
