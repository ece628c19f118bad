"""One convention for every command line: help, one-line errors, exit codes, size syntax, names and choices, and the
extra to install when a command's dependencies are missing."""
import importlib
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.common import BACKEND, Command, Group, Interrupted, Named, Passed, UserError, needs_extra, user_errors
from engines.buckets import BucketError, parse_profiles, parse_size, parse_sizes
from engines.rope import (EXTRAPOLATION_ALIASES, EXTRAPOLATIONS, METHODS, RopeSettings, canonical_extrapolation,
                          resolve_method)

ROOT = Path(__file__).resolve().parents[1]


def entry_points():
    """(program, command path, click command) for every console script and every subcommand."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    found = []
    for prog, target in sorted(scripts.items()):
        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        found.append((prog, (), command))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            found.append((prog, (name,), sub))
    return found


ENTRY_POINTS = entry_points()
IDS = [" ".join((prog, *path)) for prog, path, _ in ENTRY_POINTS]


def invoke(prog, path, args):
    root = next(cmd for p, q, cmd in ENTRY_POINTS if p == prog and q == ())
    return CliRunner().invoke(root, [*path, *args])


def test_every_entry_point_and_subcommand_is_covered():
    assert {"fit-run", "fit-export", "fit-train", "fit-eval"} <= {p for p, _, _ in ENTRY_POINTS}
    assert {"onnx", "validate", "ort-optimize", "build", "trt-check"} <= {q[0] for p, q, _ in ENTRY_POINTS
                                                                           if p == "fit-export" and q}
    for prog, path, command in ENTRY_POINTS:
        assert isinstance(command, (Command, Group)), (prog, path)
        assert command.prog == prog, (prog, path)


@pytest.mark.parametrize("prog, path, command", ENTRY_POINTS, ids=IDS)
def test_short_and_long_help(prog, path, command):
    short, long = invoke(prog, path, ["-h"]), invoke(prog, path, ["--help"])
    assert short.exit_code == 0 and long.exit_code == 0, short.output
    assert short.output == long.output and short.output.startswith("Usage: ")
    assert "-h, --help" in short.output


@pytest.mark.parametrize("prog, path, command", ENTRY_POINTS, ids=IDS)
def test_usage_errors_are_one_line_exit_2(prog, path, command):
    result = invoke(prog, path, ["--no-such-flag"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"{prog}: error: "), result.stderr
    assert "--no-such-flag" in result.stderr


@pytest.mark.parametrize("prog, path", [("fit-export", ("nope",)), ("fit-train", ("nope",)),
                                        ("fit-export", ("build",)), ("fit-eval", ())])
def test_unknown_commands_and_missing_arguments(prog, path):
    result = invoke(prog, path, [])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"{prog}: error: "), result.stderr


def test_export_group_help_lists_every_command():
    result = invoke("fit-export", (), ["-h"])
    commands = result.output.split("Commands:")[1].splitlines()
    for name in ("onnx", "validate", "ort-optimize", "build", "trt-check"):
        line = next(line for line in commands if line.split()[:1] == [name])
        assert not line.rstrip().endswith("..."), line


# ---- the command and group classes --------------------------------------------------------------------------

def _tool(error: BaseException):
    @click.group(cls=Group, prog="fit-demo")
    def demo():
        """A demo program."""

    @demo.command()
    def go():
        raise error

    return demo


@pytest.mark.parametrize("error, code, line", [
    (KeyboardInterrupt(), 130, "fit-demo: interrupted"),
    (Interrupted("interrupted; continue later"), 130, "fit-demo: interrupted; continue later"),
    (UserError("bad\nsecond line"), 2, "fit-demo: error: bad"),
])
def test_interrupts_and_user_errors_end_in_one_line(error, code, line):
    result = CliRunner().invoke(_tool(error), ["go"])
    assert result.exit_code == code
    assert result.stderr == line + "\n"


def test_a_missing_module_of_fit_toolkit_itself_is_not_a_missing_extra():
    with pytest.raises(UserError, match=r"^torch is not installed; pip install 'fit-toolkit\[train\]'$"):
        with needs_extra("train"):
            raise ModuleNotFoundError("No module named 'torch.nn'", name="torch.nn")
    with pytest.raises(ModuleNotFoundError):            # a broken install (or a bug), not the user's to fix
        with needs_extra("train"):
            raise ModuleNotFoundError("No module named 'engines.nothing'", name="engines.nothing")


def test_user_errors_name_the_file_of_an_os_error():
    for err in (OSError(28, "No space left on device", "out/x.png"), OSError(28, "No space left on device")):
        err.filename = "out/x.png"
        with pytest.raises(UserError, match=r"No space left on device.*out/x.png|out/x.png: .*No space left"):
            with user_errors(OSError):
                raise err
    with pytest.raises(KeyError):                       # other exceptions pass through (a bug, not the user)
        with user_errors(OSError):
            raise KeyError("x")


def test_fit_train_keeps_its_resume_hint(monkeypatch, tmp_path):
    import fit.train
    from cli.train import main as train_main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit.train, "train", interrupted)
    result = CliRunner().invoke(train_main, ["run", "--config", "fitv2-tiny", "--out", str(tmp_path / "run")])
    assert result.exit_code == 130
    assert result.stderr == f"fit-train: interrupted; continue with --resume --out {tmp_path / 'run'}\n"


# ---- one size syntax ----------------------------------------------------------------------------------------

def test_parse_size_is_width_by_height():
    assert parse_size("64x96") == (64, 96) and parse_size(" 40 X 120 ") == (40, 120) and parse_size("8×16") == (8, 16)
    assert parse_sizes("448x224, 256x256,") == [(448, 224), (256, 256)]
    for bad in ("64", "64x", "ax64", "64*64", "-8x8", "64by64"):
        with pytest.raises(BucketError, match="WIDTHxHEIGHT"):
            parse_size(bad)
    with pytest.raises(BucketError, match="must be positive"):
        parse_size("0x64")
    with pytest.raises(BucketError, match="no size"):
        parse_sizes(" , ")
    assert parse_profiles("48x16,32", 16)[0].sizes == ((48, 16),)


def test_export_sizes_use_the_one_syntax(tmp_path):
    result = invoke("fit-export", ("onnx",), ["--config", "fitv2-tiny", "--random-weights", "--out",
                                              str(tmp_path / "pkg"), "--sizes", "64x64,64by64"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("fit-export: error: size '64by64' is not WIDTHxHEIGHT")
    assert list(tmp_path.iterdir()) == []


def test_eval_sizes_are_width_by_height_and_methods_accept_aliases(monkeypatch):
    import fit.eval.classifier
    import fit.eval.evaluate
    import fit.loading
    from cli.eval import main as eval_main

    seen = {}

    class Stop(Exception):
        pass

    def fake_evaluate(model, classifier, sizes, methods, **kwargs):
        seen.update(sizes=sizes, methods=methods)
        raise Stop

    model = type("Model", (), {"config": type("Config", (), {"context_size": 16}), "patch_size": 8})
    monkeypatch.setattr(fit.loading, "load_model", lambda *args: model)
    monkeypatch.setattr(fit.eval.classifier, "load_classifier", lambda path=None: None)
    monkeypatch.setattr(fit.eval.evaluate, "evaluate", fake_evaluate)
    result = CliRunner().invoke(eval_main, ["--checkpoint", "x.safetensors", "--config", "fitv2-tiny",
                                            "--sizes", "48x16", "--methods", "PI,VisionNTK,ntk-pro2"])
    assert isinstance(result.exception, Stop), result.output
    assert seen == {"sizes": [(16, 48)], "methods": ["linear", "vision-ntk", "ntk-aware-pro2"]}   # (height, width)


# ---- names and choices --------------------------------------------------------------------------------------

def test_extrapolation_names_are_canonical_and_aliases_resolve():
    assert EXTRAPOLATIONS == METHODS + ("vision-ntk", "vision-yarn") and len(set(EXTRAPOLATIONS)) == 9
    for name in EXTRAPOLATIONS:
        assert canonical_extrapolation(name) == name == canonical_extrapolation(name.upper())
    for alias, name in EXTRAPOLATION_ALIASES.items():
        assert name in EXTRAPOLATIONS and alias not in EXTRAPOLATIONS
        assert canonical_extrapolation(f" {alias.upper()} ") == name
        assert resolve_method(alias) == resolve_method(name)
    assert canonical_extrapolation("VisionNTK") == "vision-ntk" and canonical_extrapolation("none") == "normal"
    with pytest.raises(ValueError, match="unknown RoPE method 'warp'; choose one of normal, linear, .*vision-yarn$"):
        canonical_extrapolation("warp")


def test_official_names_are_coupled_and_vision_names_decoupled():
    base = RopeSettings(64, method="ntk-aware", decouple=True, ori_max_pe_len=16)     # a decoupled (HR) model
    assert not base.with_method("ntk-aware").decouple and base.with_method("vision-ntk").decouple
    assert base.with_method("ntk") == base.with_method("ntk-aware")


def _option(command, name):
    return next(p for p in command.params if p.name == name)


def test_help_shows_canonical_names_only_and_accepts_aliases():
    from cli.export import main as export_main
    from cli.run import main as run_main

    param = _option(export_main.commands["validate"], "methods")
    assert isinstance(param.type, Named) and param.type.names == EXTRAPOLATIONS
    assert param.type.convert("visionntk", param, None) == "vision-ntk"
    with pytest.raises(click.BadParameter, match="unknown RoPE method"):
        param.type.convert("warp", param, None)
    # fit-run hands a request's values to the engine, which resolves aliases and words refusals (one check)
    param = _option(run_main, "extrapolation")
    assert isinstance(param.type, Passed) and param.type.choices == EXTRAPOLATIONS
    assert param.type.convert("visionntk", param, None) == "visionntk"
    text = CliRunner().invoke(run_main, ["-h"]).output
    assert "|vision-ntk|" in text and "visionntk" not in text and "|pi|" not in text
    assert BACKEND.names == ("onnxruntime", "tensorrt", "openvino") and BACKEND.convert("TRT", None, None) == "tensorrt"


def test_choices_come_from_the_code_that_defines_them():
    import engines.manifest
    import engines.backends.tensorrt.store
    from cli.eval import main as eval_main
    from cli.export import main as export_main
    from cli.run import main as run_main
    from engines.sampler import SAMPLERS

    assert tuple(_option(export_main.commands["onnx"], "precision").type.choices) == engines.manifest.PRECISIONS
    assert tuple(_option(export_main.commands["build"], "precision").type.choices) == \
        engines.backends.tensorrt.store.PRECISIONS
    # validate --precision names a variant or what a backend computes in; each backend checks it (one line)
    assert _option(export_main.commands["validate"], "precision").type == click.STRING
    for command in (run_main, eval_main):
        assert tuple(_option(command, "sampler").type.choices) == SAMPLERS      # run: --help only; eval: checked
    assert _option(eval_main, "cfg").opts == ["--cfg"] and _option(run_main, "cfg").opts == ["--cfg"]


# ---- fit-eval --out -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("out, message", [("missing/table.md", "does not exist"), ("folder", "is a directory"),
                                          ("table.json", "give the table a name")])
def test_eval_refuses_an_unwritable_out_before_any_work(out, message, tmp_path, monkeypatch):
    import fit.loading
    from cli.eval import main as eval_main

    def must_not_run(*args, **kwargs):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr(fit.loading, "load_model", must_not_run)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    result = CliRunner().invoke(eval_main, ["--checkpoint", "x.safetensors", "--config", "fitv2-tiny", "--out", out])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("fit-eval: error: ")
    assert message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


@pytest.mark.parametrize("args, message", [
    (["--time-shift", "0"], "--time-shift must be a number from 0.01 to 100, got 0.0"),
    (["--sampler", "dopri5", "--time-shift", "3"], "--time-shift applies to euler, heun, ab2, unipc, not dopri5, which keeps"),
    (["--steps", "0"], "--steps must be a whole number from 1 to 10,000, got 0")])
def test_eval_refuses_bad_sampler_settings_before_any_work(args, message, monkeypatch):
    import fit.loading
    from cli.eval import main as eval_main

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(fit.loading, "load_model", must_not_run)
    result = CliRunner().invoke(eval_main, ["--checkpoint", "x.safetensors", "--config", "fitv2-tiny", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"fit-eval: error: {message}")


def test_eval_writes_its_files_atomically(tmp_path, monkeypatch):
    import os

    from engines.atomic import atomic_write as _write_atomically     # what fit-eval writes --out with

    target = tmp_path / "table.md"
    _write_atomically(target, "first\n")
    assert target.read_text() == "first\n"

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        _write_atomically(target, "second\n")
    assert target.read_text() == "first\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]


@pytest.mark.parametrize("report, message", [("missing/report.json", "does not exist"), ("folder", "is a directory")])
def test_validate_refuses_an_unwritable_report_before_any_work(report, message, tmp_path, monkeypatch):
    """fit-export validate --report follows the one rule for output files (cli.common.check_writable)."""
    from cli.export import main as export_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    result = CliRunner().invoke(export_main, ["validate", "no-such-package", "--report", report])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith("fit-export: error: ") and message in result.stderr


# ---- the core install: commands that need an extra say which ------------------------------------------------

# Without FIT_CORE_PYTHON (the core-install venv of scripts/test.sh): this interpreter with the extras' modules
# hidden, as they are in the core install.
HIDE_EXTRAS = """
import importlib.abc, sys
class HideExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnx_ir", "onnxscript", "ray", "fastapi"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, HideExtras())
"""

# Each command line runs in the same process; prints [exit status, stderr] per command as JSON.
RUN_COMMANDS = """
import contextlib, importlib, io, json, sys
results = []
for module, args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            importlib.import_module(module).main(args)
        except SystemExit as end:
            results.append([end.code, err.getvalue()])
