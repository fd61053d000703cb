"""Output files and folders: never half-written, never replacing what spikesmith did not write.

- :func:`write_atomic` writes a temporary file beside the target and renames it over it,
  with the mode a new file gets under the user's umask (an existing file keeps its mode);
  it refuses to replace anything that is not a regular file (``-o /dev/null`` as root).
- :func:`check_writable_file` and :func:`check_output_folder` fail before the long work.
- An output folder is spikesmith's when it holds :data:`MANIFEST` (the files a command wrote
  there). A non-empty folder without it is refused; ``.``, the home folder, ``/`` and any
  parent of the working directory are never output folders. :func:`replace_outputs` moves
  new files in and removes only files that are still exactly what spikesmith wrote: a regular file
  directly in the folder, no link, whose SHA-256 is the one the manifest recorded. The manifest
  is advice, never authority: a forged one can only narrow what is removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import SpikesmithError

__all__ = ["write_atomic", "check_writable_file", "check_output_folder", "replace_outputs", "claim_outputs",
           "write_output", "MANIFEST", "FILE_SYSTEM_ERRORS", "file_system_refusal"]

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
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    A full disk, a read-only folder or any other refusal of the file system is one line
    (:class:`SpikesmithError`: "no space left on device writing PATH"), with nothing left behind.
    """
    path = Path(path)
    _refuse_special(path)
    mode = path.stat().st_mode & 0o7777 if path.is_file() else _new_file_mode()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".spikesmith-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in FILE_SYSTEM_ERRORS:
            raise SpikesmithError(f"{file_system_refusal(exc)} writing {path}") from None
        raise
    return path


#: File-system errors that are the machine's state, not a bug: reported in one line.
FILE_SYSTEM_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                                errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENAMETOOLONG})


def file_system_refusal(exc: OSError) -> str:
    """"no space left on device" for ENOSPC (and a full quota), else the system's own words."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device"
    return (exc.strerror or type(exc).__name__).lower()


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


#: A plain file name spikesmith writes into an output folder (no path, no leading dot).
_OUTPUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _manifest(folder: Path) -> dict[str, str | None] | None:
    """What the previous spikesmith run wrote into ``folder``: plain name -> SHA-256 of the content it wrote
    (None: not verifiable, e.g. an older manifest's list); None if ``folder`` is not marked as ours.
    The manifest is advice, never authority: a name or digest in it only narrows what may be removed."""
    try:
        text = (folder / MANIFEST).read_text()[:1 << 20]
        files = json.loads(text)["files"]
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    entries = files.items() if isinstance(files, dict) else ((name, None) for name in files) \
        if isinstance(files, list) else ()
    return {name: digest if isinstance(digest, str) and _DIGEST.fullmatch(digest) else None
            for name, digest in entries if isinstance(name, str) and _OUTPUT_NAME.fullmatch(name)}


_DIGEST = re.compile(r"[0-9a-f]{64}")


def _digest_of_regular_file(path: Path) -> str | None:
    """SHA-256 of ``path`` if it is a regular file reached without following a link; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _is_ours(folder: Path, name: str, digest: str | None) -> bool:
    """``folder/name`` is a regular file (no link) holding exactly what spikesmith recorded writing there."""
    return digest is not None and _OUTPUT_NAME.fullmatch(name) is not None \
        and _digest_of_regular_file(folder / name) == digest


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
    """Move every file of ``staging`` into ``folder`` and record them, with their SHA-256, in its manifest.

    Of the previous run's files only those still exactly as spikesmith wrote them (a regular file directly
    in ``folder``, no link, its content's hash the one recorded) are removed, first, so an interruption
    never leaves new files beside old ones; folders, links and changed files are never removed, and a new
    output over a file that is not verifiably ours is refused. ``staging`` is removed.
    """
    check_output_folder(folder)
    folder.mkdir(exist_ok=True)
    old = _manifest(folder) or {}
    new = {p.name: _digest_of_regular_file(p) for p in staging.iterdir() if p.name != MANIFEST}
    _refuse_unverified(folder, old, new)
    ours = {name: digest for name, digest in old.items() if _is_ours(folder, name, digest)}
    _write_manifest(folder, {**ours, **new})      # whatever happens next, the folder stays ours
    for name in ours:
        (folder / name).unlink()
    moved = []
    for name in sorted(new):
        os.replace(staging / name, folder / name)
        moved.append(folder / name)
    _write_manifest(folder, new)
    shutil.rmtree(staging, ignore_errors=True)
    return moved


def claim_outputs(folder: str | os.PathLike, names: list[str]) -> Path:
    """Make ``folder`` (:func:`check_output_folder`) and mark it as ours before the caller writes ``names`` one
    by one with :func:`write_output` (files it keeps across runs, like a cache); a file of one of those names
    that is not verifiably spikesmith's is refused."""
    folder = check_output_folder(folder)
    folder.mkdir(exist_ok=True)
    old = _manifest(folder) or {}
    _refuse_unverified(folder, old, names)
    _write_manifest(folder, {**{name: digest for name, digest in old.items() if _is_ours(folder, name, digest)},
                             **{name: old.get(name) for name in names}})
    return folder


def write_output(folder: Path, name: str, data: bytes | str) -> Path:
    """Write ``folder/name`` whole (:func:`write_atomic`) and record its SHA-256 in the manifest."""
    data = data.encode() if isinstance(data, str) else data
    old = _manifest(folder) or {}
    _refuse_unverified(folder, old, [name])
    path = write_atomic(folder / name, data)
    _write_manifest(folder, {**old, name: hashlib.sha256(data).hexdigest()})
    return path


def _refuse_unverified(folder: Path, listed: dict[str, str | None], names) -> None:
    """Refuse to write any of ``names`` over an entry of ``folder`` that is not verifiably spikesmith's."""
    for name in names:
        if not _OUTPUT_NAME.fullmatch(name):
            raise SpikesmithError(f"will not write {name!r} into {folder}: not a plain file name")
        target = folder / name
        if not (target.exists() or target.is_symlink()) or (target.is_dir() and not target.is_symlink()
                                                            and name in listed):
            continue
        if name not in listed:
            raise SpikesmithError(f"will not replace {target}: spikesmith did not write it")
        if not _is_ours(folder, name, listed[name]):
            raise SpikesmithError(f"will not replace {target}: it is not the file spikesmith wrote there (changed "
                                  "since, a link, or from an older spikesmith); move it away or choose a new folder")


def _write_manifest(folder: Path, files: dict[str, str | None]) -> None:
    write_atomic(folder / MANIFEST, json.dumps({"version": 2, "files": dict(sorted(files.items()))}, indent=1) + "\n")
