"""Downloads of the official MovieLens zips from GroupLens, each checked against its pinned size, sha256 and md5
before it is kept (written under a temporary name, renamed once checked: never half a zip in the data folder)."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scalerec.errors import UserError

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"


@dataclass(frozen=True)
class Release:
    """One official zip."""

    title: str
    """The dataset's name in logs."""
    size: int | None
    """Bytes of the zip; None where GroupLens replaces the file from time to time."""
    sha256: str | None
    """The pinned sha256 (None: as for size)."""
    md5: str | None
    """The md5 GroupLens publishes beside the zip (NAME.zip.md5); None: read from there at download time."""


# Sizes and sha256 as pinned by TensorFlow Datasets (url_checksums/movielens.txt; ml-20m and ml-latest-small
# also by Julia's DataDeps), ml-10m's as recorded with its size by other pipelines; the md5s are the ones
# GroupLens publishes beside the zips (ml-latest-small's is not pinned: its sha256 is). ml-latest is rebuilt by
# GroupLens now and then, so only the md5 published beside it at download time can check it.
RELEASES = {
    "ml-100k": Release(
        "MovieLens-100K",
        4_924_029,
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        "0e33842e24a9c977be4e0107933c0723",
    ),
    "ml-1m": Release(
        "MovieLens-1M",
        5_917_549,
        "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        "c4d9eecfca2ab87c1945afe126590906",
    ),
    "ml-10m": Release(
        "MovieLens-10M",
        65_566_137,
        "813c411ccb6122564edfe752e7f80c4dcc5aa25fa94c93622f6877a7ba252862",
        "ce571fd55effeba0271552578f2648bd",
    ),
    "ml-20m": Release(
        "MovieLens-20M",
        198_702_078,
        "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
        "cd245b17a1ae2cc31bb14903e1204af3",
    ),
    "ml-25m": Release(
        "MovieLens-25M",
        261_978_986,
        "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
        "6b51fb2759a8657d3bfcbfc42b592ada",
    ),
    "ml-latest-small": Release(
        "MovieLens-latest-small",
        978_202,
        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        None,
    ),
    "ml-latest": Release("MovieLens-latest", None, None, None),
}


class Unreachable(UserError):
    """The host could not be reached (no network, DNS, refused, timed out): a caller may try another source."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def url_of(name: str) -> str:
    return f"{GROUPLENS}{name}.zip"


def source_of(name: str, path: Path) -> str:
    """Where a fetched release came from, as the run's first lines say it."""
    return f"GroupLens ({url_of(name)}), cached at {path}"


def local_zip(name: str, data_dir: Path) -> Path:
    """Where `fetch` keeps NAME's zip."""
    return data_dir / name / f"{name}.zip"


def fetch(name: str, data_dir: Path, log: Callable[[str], None] = print) -> Path:
    """NAME's official zip in the data folder, downloaded and checked on first use."""
    release, path = RELEASES[name], local_zip(name, data_dir)
    if path.is_file():  # only a checked download is ever renamed to this name
        return path
    url = url_of(name)
    try:
        md5 = release.md5 or (None if release.sha256 else _published_md5(url))
        pins = {k: v for k, v in (("size", release.size), ("sha256", release.sha256), ("md5", md5)) if v is not None}
        made = not path.parent.exists()  # removed again if nothing lands in it
        path.parent.mkdir(parents=True, exist_ok=True)
        log(f"Downloading {url} ({f'{release.size / 1e6:.1f} MB' if release.size else 'size unpinned'}) ...")
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{name}.", suffix=".part", delete=False) as f:
            tmp = Path(f.name)
        try:
            got = dict(zip(("size", "sha256", "md5"), _download(url, tmp, release.size)))
            for what, want in pins.items():
                if got[what] != want:
                    raise UserError(
                        f"{url}: the download's {what} is {got[what]}, not the published {want}; it was not kept "
                        "(a truncated or altered download: run the command again)"
                    )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            if made and not path.exists():
                path.parent.rmdir()
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError) as e:
        local = "pass it with --data PATH (the zip, its folder or its ratings file)"
        if isinstance(e, urllib.error.HTTPError):  # reached, and refused: the network is not the cause
            reason = f"HTTP {e.code} {e.reason}"
            message = f"could not download {e.url or url} ({reason}); download it by hand and {local}"
            raise Unreachable(message, reason) from None
        reason = str(getattr(e, "reason", None) or e)
        raise Unreachable(
            f"could not download {url} ({reason}): the network may be closed here. Download {name}.zip where "
            f"files.grouplens.org can be reached and {local}",
            reason,
        ) from None
    except OSError as e:  # the data folder: full, read-only
        raise UserError(f"{path.parent}: could not write {name}.zip ({e.strerror or e})") from None
    log(f"{release.title}: {path} ({', '.join(pins)} checked)")
    return path


def _download(url: str, dest: Path, size: int | None) -> tuple[int, str, str]:
    """Stream `url` into `dest` with a progress bar; return its size, sha256 and md5."""
    from tqdm import tqdm

    sha256, md5, n = hashlib.sha256(), hashlib.md5(), 0
    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or size
        with tqdm(total=total, unit="B", unit_scale=True, leave=False, disable=None) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                sha256.update(chunk)
                md5.update(chunk)
                n += len(chunk)
                bar.update(len(chunk))
    return n, sha256.hexdigest(), md5.hexdigest()


def _published_md5(url: str) -> str:
    with urllib.request.urlopen(f"{url}.md5", timeout=60) as r:
        text = r.read(4096).decode("ascii", "replace")
    match = re.search(r"\b[0-9a-f]{32}\b", text)
    if not match:
        raise UserError(f"{url}.md5: expected an md5 checksum, got {text[:80]!r}")
    return match.group(0)
