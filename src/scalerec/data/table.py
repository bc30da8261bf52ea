"""Any interaction table a user brings: CSV, TSV or Parquet, with named user, item and optional time and rating
columns. Ids may be numbers or strings; times may be numbers (any order-preserving stamp) or dates.

Columns are the ones named by --user-col, --item-col, --time-col and --rating-col, or else found by the usual
header names (user, user_id, userId, item, item_id, movieId, rating, timestamp, time, ...). A bad value stops
with the file, the line and the column; nothing is skipped silently.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import numpy as np
import pandas as pd

from scalerec.data import movielens
from scalerec.data.movielens import HEADER_NAMES, RATING_FILES, Interactions, compact, is_number, line_of_row
from scalerec.data.prepare import sorted_unique
from scalerec.errors import UserError

PARQUET = (".parquet", ".pq")


COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # what pandas reads by the file's suffix


def is_table_file(path: Path) -> bool:
    """Files read here rather than as a MovieLens layout: Parquet, compressed text (.gz, .bz2, .xz), and any
    other text file with a header row, except MovieLens' own (u.data, ratings.dat, ratings.csv, .inter, .dat,
    zips), which are read strictly (integer ids, a time column). A text file without a header (.tsv included)
    is read as u.data is: user, item, rating, timestamp."""
    if path.suffix.lower() in (*PARQUET, *COMPRESSED):
        return True
    if path.name in RATING_FILES or path.suffix.lower() in (".zip", ".inter", ".dat") or not path.is_file():
        return False
    first = _first_line(path).removeprefix("\ufeff").strip()
    field = first.replace("\t", ",").replace(";", ",").split(",")[0].strip().strip('"')
    try:
        float(field)
        return False  # no header: a MovieLens layout
    except ValueError:
        return bool(field)


def _opener(path: Path):
    """open, or the decompressing open for the file's suffix."""
    return COMPRESSED.get(path.suffix.lower(), open)


def _first_line(path: Path) -> str:
    """The first line that is not blank (pandas skips blank lines before the header too)."""
    try:
        with _opener(path)(path, "rb") as f:
            return next((line for line in f if line.strip()), b"").decode("utf-8", "replace")
    except (OSError, EOFError, lzma.LZMAError) as e:  # gzip's BadGzipFile is an OSError
        raise UserError(f"{path}: not a readable {path.suffix} file ({e})") from None


def _separator(path: Path, sep: str | None) -> str:
    if sep:
        return "\t" if sep in ("\\t", "tab") else sep
    plain = Path(path.stem) if path.suffix.lower() in COMPRESSED else path  # clicks.tsv.gz: a .tsv
    if plain.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    first = _first_line(path)
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


def _shown(value) -> str:
    """A bad value as an error message shows it: quoted text, or 'missing' (an empty field, a truncated line)."""
    return "missing" if pd.isna(value) else repr(str(value))


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
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise UserError(f"{name}: not a readable compressed file ({e})") from None
        if all(is_number(c) for c in columns):
            raise UserError(
                f"{name}, line 1: numbers, not a header (a table needs a header row naming its columns; a file "
                "without one is read as MovieLens' u.data: user, item, rating, timestamp, but only uncompressed)"
            )
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
        chunks = _parquet_chunks(path, wanted, name)
    else:
        chunks = _csv_chunks(path, separator, wanted, {user: str, item: str}, name, len(columns))
    parts: dict[str, list] = {"users": [], "items": [], "timestamps": [], "ratings": []}
    time_kind: str | None = None  # decided by the first chunk: "number" or "date", then held to
    rows = 0
    for df in chunks:

        def where(row: int, offset: int = rows) -> str:  # the file line (text; blank ones too) or the Parquet row
            if not header_line:
                return f"row {offset + row + 1}"
            return f"line {line_of_row(path, offset + row, True, _opener(path))}"

        parts["users"].append(_ids(df[user], user, name, where))
        parts["items"].append(_ids(df[item], item, name, where))
        if time is not None:
            times, time_kind = _times(df[time], time, name, where, time_kind)
            parts["timestamps"].append(times)
        if rating is not None:
            numbers = pd.to_numeric(df[rating], errors="coerce")
            bad = ~np.isfinite(numbers.to_numpy(np.float64, na_value=np.nan))  # missing, not a number, inf
            if bad.any():
                row = _first_bad(bad)
                value = _shown(df[rating].iloc[row])
                raise UserError(f"{name}, {where(row)}: {rating} is {value}, expected a finite number")
            parts["ratings"].append(compact(numbers.to_numpy(np.float64)))
        rows += len(df)
    if rows == 0:
        raise UserError(f"{name}: a header but no rows")
    users, user_names = _joined_ids(parts.pop("users"))
    items, item_names = _joined_ids(parts.pop("items"))
    timestamps = np.concatenate(parts.pop("timestamps")) if time is not None else None
    ratings = np.concatenate(parts.pop("ratings")) if rating is not None else None
    unit = "ns" if time_kind == "date" else None
    return Interactions(
        users, items, timestamps, name, ratings=ratings, time_unit=unit, user_names=user_names, item_names=item_names
    )


