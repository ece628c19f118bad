"""Atomic file writes: readers, and a run after a crash, see the old file or the new one, never a partial one.

Every file this project must not leave half-written goes through here: the data is written to a temporary file
in the target's folder (same file system, so the rename is atomic), flushed and fsynced, renamed over the target
with ``os.replace``, and the folder is fsynced so the rename itself is on disk. The file gets the mode a plain
``open(path, "w")`` gives a new file (0666 less the umask). On any failure, ``KeyboardInterrupt`` included, the
temporary file is removed and the target keeps its old content. A hard kill can leave a hidden
``.NAME.XXXXXXXX.tmp`` beside the target; it is never mistaken for the target.

Folders (model packages) are built in a hidden sibling ``.NAME.tmp-PID-XXXXXXXX`` and put in place with
:func:`replace_folder`: on Linux an existing folder is swapped with the new one in one atomic ``renameat2``
(``RENAME_EXCHANGE``); elsewhere the old folder is renamed aside to ``.NAME.old-PID`` and the new one renamed in,
and :func:`recover_folder` (run by the tools before they read or write NAME) puts ``.NAME.old-PID`` back when a
kill came between the two renames, and removes the hidden leftovers of processes that no longer run.

Standard library only (no numpy, no torch), so every part of the project can use it.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import IO, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def _open_temporary(path: Path, binary: bool, encoding: Optional[str], newline: Optional[str]) -> IO:
    """A new, exclusively created file next to ``path`` (open() mode "x": 0666 less the umask)."""
    for _ in range(100):
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            if binary:
                return open(temporary, "xb")
            return open(temporary, "x", encoding=encoding, newline=newline)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


def fsync_folder(folder: PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk. A no-op where folders cannot be opened."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "wb", encoding: Optional[str] = None,
                newline: Optional[str] = None) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` when the ``with`` block ends without an error.

    mode: "wb" (bytes) or "w" (text, with ``encoding``/``newline`` as for :func:`open`). The yielded file's
    ``name`` is the temporary path, for writers that must read back what they wrote before it is committed;
    raising inside the block leaves ``path`` untouched. The folder must exist.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes a whole file: mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    f = _open_temporary(path, mode == "wb", encoding, newline)
    temporary = Path(f.name)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        fsync_folder(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(path: PathLike, data: Union[bytes, str], encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or str encoded with ``encoding``) to ``path`` atomically; returns ``path``."""
    if isinstance(data, str):
        data = data.encode(encoding)
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system
    or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):                   # no libc symbol (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def temporary_folder(target: PathLike) -> Path:
    """A new, empty hidden folder ``.NAME.tmp-PID-XXXXXXXX`` beside ``target`` to build it in (same file system,
    so :func:`replace_folder` can rename it into place); the PID lets :func:`recover_folder` tell leftovers of
    dead processes from work in progress."""
    target = Path(target)
    for _ in range(100):
        folder = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            folder.mkdir(mode=0o700)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary folder next to {target}")


def replace_folder(new: PathLike, target: PathLike) -> None:
    """Put the finished folder ``new`` (a sibling of ``target``) at ``target``, replacing the folder there if any.
    At every moment ``target`` is the old folder or the new one (see the module docstring for systems without
    an atomic exchange); the old folder is deleted afterwards."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        fsync_folder(target.parent)
        return
    if _exchange(new, target):
        fsync_folder(target.parent)
        shutil.rmtree(new, ignore_errors=True)          # it now holds the old folder
        return
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    fsync_folder(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _running(pid: int) -> bool:
    if os.name != "posix":
        return True                                     # cannot tell: treat as running, touch nothing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_folder(target: PathLike) -> None:
    """Repair what a killed :func:`replace_folder` or folder build left beside ``target``: when ``target`` is
    missing and a dead process's ``.NAME.old-PID`` exists, rename it back to ``target``; remove the dead
    processes' other ``.NAME.old-PID`` and ``.NAME.tmp-PID-*`` folders. Never raises (a read-only place is left
    as it is)."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(old|tmp)-(\d+)(?:-[0-9a-f]+)?")
    try:
        leftovers = [(entry, match.group(1)) for entry in target.parent.iterdir()
                     if (match := pattern.fullmatch(entry.name)) and not _running(int(match.group(2)))]
        for entry, kind in sorted(leftovers, key=lambda item: item[1]):      # "old" first
            if kind == "old" and not target.exists() and not target.is_symlink():
                os.rename(entry, target)
                fsync_folder(target.parent)
            else:
                shutil.rmtree(entry, ignore_errors=True)
    except OSError:
        pass


__all__ = ["atomic_file", "atomic_write", "fsync_folder", "temporary_folder", "replace_folder", "recover_folder"]
