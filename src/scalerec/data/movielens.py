"""Readers for MovieLens rating files (u.data, ratings.dat, ratings.csv, RecBole .inter, the zips, a folder).

Every reader returns raw `Interactions` (ids as in the file); `prepare.py` turns them into a Dataset.
A malformed file is reported as a `UserError` naming the file, the line and what was expected.
"""

from __future__ import annotations

import codecs
import io
import zipfile
from pathlib import Path

import pandas as pd

from scalerec.data.ncf import files as ncf_files
from scalerec.data.parsing import (
    HEADER_NAMES,
    Interactions,
    header_name,
    is_number,
    read_table,
)
from scalerec.errors import UserError
from scalerec.files import few


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
        # the prefix of the NCF paper's files, some of them missing
        if parts := [f.name for f in ncf_files(path) if f.is_file()]:
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


# MovieLens' item titles, beside each ratings file of its release: (file name, field separator, encodings in turn)
TITLE_FILES = {
    "u.data": ("u.item", "|", ("latin-1",)),
    "ratings.dat": ("movies.dat", "::", ("utf-8", "latin-1")),
    "ratings.csv": ("movies.csv", ",", ("utf-8",)),
}


def read_titles(ratings: Path) -> tuple[dict[str, str], str | None]:
    """({item id: title}, a note where the titles file was found but could not be read) for the MovieLens ratings
    file `ratings` (a file, or a zip holding one): from the titles file of its release in the same folder (u.item
    beside u.data, movies.dat beside ratings.dat, movies.csv beside ratings.csv). No titles file: ({}, None);
    titles are never a reason to refuse the ratings."""
    ratings = Path(ratings)
    try:
        found = _title_bytes(ratings)
        if found is None:
            return {}, None
        name, data = found
        _, sep, encodings = next(t for t in TITLE_FILES.values() if t[0] == name)
        return _parse_titles(data, sep, encodings), None
    except (OSError, zipfile.BadZipFile, ValueError, IndexError, KeyError, UnicodeDecodeError) as e:
        return {}, f"item titles not read ({type(e).__name__}: {e})"


def _title_bytes(ratings: Path) -> tuple[str, bytes] | None:
    """(the titles file's name, its bytes) beside the ratings file (in a zip: beside its ratings member)."""
    if zipfile.is_zipfile(ratings):
        with zipfile.ZipFile(ratings) as zf:
            names = zf.namelist()
            members = [n for n in names if n.rsplit("/", 1)[-1] in TITLE_FILES]
            if not members:
                return None
            member = min(members, key=lambda n: RATING_FILES.index(n.rsplit("/", 1)[-1]))  # as the ratings are read
            folder, _, base = member.rpartition("/")
            wanted = (f"{folder}/" if folder else "") + TITLE_FILES[base][0]
            return (TITLE_FILES[base][0], zf.read(wanted)) if wanted in names else None
    path = titles_file(ratings)
    return (path.name, path.read_bytes()) if path is not None else None


def titles_file(ratings: Path) -> Path | None:
    """The titles file beside a ratings file (not a zip), where there is one."""
    path = Path(ratings).parent / TITLE_FILES[Path(ratings).name][0] if Path(ratings).name in TITLE_FILES else None
    return path if path is not None and path.is_file() else None


def _parse_titles(data: bytes, sep: str, encodings: tuple[str, ...]) -> dict[str, str]:
    for encoding in encodings:
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            if encoding == encodings[-1]:
                raise
    if sep == ",":  # movies.csv: quoted titles may hold commas
        try:
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        except pd.errors.ParserError as e:
            raise ValueError(str(e).strip()) from None
        if df.shape[1] < 2:
            raise ValueError("expected an id and a title in each row")
        return dict(zip(df.iloc[:, 0], df.iloc[:, 1]))
    rows = (line.split(sep) for line in text.splitlines() if line.strip())
    return {row[0]: row[1] for row in rows if len(row) > 1}