print(json.dumps(results))
"""

NEEDS_AN_EXTRA = [
    ("fit-export", ["onnx", "--config", "fitv2-tiny", "--random-weights", "--out", "{tmp}/pkg"], "export"),
    ("fit-export", ["validate", "{package}"], "export"),
    ("fit-export", ["quantize", "{package}", "--out", "{tmp}/int8"], "export"),
    ("fit-export", ["ort-optimize", "{tmp}"], "export"),
    ("fit-export", ["ov-optimize", "{tmp}"], "export"),
    ("fit-export", ["fp16", "{tmp}"], "export"),
    ("fit-export", ["build", "{package}", "--dry-run"], "export"),
    ("fit-export", ["trt-check", "{package}"], "export"),
    ("fit-train", ["run", "--config", "fitv2-tiny", "--out", "{tmp}/run"], "train"),
    ("fit-train", ["prepare", "{tmp}", "{tmp}/data", "--max-tokens", "16", "--pixels"], "train"),
    ("fit-train", ["vae", "--out", "{tmp}/vae"], "train"),
    ("fit-eval", ["--checkpoint", "{tmp}/ema.safetensors", "--config", "fitv2-tiny"], "train"),
    ("fit-serve", ["--port", "1"], "serve"),
]


def test_the_core_install_names_the_extra_a_command_needs(tmp_path):
    from engines.pipeline import DEFAULT_MODEL_DIR

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    commands = [(scripts[prog].split(":")[0], [a.format(tmp=tmp_path, package=DEFAULT_MODEL_DIR) for a in args])
                for prog, args, _ in NEEDS_AN_EXTRA]
    core = os.environ.get("FIT_CORE_PYTHON")
    python, prelude = (core, "") if core else (sys.executable, HIDE_EXTRAS)
    proc = subprocess.run([python, "-c", textwrap.dedent(prelude) + RUN_COMMANDS, json.dumps(commands)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert len(results) == len(NEEDS_AN_EXTRA)
    for (prog, args, extra), (code, stderr) in zip(NEEDS_AN_EXTRA, results):
        [line] = stderr.splitlines()
        assert code == 2 and line.startswith(f"{prog}: error: "), (prog, args, stderr)
        assert line.endswith(f" is not installed; pip install 'fit-toolkit[{extra}]'"), (prog, args, line)
    assert list(tmp_path.iterdir()) == []
