"""Writing model packages: every command that writes one builds it in a draft and puts it in place in one step.

    with new_package(out, force=force) as draft:              # fit-export onnx (quantize: base=PACKAGE)
        export_transformer(model, draft.add("transformer.onnx"), ...)
        draft.manifest = Manifest(..., files=draft.files)
    with update_package(package) as draft:                    # ort-optimize, ov-optimize
        optimize_graph(draft.path / "transformer.onnx", draft.add("transformer.ort.onnx"), ...)
        draft.manifest = draft.manifest.replace(transformer=..., files=draft.files)

The draft is the hidden sibling ``.NAME.tmp-PID-XXXXXXXX`` of :func:`engines.atomic.temporary_folder`, so what a
kill leaves there is removed by the next tool that writes or opens NAME (:func:`engines.atomic.recover_folder`).
When the block ends without an error the manifest lists exactly the draft's files, the added files get the
usual permissions (0666 less the umask), everything is fsynced and the draft replaces NAME in one rename
(:func:`engines.atomic.replace_folder`). Any error, KeyboardInterrupt included, removes the draft and leaves NAME
as it was; an OSError (a full disk, a folder that cannot be written) becomes an ExportError of one line.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Iterable, Iterator, Optional

from engines import manifest as mf
from engines.atomic import fsync_folder, recover_folder, replace_folder, temporary_folder
from engines.package import file_entries, load_manifest, write_manifest
from fit_export.onnx_export import ExportError


class Draft:
    """A package being written in the folder ``path``: :meth:`add` a file, read :attr:`files`, set
    :attr:`manifest`."""

    def __init__(self, path: Path, original: Optional[mf.Manifest]):
        self.path = path
        self._manifest = original
        self._kept = dict(original.files) if original is not None else {}   # name -> FileEntry, not re-hashed
        self._shared: dict[str, int] = {}           # name -> inode of a file hard-linked with the original
        self._written: set[str] = set()             # files created in the draft (not links): fsynced at commit
        self._hashed: dict[str, Optional[tuple]] = {}   # added name -> ((size, mtime_ns, inode), FileEntry)

    def add(self, name: str) -> Path:
        """The path of the package file ``name`` (relative; its folder is made), to write next or written already;
        the manifest lists it with its own hash. A file of that name hard-linked with the original package is
        unlinked first, so writing the path never changes the original."""
        path = self.path / name
        inode = self._shared.pop(name, None)
        if inode is not None and path.exists() and path.stat().st_ino == inode:
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._kept.pop(name, None)
        self._hashed.setdefault(name, None)
        self._written.add(name)
        return path

    @property
    def files(self) -> dict[str, mf.FileEntry]:
        """The manifest's ``files`` for what the draft holds: the original's entries for the files taken from it,
        sha256 and size of the added ones (a file is hashed again only when it changed)."""
        for name, known in self._hashed.items():
            info = (self.path / name).stat()
            key = (info.st_size, info.st_mtime_ns, info.st_ino)
            if known is None or known[0] != key:
                self._hashed[name] = (key, file_entries(self.path, [name])[name])
        return dict(self._kept, **{name: entry for name, (_, entry) in self._hashed.items()})

    @property
    def manifest(self) -> Optional[mf.Manifest]:
        """The package's manifest: the original's (``base`` / the updated package) until set, None for a new one.
        Setting it writes ``manifest.json`` into the draft with ``files`` as the draft holds them, so the draft
        is a package that can be opened (quantize validates it) before it is put in place."""
        return self._manifest

    @manifest.setter
    def manifest(self, doc: mf.Manifest) -> None:
        self._manifest = doc.replace(files=self.files)
        write_manifest(self.path, self._manifest)

    def _take(self, folder: Path, names: Iterable[str], link: bool) -> None:
        """Put the files ``names`` of ``folder`` into the draft: hard links (copies where the file system has
        none), which :meth:`add` detaches before anything writes them, or copies."""
        for name in names:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if link:
                try:
                    os.link(folder / name, target, follow_symlinks=False)
                    self._shared[name] = target.stat().st_ino
                    continue
                except OSError:
                    pass
            shutil.copy2(folder / name, target, follow_symlinks=not link)
            self._written.add(name)

    def _commit(self, target: Path, mode: int) -> None:
        """Put the draft in place at ``target`` with the folder mode ``mode``."""
        if self._manifest is None:
            raise RuntimeError("a package needs a manifest: set draft.manifest before the block ends")
        if self._manifest.files != self.files or not (self.path / mf.MANIFEST_NAME).exists():
            self.manifest = self._manifest             # a file written after the manifest was set, or none yet
        file_mode = 0o666 & ~_umask()                 # safetensors writes private files; a package is not private
        for name in self._hashed:
            os.chmod(self.path / name, file_mode)
        for name in self._written:
            if not (self.path / name).is_symlink():
                _fsync_file(self.path / name)
        os.chmod(self.path, mode)
        for folder, _, _ in os.walk(self.path):
            fsync_folder(folder)
        replace_folder(self.path, target)


#################################################################################
#                              The two ways in                                  #
#################################################################################

@contextlib.contextmanager
def new_package(out, force: bool = False, base=None) -> Iterator[Draft]:
    """Write the package ``out``: the draft starts empty, or with copies of the files the package ``base`` lists
    (and its manifest as ``draft.manifest``), and replaces ``out`` when the block ends without an error.

    Refused with one line (ExportError) on entry: ``out`` exists and ``force`` is off; with ``force``, ``out`` is
    anything but an empty folder or a package; the folder that holds ``out`` cannot be written (missing parent
    folders are made). Raises PackageError when ``base`` is not a package that matches its hashes.
    """
    out = Path(out)
    recover_folder(out)
    _check_destination(out, force)
    original = load_manifest(base, verify=True) if base is not None else None
    with _drafted(out, original, 0o777 & ~_umask()) as draft:
        if original is not None:
            draft._take(Path(base), original.files, link=False)
        yield draft
        if not force and (out.exists() or out.is_symlink()):
            raise ExportError(f"output {out} appeared during the export; pass --force to replace it")


@contextlib.contextmanager
def update_package(package) -> Iterator[Draft]:
    """Change the package ``package`` (a symlink: the folder it points to): the draft holds every file of it as a
    hard link (``draft.manifest``: its manifest) and replaces it when the block ends without an error. The
    package is never written in place, so an interruption leaves it as it was; the folder that holds it must be
    writable. Raises PackageError when ``package`` is not a package that matches its hashes."""
    package = Path(os.path.realpath(package))
    recover_folder(package)
    original = load_manifest(package, verify=True)
    names = [os.path.relpath(os.path.join(folder, name), package)
             for folder, _, files in os.walk(package) for name in files]        # engines/ and the like too
    with _drafted(package, original, stat.S_IMODE(package.stat().st_mode)) as draft:
        draft._take(package, names, link=True)
        yield draft


@contextlib.contextmanager
def _drafted(target: Path, original: Optional[mf.Manifest], mode: int) -> Iterator[Draft]:
    """A draft of ``target``, committed with folder mode ``mode`` when the block ends, removed on any error."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        draft = Draft(temporary_folder(target), original)
    except OSError as e:
        raise ExportError(f"cannot write to {target.parent}: {e.strerror}") from None
    try:
        yield draft
        draft._commit(target, mode)
    except OSError as e:
        shutil.rmtree(draft.path, ignore_errors=True)
        free = (f" ({shutil.disk_usage(target.parent).free / 2 ** 20:.1f} MiB free there)"
                if e.errno == errno.ENOSPC else "")
        raise ExportError(f"cannot write the package {target}: {e.strerror or e}{free}") from None
    except BaseException:
        shutil.rmtree(draft.path, ignore_errors=True)
        raise


def _check_destination(out: Path, force: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise ExportError(f"output {out} already exists; pass --force to replace it")
    if out.is_symlink() or not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory; refusing to replace it even with --force")
    try:
        replaceable = not any(out.iterdir()) or (out / mf.MANIFEST_NAME).is_file()
    except OSError as e:
        raise ExportError(f"cannot read {out}: {e.strerror}") from None
    if not replaceable:
        raise ExportError(f"output {out} is a non-empty directory that is not a model package; "
                          f"refusing to replace it even with --force")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["Draft", "new_package", "update_package"]
