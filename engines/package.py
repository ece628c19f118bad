"""Reading and writing a package on disk: ``manifest.json``, file hashes and their verification.

A package is a directory with ``manifest.json`` and the files it lists (docs/package-format.md). Runtimes hash only
the files they open, each once per process (:func:`verify_files`).
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from engines.errors import PackageError
from engines.manifest import MANIFEST_NAME, FileEntry, Manifest

def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (packages hold multi-GB weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(directory, names: Iterable[str]) -> dict[str, FileEntry]:
    """``files`` entries for ``names`` (paths relative to ``directory``): sha256 and size of each."""
    directory = Path(directory)
    return {name: FileEntry(sha256_file(directory / name), (directory / name).stat().st_size)
            for name in sorted(names)}


# Files already hashed in this process: (real path, size, mtime_ns, inode) -> sha256. A server that opens the same
# package many times, or a pipeline whose backends share a file, hashes it once. (A file rewritten in place with
# the same size within the file system's timestamp granularity keeps its key; packages are replaced by renaming.)
_HASHED: dict[tuple, str] = {}


def clear_hash_cache() -> None:
    """Forget which files were hashed, as a new process would."""
    _HASHED.clear()


def verify_files(directory, manifest: Manifest, names: Iterable[str]) -> None:
    """Check size and sha256 of the named files against the manifest (each file hashed once per process)."""
    directory = Path(directory)
    for name in names:
        entry, path = manifest.files.get(name), directory / name
        if entry is None:
            raise PackageError(f"package {directory}: {name} is not listed in {MANIFEST_NAME}")
        try:
            stat = path.stat()
        except OSError:
            raise PackageError(f"package {directory}: {name} is missing; re-export the package") from None
        if stat.st_size != entry.bytes:
            raise PackageError(f"package {directory}: {name} has {stat.st_size} bytes, the manifest says "
                               f"{entry.bytes} (truncated or replaced); re-export the package")
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if key not in _HASHED:
            _HASHED[key] = sha256_file(path)
        if _HASHED[key] != entry.sha256:
            raise PackageError(f"package {directory}: sha256 of {name} does not match the manifest "
                               f"(corrupt or replaced); re-export the package")


def load_manifest(directory, verify: bool = False) -> Manifest:
    """Read and check ``directory/manifest.json``; with ``verify`` also the size and sha256 of every listed file.

    Runtimes leave ``verify`` off and check the files they open (:func:`verify_files`). Raises
    :class:`PackageError` with a one-line message on any problem.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise PackageError(f"package {directory} does not exist or is not a directory")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PackageError(f"package {directory} has no {MANIFEST_NAME}") from None
    except OSError as e:
        raise PackageError(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{path} is not valid JSON: {str(e).splitlines()[0]}") from None
    manifest = Manifest.from_dict(doc, str(path))
    if verify:
        verify_files(directory, manifest, sorted(manifest.files))
    return manifest


def write_manifest(directory, manifest: Manifest) -> Path:
    """Write ``manifest.json`` into ``directory`` atomically."""
    from engines.atomic import atomic_write

    path = Path(directory) / MANIFEST_NAME
    atomic_write(path, json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
