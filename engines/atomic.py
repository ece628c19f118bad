"""Atomic file writes: readers, and a run after a crash, see the old file or the new one, never a partial one.

Every file this project must not leave half-written goes through here: the data is written to a temporary file
in the target's folder (same file system, so the rename is atomic), flushed and fsynced, renamed over the target
with ``os.replace``, and the folder is fsynced so the rename itself is on disk. The file gets the mode a plain
``open(path, "w")`` gives a new file (0666 less the umask). On any failure, ``KeyboardInterrupt`` included, the
temporary file is removed and the target keeps its old content. A hard kill can leave a hidden
``.NAME.XXXXXXXX.tmp`` beside the target; it is never mistaken for the target.

Standard library only (no numpy, no torch), so every part of the project can use it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
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


__all__ = ["atomic_file", "atomic_write", "fsync_folder"]
