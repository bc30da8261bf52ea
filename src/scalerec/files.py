"""Durable atomic file writes (a temporary name in the same folder, fsync, rename, fsync of the folder: readers
and a power cut never see half a file), folder locks, signals held off while a run commits an epoch, and what a
run folder holds."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from scalerec.errors import UserError

UMASK = os.umask(0)
os.umask(UMASK)  # read the process umask once (os.umask can only be read by setting it)
TMP = ".tmp"  # write_with's temporaries are <name><random>.tmp<suffix>
LOCK = ".lock"


class WriteError(UserError):
    """A file that could not be written (a full disk, a quota, permissions); the message names it."""


class FolderBusy(UserError):
    """Another live process holds the folder's lock."""


def write_atomic(path: Path, text: str) -> None:
    write_with(path, lambda tmp: Path(tmp).write_text(text))


def write_with(path: Path, writer: Callable[[str], object]) -> None:
    """Call writer(temporary path), fsync it, rename it to `path` and fsync the folder. On any failure the
    temporary is removed, `path` keeps what it held, and a write error is raised as WriteError naming `path`."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=TMP + path.suffix)
    except OSError as e:
        raise WriteError(f"{path}: cannot write it ({e.strerror or e})") from None
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes files private; results are ordinary files
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if (reason := write_failure(e)) is not None:
            raise WriteError(f"{path}: cannot write it ({reason})") from None
        raise
    fsync(path.parent)


def write_failure(error: BaseException) -> str | None:
    """Why a write failed, where `error` is (or was raised while handling) an OSError: torch.save reports a full
    disk as a RuntimeError whose context is the OSError."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def fsync(path: str | Path) -> None:
    """Flush a file's or a folder's data to the disk (a no-op for folders where the system cannot open them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):  # some filesystems refuse fsync on a folder; a file's must succeed
            raise
    finally:
        os.close(fd)


def remove_temporaries(folder: Path, names: tuple[str, ...]) -> list[str]:
    """Remove what write_with left of these files' writes in `folder` when its process was killed (call it only
    while holding the folder's lock, so that no live write is removed); returns the names removed."""
    removed = []
    for name in names:
        stem, suffix = Path(name).name, Path(name).suffix
        for tmp in folder.glob(f"{glob_escape(stem)}*{TMP}{suffix}"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp.name)
    return removed


@contextlib.contextmanager
def _flock(folder: Path, how: str) -> Iterator[bool]:
    """folder/.lock locked `how` ("shared", or "exclusive" without waiting) for the block; yields whether it is
    held (True where the system has no flock)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield True
        return
    fd = os.open(Path(folder) / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if how == "shared" else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def one_at_a_time(lock_file: Path) -> Iterator[None]:
    """The block run by one process at a time: an exclusive flock on `lock_file` (made if missing), waited for
    where another process holds it. Where the file cannot be made (a read-only folder) or the system has no flock,
    the block runs unlocked."""
    try:
        import fcntl

        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def writing_in(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock shared while writing into it (several writers at once): remove_orphans leaves the
    folder's temporaries alone meanwhile."""
    with _flock(folder, "shared"):
        yield


def remove_orphans(folder: Path, pattern: str) -> None:
    """Remove the files matching `pattern` (temporaries of killed writes) where no live process is writing in
    `folder` (writing_in); where one is, leave them for a later call."""
    if not Path(folder).is_dir():
        return
    with _flock(folder, "exclusive") as alone:
        if alone:
            for tmp in Path(folder).glob(pattern):
                with contextlib.suppress(OSError):
                    tmp.unlink()


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def read_json(path: Path):
    """A JSON file's value, or None where it is missing or unreadable."""
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


class FolderLock:
    """An exclusive lock on a folder (flock on <folder>/.lock) for as long as it is held; the lock file names the
    holder's process. Released by close(), or by the system when the process ends however it ends."""

    def __init__(self, folder: Path, what: str) -> None:
        self.folder = Path(folder)
        self.file = None
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            return
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 200).decode(errors="replace").splitlines()  # its pid and host, what it does
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise UserError(
                    f"{self.folder}: cannot be locked ({e.strerror}): a file system without locks?"
                ) from None
            by = f" (pid {holder[0]})" if holder else ""
            doing = holder[1] if len(holder) > 1 else what
            raise FolderBusy(f"{self.folder}: another scalerec process{by} is {doing} in this folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n{what}\n".encode())
        self.file = os.fdopen(fd, "w")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def hold_folder(path: Path, what: str = "training") -> FolderLock:
    """An exclusive lock on a run or sweep folder, taken before anything in it is read as free or written: a
    second process training into the same folder (two trains, a second --resume, a sweep started twice) is
    refused with one line naming the folder and the process that holds it."""
    return FolderLock(path, what)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held off until the block ends, then acted on as usual: what the block writes (an
    epoch's checkpoint and metrics) is written whole or not at all. Only in the main thread, where Python
    delivers signals; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in wanted}
    failed = False
    try:
        yield
    except BaseException:
        failed = True  # the block's own error says why the run stops; the signal would hide it
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: a handler set outside Python
        if caught and not failed:
            signal.raise_signal(caught[0])  # the handler in place acts on it now
