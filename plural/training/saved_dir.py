"""Saved directories: the one way plural writes a store or a checkpoint to disk and reads it back.

A save is a directory of plain files written in a temporary sibling, each file and the directory
fsynced, with ``checksums.json`` recording the sha256 of every file, then swapped into place:

1. an earlier save at ``path`` is renamed to ``.<name>.old``;
2. the new directory is renamed to ``path`` and the parent directory fsynced;
3. ``.<name>.old`` is removed.

A crash (even ``kill -9``) at any moment leaves either the previous save at ``path``, or, between
the two renames, the previous save at ``.<name>.old``, which :func:`resolve` finds; temporary
directories left by killed saves are removed by the next save or load. Saves and loads of one
path take an advisory lock (``flock``) on the parent directory, exclusive for a save and shared
for a load, so two processes never see each other's half-written state: one waits (up to
:data:`LOCK_TIMEOUT` seconds) or gets a clear error. The lock is on the directory itself, so no
lock file is left behind.

A save never deletes what it did not write: it replaces only an empty directory or one that is
recognisably a save of the same kind (every entry listed in its ``checksums.json``, or, for saves
older than checksums, only the kind's own file names); anything else needs ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Collection, Iterator

logger = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"
LOCK_TIMEOUT = float(os.environ.get("PLURAL_LOCK_TIMEOUT", "60"))
"""Seconds a save or load waits for another process's lock on the same path before giving up."""
_HASH_BLOCK = 1 << 20

try:  # POSIX advisory locks; elsewhere saves are still atomic, only not serialised across processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def old_path(path: Path) -> Path:
    """Where the previous save waits during a swap: ``.<name>.old`` beside ``path``."""
    return path.with_name(f".{path.name}.old")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp."


@contextlib.contextmanager
def locked(path: Path, *, exclusive: bool, error: type[Exception], timeout: float | None = None) -> Iterator[None]:
    """Hold the advisory lock of ``path`` (a ``flock`` on its parent directory) while the block runs.

    Raises:
        error: the lock is still held by another process after ``timeout`` seconds.
    """
    parent = path.parent
    if fcntl is None or not parent.is_dir():
        yield
        return
    timeout = LOCK_TIMEOUT if timeout is None else timeout
    fd = os.open(parent, os.O_RDONLY)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    raise error(f"{path} is being {'read or written' if exclusive else 'written'} by another "
                                f"process (its lock on {parent} was held for {timeout:g} s); try again, or "
                                "raise PLURAL_LOCK_TIMEOUT") from None
                time.sleep(delay)
                delay = min(2 * delay, 0.02)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def clean_temporaries(path: Path) -> None:
    """Remove temporary directories that killed saves of ``path`` left beside it (call under the lock)."""
    parent, prefix = path.parent, _temp_prefix(path)
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name.startswith(prefix) and entry.is_dir() and not entry.is_symlink():
            logger.info("removing %s, left by an interrupted save", entry)
            shutil.rmtree(entry, ignore_errors=True)


def recorded_files(path: Path, error: type[Exception]) -> dict[str, str] | None:
    """``{file name: sha256}`` from ``path/checksums.json``, or None for a save that has none.

    Raises:
        error: ``checksums.json`` exists but cannot be read as such a mapping.
    """
    file = path / CHECKSUMS
    if not file.exists():
        return None
    try:
        recorded = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{file} is corrupt: {err}") from None
    if not (isinstance(recorded, dict) and all(isinstance(k, str) and isinstance(v, str) and len(v) == 64
                                               for k, v in recorded.items())):
        raise error(f"{file} is corrupt: expected a JSON object of file names to sha256 hex digests")
    return recorded


def verify(path: Path, error: type[Exception]) -> dict[str, str] | None:
    """Check every file of the save at ``path`` against its recorded sha256.

    Returns:
        The recorded ``{file name: sha256}`` when all match; None for a save older than checksums.

    Raises:
        error: naming the first missing or altered file.
    """
    recorded = recorded_files(path, error)
    if recorded is None:
        return None
    for name, digest in recorded.items():
        file = path / name
        if "/" in name or os.sep in name or name in ("", ".", "..") or not file.is_file():
            raise error(f"{file} is missing (recorded in {CHECKSUMS})")
        try:
            actual = sha256_file(file)
        except OSError as err:
            raise error(f"{file} could not be read: {err}") from None
        if actual != digest:
            raise error(f"{file} is corrupt: its sha256 {actual[:12]}... differs from the recorded "
                        f"{digest[:12]}...; the save was altered or damaged")
    return recorded


