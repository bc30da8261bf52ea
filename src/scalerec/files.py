"""Atomic file writes: a temporary name in the same folder, then a rename, so readers never see half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    write_with(path, lambda tmp: Path(tmp).write_text(text))


def write_with(path: Path, writer: Callable[[str], object]) -> None:
    """Call writer(temporary path), then rename the result to `path` (removing the temporary on failure)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