def _csv_chunks(path: Path, sep: str, wanted: list[str], dtype: dict, name: str, n_columns: int):
    try:
        # every column, not usecols: with usecols pandas silently ignores a line's surplus fields
        # keep_default_na=False: "NA", "null", "None" are ids like any other text; an empty field is missing
        with pd.read_csv(
            path,
            sep=sep,
            engine="c",
            dtype=dtype,
            chunksize=movielens.CHUNK_ROWS,
            keep_default_na=False,
            na_values=[""],
        ) as reader:
            for chunk in reader:
                yield chunk[wanted]
    except pd.errors.ParserError as e:
        msg = str(e).replace("Error tokenizing data. C error: ", "").strip()
        raise UserError(f"{name}: {msg} (expected {n_columns} fields per line, as in the header)") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{name}: not a UTF-8 text file ({e})") from None
    except (OSError, EOFError, lzma.LZMAError) as e:  # a damaged .gz / .bz2 / .xz
        raise UserError(f"{name}: not a readable compressed file ({e})") from None


def _parquet_chunks(path: Path, wanted: list[str], name: str):
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=movielens.CHUNK_ROWS, columns=wanted)
        for batch in batches:
            yield batch.to_pandas()
    except Exception as e:  # a damaged file whose schema still reads
        raise UserError(f"{name}: not a readable Parquet file ({e})") from None


def _ids(values: pd.Series, col: str, name: str, where) -> tuple[np.ndarray, np.ndarray | None]:
    """One chunk's ids: (integers, None) from a typed column, else (codes, their strings) from text."""
    missing = values.isna().to_numpy()
    if missing.any():
        raise UserError(f"{name}, {where(_first_bad(missing))}: no value in column {col!r}")
    if values.dtype.kind in "iu":
        return compact(values.to_numpy()), None
    text = values.astype(str).str.strip()
    empty = (text == "").to_numpy()
    if empty.any():
        raise UserError(f"{name}, {where(_first_bad(empty))}: no value in column {col!r}")
    codes, uniques = pd.factorize(text)  # per chunk: a chunk of strings, never the whole file's
    return codes.astype(np.int32), np.asarray(uniques).astype(str)


def _joined_ids(chunks: list[tuple[np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray | None]:
    """All chunks' ids: integers as they are, or int32 codes into the sorted strings of every chunk."""
    if all(names is None for _, names in chunks):
        return np.concatenate([ids for ids, _ in chunks]), None
    # a typed column with text in another chunk cannot happen (Parquet keeps one type); text everywhere here
    names = sorted_unique(np.concatenate([n for _, n in chunks]))
    out = np.concatenate([np.searchsorted(names, n).astype(np.int32)[codes] for codes, n in chunks])
    chunks.clear()
    return out, names


def _times(values: pd.Series, col: str, name: str, where, kind: str | None) -> tuple[np.ndarray, str]:
    """One chunk's times as numbers, or as nanoseconds where the column holds dates (the first chunk decides)."""
    if values.dtype.kind in "iuf":
        bad, out, this = values.isna().to_numpy(), _number_times(values, col, name, where), "number"
    elif values.dtype.kind == "M":
        bad, out, this = values.isna().to_numpy(), _nanoseconds(values), "date"
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        if kind == "number" or (kind is None and numbers.notna().any()):  # the first non-number is the error
            bad, out, this = numbers.isna().to_numpy(), _number_times(numbers, col, name, where), "number"
        elif numbers.notna().any():  # dates in the chunks before: a number here is not read as a date
            row = _first_bad(numbers.notna().to_numpy())
            raise UserError(
                f"{name}, {where(row)}: {col} is {values.iloc[row]!r}, a number where the lines before hold dates"
            )
        else:
            try:
                dates = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
            except (ValueError, TypeError):
                dates = pd.Series(pd.NaT, index=values.index)
            bad, out, this = dates.isna().to_numpy(), _nanoseconds(dates), "date"
    if this == "number" and out.dtype.kind == "f":
        bad = bad | ~np.isfinite(out)  # inf, 1e400
    if bad.any():
        row = _first_bad(bad)
        raise UserError(f"{name}, {where(row)}: {col} is {_shown(values.iloc[row])}, expected a number or a date/time")
    if kind is not None and kind != this:
        raise UserError(f"{name}, {where(0)}: {col} holds {this}s here and {kind}s before (expected one kind)")
    return out, this


def _number_times(numbers: pd.Series, col: str, name: str, where) -> np.ndarray:
    """Numeric times, compact; an integer past int64 (read as uint64) is an error, not a wrapped-around time."""
    raw = numbers.to_numpy()
    if raw.dtype.kind == "u" and len(raw) and raw.max() > np.iinfo(np.int64).max:
        row = _first_bad(raw > np.iinfo(np.int64).max)
        raise UserError(f"{name}, {where(row)}: {col} is {raw[row]}, too large (at most 2**63 - 1)")
    return compact(raw, narrow_floats=False)