def require(path: Path, names: Collection[str], recorded: dict[str, str] | None, error: type[Exception]) -> None:
    """Raise ``error`` naming the first of ``names`` that the save lacks (or, with checksums, does
    not record)."""
    for name in names:
        if recorded is not None and name not in recorded:
            raise error(f"{path / CHECKSUMS} is corrupt: it does not record {name}")
        if not (path / name).is_file():
            raise error(f"{path / name} is missing")


def record_checksums(path: Path) -> dict[str, str]:
    """fsync every file of the directory ``path`` and record their sha256 in ``checksums.json``
    (fsynced too, with the directory). :func:`write` calls it on each new save; calling it on a
    save edited by hand re-stamps it, so the edit loads."""
    digests = {}
    for file in sorted(path.iterdir()):
        if file.name == CHECKSUMS:
            continue
        if not file.is_file() or file.is_symlink():
            raise RuntimeError(f"a save holds only plain files, found {file.name!r}")
        fsync_path(file)
        digests[file.name] = sha256_file(file)
    (path / CHECKSUMS).write_text(json.dumps(digests, indent=1))
    fsync_path(path / CHECKSUMS)
    fsync_path(path)
    return digests


def marker(path: Path, name: str) -> dict | None:
    """The JSON object in ``path/name`` (a save's marker file: a manifest, a config), or None when
    it is missing or not a JSON object; what each kind's ``is_kind`` test for the save guard reads."""
    try:
        content = json.loads((Path(path) / name).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None


def foreign_entries(path: Path, is_kind: Callable[[Path], bool], known_names: Collection[str]) -> list[str]:
    """The entries of the directory ``path`` that a save of this kind did not write (all of them
    when ``path`` is not such a save; none for an empty directory), sorted."""
    entries = {entry.name for entry in path.iterdir()}
    if not entries or not is_kind(path):
        return sorted(entries)
    try:
        recorded = recorded_files(path, ValueError)
    except ValueError:
        recorded = None
    ours = (set(recorded) | {CHECKSUMS}) if recorded is not None else set(known_names)
    return sorted(entries - ours)


def resolve(path: Path, marker: str) -> Path:
    """``path``, or its ``.old`` sibling when a crash mid-swap left only that one holding ``marker``."""
    old = old_path(path)
    if not (path / marker).is_file() and (old / marker).is_file():
        logger.warning("%s is missing; loading the previous save left at %s", path, old)
        return old
    return path


def check_target(path: Path, *, what: str, is_kind: Callable[[Path], bool], known_names: Collection[str],
                 overwrite: bool) -> None:
    """Raise ``FileExistsError`` unless :func:`write` may put a save at ``path`` (see there); callers
    that work for minutes before saving (training) call it first, to fail before the work."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(f"{path} exists and is not a directory; not replacing it with {what}")
    others = [] if overwrite else foreign_entries(path, is_kind, known_names)
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise FileExistsError(f"{path} holds files that are not {what} ({shown}); refusing to replace "
                              "them: choose another path, or pass overwrite=True to replace the directory")


def write(path: Path, fill: Callable[[Path], None], *, what: str, is_kind: Callable[[Path], bool],
          known_names: Collection[str], overwrite: bool, error: type[Exception]) -> Path:
    """Write a saved directory at ``path`` atomically and durably (see the module docstring).

    Args:
        path: the target directory.
        fill: writes the save's files (flat, no subdirectories) into the directory it is given.
        what: what the save is, for messages ("a UserStore", "a plural checkpoint").
        is_kind: whether an existing directory is a save of this kind.
        known_names: the kind's file names, for recognising saves older than checksums.
        overwrite: replace ``path`` even when it holds files this kind of save did not write.
        error: the exception type for a lock that cannot be had.

    Raises:
        FileExistsError: ``path`` is a file, or a directory holding other things, and ``overwrite``
            is False.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path, exclusive=True, error=error):
        clean_temporaries(path)
        check_target(path, what=what, is_kind=is_kind, known_names=known_names, overwrite=overwrite)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
        old = old_path(path)
        moved_aside = False
        try:
            fill(tmp)
            record_checksums(tmp)
            if path.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.replace(path, old)
                moved_aside = True
            os.replace(tmp, path)
            fsync_path(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if moved_aside and not path.exists():
                try:
                    os.replace(old, path)
                except OSError:  # resolve() falls back to the .old directory
                    logger.warning("save to %s failed; the previous save is left at %s", path, old)
            raise
        shutil.rmtree(old, ignore_errors=True)
    return path


@contextlib.contextmanager
def reading(path: Path, marker: str, error: type[Exception]) -> Iterator[Path]:
    """Hold the shared lock of ``path`` while a load reads it; yields the directory to read
    (``path``, or the ``.old`` sibling a crash left) after removing a killed save's temporaries."""
    path = Path(path)
    with locked(path, exclusive=False, error=error):
        clean_temporaries(path)
        yield resolve(path, marker)
