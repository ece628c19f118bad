"""engines.atomic: the one atomic-write helper (temp file in the target folder, fsync, rename, fsync the folder)."""
import os
import stat

import pytest

from engines import atomic
from engines.atomic import atomic_file, atomic_write


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_bytes_and_text_and_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.bin"
    assert atomic_write(target, b"old") == target
    assert target.read_bytes() == b"old"
    atomic_write(str(target), "néw\n")
    assert target.read_bytes() == "néw\n".encode()
    with atomic_file(target, "w", newline="") as f:
        f.write("a\r\nb\n")
    assert target.read_bytes() == b"a\r\nb\n"
    assert listing(tmp_path) == ["out.bin"]


def test_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.dirname(src) == os.path.dirname(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write(tmp_path / "a.json", "{}")
    assert events == [("fsync", "file"), ("replace", True), ("fsync", "folder")]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_the_file_gets_the_mode_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.png", b"x")
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.png").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


@pytest.mark.parametrize("failure", [TypeError, KeyboardInterrupt])
def test_a_failure_removes_the_temporary_file_and_keeps_the_old_one(tmp_path, failure):
    target = tmp_path / "e" / "a.plan"
    target.parent.mkdir()
    atomic_write(target, b"old")
    with pytest.raises(failure):
        with atomic_file(target) as f:
            f.write(b"half a fi")
            assert listing(target.parent) == sorted(["a.plan", os.path.basename(f.name)])
            raise failure("dies while writing")
    assert target.read_bytes() == b"old"
    assert listing(target.parent) == ["a.plan"]
    with pytest.raises(TypeError):
        atomic_write(target, None)
    assert listing(target.parent) == ["a.plan"]


def test_a_failed_rename_removes_the_temporary_file(tmp_path, monkeypatch):
    def replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write(tmp_path / "a", b"data")
    assert listing(tmp_path) == []


def test_the_temporary_file_is_hidden_in_the_target_folder_and_readable_by_name(tmp_path):
    with atomic_file(tmp_path / "model.onnx") as f:
        f.write(b"graph")
        f.flush()
        assert os.path.dirname(f.name) == str(tmp_path)
        assert os.path.basename(f.name).startswith(".model.onnx.") and f.name.endswith(".tmp")
        with open(f.name, "rb") as g:
            assert g.read() == b"graph"
        assert not (tmp_path / "model.onnx").exists()
    assert (tmp_path / "model.onnx").read_bytes() == b"graph"


def test_refuses_modes_that_do_not_write_a_whole_file(tmp_path):
    for mode in ("ab", "r+b", "a"):
        with pytest.raises(ValueError, match="mode"):
            with atomic_file(tmp_path / "x", mode):
                pass
    assert listing(tmp_path) == []


def test_a_missing_folder_is_an_error_not_created(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "a.png", b"x")
    assert listing(tmp_path) == []
