"""fit_export.package_writer: packages are written in a draft and put in place whole; an interrupted command leaves
the old package (or nothing) and the next run removes what it left."""
import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from cli.export import main as export_cli  # noqa: E402
from engines.package import load_manifest  # noqa: E402
from fit_export import package_writer  # noqa: E402
from fit_export.package_writer import new_package, update_package  # noqa: E402
from tests.runtime_helpers import copy_package, tiny_package  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return tiny_package(tmp_path_factory)[0]


def snapshot(folder: Path) -> dict:
    """relative path -> sha256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def listing(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


#################################################################################
#                               The writer                                      #
#################################################################################

@pytest.mark.parametrize("links", [True, False])
def test_update_never_writes_the_original_and_keeps_its_other_files(source, tmp_path, monkeypatch, links):
    """Files taken from the package are hard links (copies where there are none); writing the path add() gives
    leaves the original as it was, also when the block then fails; the commit keeps files the manifest does not
    list (TensorRT engines) and the folder's mode."""
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "no hard links on this file system")

    if not links:
        monkeypatch.setattr(package_writer.os, "link", no_links)
    package = copy_package(source, tmp_path / "pkg")
    (package / "engines").mkdir()
    (package / "engines" / "a.plan").write_bytes(b"engine")
    os.chmod(package, 0o750)
    before = snapshot(package)
    with pytest.raises(ValueError, match="stop"):
        with update_package(package) as draft:
            assert (draft.path / "transformer.onnx").samefile(package / "transformer.onnx") == links
            draft.add("transformer.onnx").write_bytes(b"new graph")
            raise ValueError("stop")
    assert snapshot(package) == before and listing(tmp_path) == ["pkg"]

    with update_package(package) as draft:
        draft.add("transformer.onnx").write_bytes(b"new graph")
        draft.add("notes/extra.txt").write_text("hello")
        draft.manifest = draft.manifest.replace(name="renamed", files=draft.files)
    doc = load_manifest(package, verify=True)
    assert doc.name == "renamed" and set(doc.files) == set(load_manifest(source).files) | {"notes/extra.txt"}
    assert (package / "transformer.onnx").read_bytes() == b"new graph"
    assert (package / "engines" / "a.plan").read_bytes() == b"engine"
    assert stat.S_IMODE(package.stat().st_mode) == 0o750 and listing(tmp_path) == ["pkg"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_a_failed_new_package_leaves_nothing(tmp_path, failure):
    with pytest.raises(failure):
        with new_package(tmp_path / "out") as draft:
            draft.add("a.bin").write_bytes(b"x")
            if failure is KeyboardInterrupt:
                raise KeyboardInterrupt
            # RuntimeError: the block ends without a manifest
    assert listing(tmp_path) == []


def test_the_commit_lists_what_the_draft_holds_with_the_usual_permissions(source, tmp_path):
    """A file changed after the manifest was set is hashed again at the commit; private files (safetensors writes
    them) and the draft folder get the modes the umask gives."""
    out = tmp_path / "copy"
    with new_package(out, base=source) as draft:
        extra = draft.add("extra.bin")
        extra.write_bytes(b"first")
        os.chmod(extra, 0o600)
        draft.manifest = draft.manifest.replace(files=draft.files)
        extra.write_bytes(b"second, longer")
        assert load_manifest(draft.path).files["extra.bin"].bytes == 5
    doc = load_manifest(out, verify=True)
    assert doc.files["extra.bin"].bytes == 14 and set(doc.files) == set(load_manifest(source).files) | {"extra.bin"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "extra.bin").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


#################################################################################
#                Every command, killed between the draft and the rename         #
#################################################################################

# Runs fit-export with the writer's final rename replaced by SIGKILL: the process dies with its draft complete,
# as a kill at the worst moment would leave it.
KILLED_AT_THE_RENAME = """
import os, signal, sys
from fit_export import package_writer
package_writer.replace_folder = lambda new, target: os.kill(os.getpid(), signal.SIGKILL)
from cli.export import main
main(sys.argv[1:])
"""

COMMANDS = {
    "onnx --force": (["onnx", "--config", "fitv2-tiny", "--random-weights", "--out", "{pkg}", "--force"], "pkg"),
    "quantize": (["quantize", "{pkg}", "--out", "{out}", "--no-accuracy"], "int8"),
    "ort-optimize": (["ort-optimize", "{pkg}"], "pkg"),
    "ov-optimize": (["ov-optimize", "{pkg}"], "pkg"),
    "fp16": (["fp16", "{pkg}", "--steps", "1"], "pkg"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_killed_command_leaves_the_old_package_and_the_next_run_nothing_else(command, source, tmp_path):
    args, written = COMMANDS[command]
    package = copy_package(source, tmp_path / "pkg")
    args = [a.format(pkg=package, out=tmp_path / "int8") for a in args]
    before = snapshot(package)
    killed = subprocess.Popen([sys.executable, "-c", KILLED_AT_THE_RENAME, *args], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)
    assert killed.wait(timeout=300) == -signal.SIGKILL, killed.stderr.read()
    (draft,) = [name for name in listing(tmp_path) if name != "pkg"]           # the draft of the dead process
    assert draft.startswith(f".{written}.tmp-{killed.pid}-")
    assert snapshot(package) == before                                       # the old package, untouched

    result = CliRunner().invoke(export_cli, args)
    assert result.exit_code == 0, result.output
    assert listing(tmp_path) == sorted({"pkg", written})                      # the draft is gone
    doc = load_manifest(tmp_path / written, verify=True)                     # complete, every hash matches
    assert snapshot(tmp_path / written) != before
    if command in ("quantize", "ort-optimize", "ov-optimize", "fp16"):
        variant = {"quantize": "int8", "ort-optimize": "ort", "ov-optimize": "ov", "fp16": "fp16"}[command]
        assert doc.transformer.variant(variant).file in doc.files
