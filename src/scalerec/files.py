"""Atomic file writes (a temporary name in the same folder, then a rename, so readers never see half a file),
and what a run folder holds."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from scalerec.errors import UserError

UMASK = os.umask(0)
os.umask(UMASK)  # read the process umask once (os.umask can only be read by setting it)


def write_atomic(path: Path, text: str) -> None:
    write_with(path, lambda tmp: Path(tmp).write_text(text))


def write_with(path: Path, writer: Callable[[str], object]) -> None:
    """Call writer(temporary path), then rename the result to `path` (removing the temporary on failure)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes files private; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path):
    """A JSON file's value, or None where it is missing or unreadable (a run's logs may be cut short)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def few(names: list[str]) -> str:
    """The first three names, and "..." where there are more."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def is_run_folder(path: Path) -> bool:
    """Whether `path` holds a run's logs (train) or a failed sweep run's record (sweep)."""
    return any((path / name).is_file() for name in ("metrics.jsonl", "summary.json", "failed.json"))


def hold_folder(path: Path):
    """An exclusive lock on a run folder for as long as the returned file stays open (on POSIX; elsewhere none):
    a second process training into the same folder (a second --resume, a sweep started twice) is refused
    instead of interleaving its lines with the first's."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    lock = open(path / ".lock", "w")  # held open: the lock lasts as long as the file
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise UserError(f"{path}: another scalerec process is training in this folder") from None
    return lock
