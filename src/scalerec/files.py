"""Atomic file writes (a temporary name in the same folder, then a rename, so readers never see half a file),
and what a run folder holds."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

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


def few(names: list[str]) -> str:
    """The first three names, and "..." where there are more."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def is_run_folder(path: Path) -> bool:
    """Whether `path` holds a run's logs (train) or a failed sweep run's record (sweep)."""
    return any((path / name).is_file() for name in ("metrics.jsonl", "summary.json", "failed.json"))
