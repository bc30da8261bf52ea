"""Any interaction table a user brings: CSV, TSV or Parquet, with named user, item and optional time and rating
columns. Ids may be numbers or strings; times may be numbers (any order-preserving stamp) or dates.

Columns are the ones named by --user-col, --item-col, --time-col and --rating-col, or else found by the usual
header names (user, user_id, userId, item, item_id, movieId, rating, timestamp, time, ...). A bad value stops
with the file, the line and the column; nothing is skipped silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scalerec.data.movielens import HEADER_NAMES, RATING_FILES, Interactions
from scalerec.errors import UserError

PARQUET = (".parquet", ".pq")


def is_table_file(path: Path) -> bool:
    """Files read here rather than as a MovieLens layout: Parquet, .tsv / .tab, and any other text file with a
    header row, except MovieLens' own (u.data, ratings.dat, ratings.csv, .inter, .dat, zips), which are read
    strictly (integer ids, a time column)."""
    if path.suffix.lower() in (*PARQUET, ".tsv", ".tab"):
        return True
    if path.name in RATING_FILES or path.suffix.lower() in (".zip", ".inter", ".dat") or not path.is_file():
        return False
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", "replace").removeprefix("\ufeff").strip()
    field = first.replace("\t", ",").replace(";", ",").split(",")[0].strip().strip('"')
    try:
        float(field)
        return False  # no header: a MovieLens layout
    except ValueError:
        return bool(field)


def _separator(path: Path, sep: str | None) -> str:
    if sep:
        return "\t" if sep in ("\\t", "tab") else sep
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", "replace")
    return "\t" if "\t" in first else ";" if ";" in first and "," not in first else ","


def _pick(columns: list[str], given: str | None, role: str, flag: str, required: bool, name: str) -> str | None:
    """The header name for a role: the one given, else the first column whose name is a known alias."""
    if given is not None:
        if given not in columns:
            raise UserError(f"{name}: no column {given!r} ({flag}); the columns are {', '.join(map(repr, columns))}")
        return given
    aliases = HEADER_NAMES[role]
    found = next((c for c in columns if str(c).strip().lower().replace(" ", "_") in aliases), None)
    if found is None and required:
        raise UserError(
            f"{name}: no {role} column among {', '.join(map(repr, columns))}; name it with {flag} (expected a header "
            f"such as {', '.join(aliases[:3])})"
        )
    return found


def _nanoseconds(dates: pd.Series) -> np.ndarray:
    """int64 nanoseconds since 1970 (UTC) of a datetime column, with or without a time zone."""
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_convert(None)
    return dates.to_numpy().astype("datetime64[ns]").astype(np.int64)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def read_table_file(
    path: str | Path,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    rating_col: str | None = None,
    sep: str | None = None,
) -> Interactions:
    """Interactions from a table with a header row (CSV, TSV) or a Parquet file; `timestamps` is None where the
    table has no time column, `ratings` None where it has no rating column."""
    path = Path(path)
    name = str(path)
    if path.stat().st_size == 0:
        raise UserError(f"{name}: empty file (expected a table with a header row: user, item[, timestamp, rating])")
    parquet = path.suffix.lower() in PARQUET
    if parquet:
        try:
            import pyarrow.parquet as pq  # optional: pip install 'scalerec[parquet]'
        except ImportError:
            raise UserError(f"{name}: reading Parquet needs pyarrow (pip install 'scalerec[parquet]')") from None
        try:
            columns = list(pq.read_schema(path).names)
        except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
            raise UserError(f"{name}: not a readable Parquet file ({e})") from None
        header_line = None
    else:
        separator = _separator(path, sep)
        try:
            columns = [str(c) for c in pd.read_csv(path, sep=separator, nrows=0, engine="c").columns]
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise UserError(f"{name}, line 1: not a table header ({e})") from None
        header_line = 1
    user = _pick(columns, user_col, "user", "--user-col", True, name)
    item = _pick(columns, item_col, "item", "--item-col", True, name)
    time = _pick(columns, time_col, "timestamp", "--time-col", False, name)
    rating = _pick(columns, rating_col, "rating", "--rating-col", False, name)
    wanted = [c for c in (user, item, time, rating) if c is not None]
    if len(set(wanted)) < len(wanted):
        raise UserError(
            f"{name}: one column named for two roles (user {user!r}, item {item!r}, time {time!r}, rating {rating!r})"
        )
    if parquet:
        try:
            df = pq.read_table(path, columns=wanted).to_pandas()
        except Exception as e:  # a damaged file whose schema still reads
            raise UserError(f"{name}: not a readable Parquet file ({e})") from None
    else:
        try:
            # every column, not usecols: with usecols pandas silently ignores a line's surplus fields
            df = pd.read_csv(path, sep=separator, engine="c", dtype={user: str, item: str})[wanted]
        except pd.errors.ParserError as e:
            msg = str(e).replace("Error tokenizing data. C error: ", "").strip()
            raise UserError(f"{name}: {msg} (expected {len(columns)} fields per line, as in the header)") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{name}: not a UTF-8 text file ({e})") from None
    if len(df) == 0:
        raise UserError(f"{name}: a header but no rows")

    def where(row: int) -> str:  # the file line (text) or the row (Parquet) of a 0-based data row
        return f"line {row + 1 + header_line}" if header_line else f"row {row + 1}"

    def ids(col: str) -> np.ndarray:
        values = df[col]
        missing = values.isna().to_numpy()
        if missing.any():
            raise UserError(f"{name}, {where(_first_bad(missing))}: no value in column {col!r}")
        if values.dtype.kind in "iu":
            return values.to_numpy(np.int64)
        text = values.astype(str).str.strip().to_numpy(dtype=object)
        empty = text == ""
        if empty.any():
            raise UserError(f"{name}, {where(_first_bad(empty))}: no value in column {col!r}")
        return text

    users, items = ids(user), ids(item)
    timestamps = ratings = unit = None
    if time is not None:
        values = df[time]
        if values.dtype.kind in "iuf":
            bad = values.isna().to_numpy()
            timestamps = values.to_numpy()
        elif values.dtype.kind == "M":
            bad = values.isna().to_numpy()
            timestamps, unit = _nanoseconds(values), "ns"
        else:
            numbers = pd.to_numeric(values, errors="coerce")
            if numbers.notna().any():  # numbers: the first value that is not one is the error
                bad, timestamps = numbers.isna().to_numpy(), numbers.to_numpy()
            else:
                try:
                    dates = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
                except (ValueError, TypeError):
                    dates = pd.Series(pd.NaT, index=values.index)
                bad = dates.isna().to_numpy()
                timestamps, unit = _nanoseconds(dates), "ns"
        if bad.any():
            row = _first_bad(bad)
            raise UserError(f"{name}, {where(row)}: {time} is {df[time].iloc[row]!r}, expected a number or a date/time")
    if rating is not None:
        numbers = pd.to_numeric(df[rating], errors="coerce")
        bad = numbers.isna().to_numpy()
        if bad.any():
            row = _first_bad(bad)
            raise UserError(f"{name}, {where(row)}: {rating} is {df[rating].iloc[row]!r}, expected a number")
        ratings = numbers.to_numpy(np.float64)
    return Interactions(users, items, timestamps, name, ratings=ratings, time_unit=unit)
