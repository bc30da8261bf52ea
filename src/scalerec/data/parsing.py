"""Checked parsing of delimited text that every reader builds on: rows read in chunks with each field checked
(a bad row is one UserError naming the file, its line and what was expected), ids and numbers kept compact, and
header names matched to the usual column names. Readers return raw `Interactions`; prepare.py makes a Dataset."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scalerec.errors import UserError


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


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


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
