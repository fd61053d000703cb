"""Output files and folders: never half-written, never replacing what spikesmith did not write.

- :func:`write_atomic` writes a temporary file beside the target and renames it over it,
  with the mode a new file gets under the user's umask (an existing file keeps its mode);
  it refuses to replace anything that is not a regular file (``-o /dev/null`` as root).
- :func:`check_writable_file` and :func:`check_output_folder` fail before the long work.
- An output folder is spikesmith's when it holds :data:`MANIFEST` (the files a command wrote
  there). A non-empty folder without it is refused; ``.``, the home folder, ``/`` and any
  parent of the working directory are never output folders. :func:`replace_outputs` moves
  new files in and removes only files the previous manifest lists.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import SpikesmithError

__all__ = ["write_atomic", "check_writable_file", "check_output_folder", "replace_outputs", "claim_outputs",
           "MANIFEST"]

#: The file that marks a folder as spikesmith's output and lists what it wrote there.
MANIFEST = ".spikesmith-output.json"


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _refuse_special(path: Path) -> None:
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise SpikesmithError(f"will not replace {path}: it is {kind}")


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    _refuse_special(path)
    mode = path.stat().st_mode & 0o7777 if path.is_file() else _new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=".spikesmith-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _probe_writable(folder: Path, what: Path) -> None:
    """Create and remove a file in ``folder``: the one test that holds for root and read-only mounts."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".spikesmith-probe-", dir=folder)
    except OSError as exc:
        raise SpikesmithError(f"cannot write {what}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def check_writable_file(path: str | os.PathLike) -> None:
    """Fail now, before the long work, if ``path`` cannot be written as an output file."""
    path = Path(path)
    parent = path.parent          # Path("x").parent is Path(".")
    if not parent.is_dir():
        raise SpikesmithError(f"cannot write {path}: folder {parent} does not exist")
    _refuse_special(path)
    _probe_writable(parent, path)


def _protected(folder: Path) -> bool:
    """``.``, the home folder, ``/`` and every parent of the working directory."""
    resolved, cwd = folder.resolve(), Path.cwd().resolve()
    return resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve() \
        or resolved == Path(resolved.anchor)


def _manifest(folder: Path) -> list[str] | None:
    """The files the previous spikesmith run wrote into ``folder``; None if it is not ours."""
    try:
        names = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [name for name in names if isinstance(name, str) and "/" not in name and name not in ("", ".", "..")]


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Fail now if ``folder`` cannot take spikesmith's output; return it.

    It may be missing (its parent must exist), empty, or a previous output of spikesmith.
    """
    folder = Path(folder)
    parent = folder.parent
    if _protected(folder):
        raise SpikesmithError(f"will not write into {folder}: give a folder of its own for the output, "
                              "not the working directory, a parent of it or the home folder")
    if folder.exists() and not folder.is_dir():
        raise SpikesmithError(f"cannot write into {folder}: it is a file, not a folder")
    if not folder.exists():
        if not parent.is_dir():
            raise SpikesmithError(f"cannot create {folder}: folder {parent} does not exist")
        _probe_writable(parent, folder)
        return folder
    if any(folder.iterdir()) and _manifest(folder) is None:
        raise SpikesmithError(f"will not write into {folder}: it holds files spikesmith did not write "
                              f"(no {MANIFEST}); choose a new or empty folder")
    _probe_writable(folder, folder)
    return folder


def replace_outputs(staging: Path, folder: Path) -> list[Path]:
    """Move every file of ``staging`` into ``folder`` and record them in its manifest.

    The previous run's files (its manifest) are removed first, so an interruption never
    leaves new files beside old ones; a file of ``folder`` that no manifest lists is never
    touched (one with the name of a new output is refused). ``staging`` is removed.
    """
    check_output_folder(folder)
    folder.mkdir(exist_ok=True)
    old = set(_manifest(folder) or ())
    new = sorted(p.name for p in staging.iterdir() if p.name != MANIFEST)
    _refuse_unlisted(folder, old, new)
    _write_manifest(folder, sorted(old | set(new)))     # whatever happens next, the folder stays ours
    for name in old:
        stale = folder / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        elif stale.exists() or stale.is_symlink():
            stale.unlink()
    moved = []
    for name in new:
        os.replace(staging / name, folder / name)
        moved.append(folder / name)
    _write_manifest(folder, new)
    shutil.rmtree(staging, ignore_errors=True)
    return moved


def claim_outputs(folder: str | os.PathLike, names: list[str]) -> Path:
    """Make ``folder`` (:func:`check_output_folder`) and record ``names`` in its manifest, beside what it lists
    already, before the caller writes them one by one (files it keeps across runs, like a cache); a file of
    one of those names that spikesmith did not write is refused."""
    folder = check_output_folder(folder)
    folder.mkdir(exist_ok=True)
    old = set(_manifest(folder) or ())
    _refuse_unlisted(folder, old, names)
    _write_manifest(folder, sorted(old | set(names)))
    return folder


def _refuse_unlisted(folder: Path, listed: set[str], names) -> None:
    """Refuse to write any of ``names`` over a file of ``folder`` its manifest (``listed``) does not list."""
    clash = [name for name in names if name not in listed and (folder / name).exists()]
    if clash:
        raise SpikesmithError(f"will not replace {folder / clash[0]}: spikesmith did not write it")


def _write_manifest(folder: Path, names: list[str]) -> None:
    write_atomic(folder / MANIFEST, json.dumps({"files": names}, indent=1) + "\n")
