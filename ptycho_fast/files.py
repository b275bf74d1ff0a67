"""Files and user errors: the plumbing every command shares (docs/development.md).

* :class:`UserError` — an error caused by the user's input; the CLI prints it as one line
  (exit code 2). ``data.DataError`` and ``bundle.BundleError`` derive from it.
* :func:`atomic_output` — one file written under a temporary name, renamed into place.
* :class:`OutputSet` — several files of one result directory, renamed into place together
  only once every one is complete (all-or-nothing).
* :func:`atomic_directory` — a whole directory built aside and renamed into place.
* :func:`write_json` / :func:`write_text` / :func:`jsonable`; :func:`read_json_object`.

Every file created here gets the permissions ``0o666 & ~umask`` (``mkstemp`` creates them
0600, which a shared beamline directory would not want): :func:`umask` is the one rule.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["UserError", "umask", "atomic_output", "atomic_directory", "OutputSet", "jsonable",
           "write_json", "write_text", "json_text", "read_json_object"]


class UserError(ValueError):
    """An error caused by the user's input (a file, a key, an option). The CLI reports it as
    one line ``ptycho-fast: error: ...`` with exit code 2 and no traceback."""


def umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, error=UserError) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically
    (``os.replace``), on any error it is removed: readers never see a half-written file.
    ``error``: the exception class raised when the directory does not exist."""
    path = Path(path)
    directory = _parent(path)
    if not directory.is_dir():
        raise error(f"{path}: cannot write: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, may_replace=lambda p: True, what: str = "a result",
                     error=UserError) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it becomes ``path`` (an
    existing non-empty directory there is replaced when ``may_replace(path)`` says so, else
    ``error``: it "is not ``what``"), on any error it is removed."""
    path = Path(path)
    parent = _parent(path)
    if not parent.is_dir():
        raise error(f"{path}: cannot write: directory {parent} does not exist")
    if path.exists() and not path.is_dir():
        raise error(f"{path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not may_replace(path):
        raise error(f"{path}: exists and is not {what}; refusing to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())
        old = None
        if path.exists():
            # A non-empty directory cannot be renamed over: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.replace(path, old / "previous")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class OutputSet:
    """All-or-nothing outputs in one directory: each file is written to a temporary name
    beside its target; :meth:`commit` renames every one into place (``os.replace``) only
    after all were written; :meth:`abort` removes the temporaries (and the directory, if
    this run created it and it is empty).

    As a context manager it commits when the block ends (the names in ``committed``) and
    aborts when it raises; an ``OSError`` (a full disk, no permission) becomes a
    :class:`UserError` naming ``option`` and saying that nothing was written."""

    def __init__(self, directory: str | os.PathLike, option: str = "--out"):
        self.dir = Path(directory)
        self.option = option
        self.created = not self.dir.exists()
        self.dir.mkdir(exist_ok=True)
        self.pending: dict[str, Path] = {}
        self.committed: list[str] = []

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.committed = self.commit()
                return
        except OSError as error:
            exc = error
        self.abort()
        if isinstance(exc, OSError):
            raise UserError(f"{self.option} {self.dir}: cannot write the results ({exc.strerror or exc}); "
                            "nothing was written") from None

    @contextlib.contextmanager
    def file(self, name: str) -> Iterator[Path]:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.dir)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
        except BaseException:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
            raise
        self.pending[name] = tmp_path

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.file(name) as tmp:
            tmp.write_bytes(data)

    def write_json(self, name: str, obj) -> None:
        self.write_bytes(name, json_text(obj).encode())

    def commit(self) -> list[str]:
        mask = umask()
        for name, tmp in self.pending.items():
            os.chmod(tmp, 0o666 & ~mask)
            os.replace(tmp, self.dir / name)
        names = list(self.pending)
        self.pending = {}
        return names

    def abort(self) -> None:
        for tmp in self.pending.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.pending = {}
        if self.created:
            with contextlib.suppress(OSError):
                self.dir.rmdir()  # only if empty


def jsonable(obj):
    """``obj`` with numpy values, tuples and paths turned into plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_text(obj) -> str:
    return json.dumps(jsonable(obj), indent=2, allow_nan=True) + "\n"


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json_text(obj))


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """A JSON file holding an object; anything else is a one-line UserError naming ``what``."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} {path}: not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} {path}: expected a JSON object")
    return value
