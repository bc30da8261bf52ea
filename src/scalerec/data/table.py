"""Any interaction table a user brings: CSV, TSV or Parquet, with named user, item and optional time and rating
columns. Ids may be numbers or strings; times may be numbers (any order-preserving stamp) or dates.

Columns are the ones named by --user-col, --item-col, --time-col and --rating-col, or else found by the usual
header names (user, user_id, userId, item, item_id, movieId, rating, timestamp, time, ...; RecBole's typed names
such as user_id:token too). A file whose first line holds a number has no header: its fields are numbered from
1, and read as user, item, rating, timestamp unless the options name them. A bad value stops with the file, the
line and the column; nothing is skipped silently. In a TSV a quote is text, as the format has no quoting; in a
CSV a quote opened and never closed would join the lines after it into one field, which is refused.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from scalerec.data import parsing
from scalerec.data.movielens import RATING_FILES
from scalerec.data.parsing import (
    HEADER_NAMES,
    Interactions,
    compact,
    header_name,
    is_number,
    line_of_row,
    not_utf8,
)
from scalerec.data.prepare import sorted_unique
from scalerec.errors import UserError

PARQUET = (".parquet", ".pq")


COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # what pandas reads by the file's suffix


def is_table_file(path: Path) -> bool:
    """Files read here rather than as a MovieLens layout: Parquet, compressed text (.gz, .bz2, .xz), and any
    other text file whose first field is not a number, except MovieLens' own (u.data, ratings.dat, ratings.csv,
    .inter, .dat, zips), which are read strictly (integer ids, a time column). A text file that starts with a
    number (.tsv included) is read as u.data is: user, item, rating, timestamp."""
    if path.suffix.lower() in (*PARQUET, *COMPRESSED):
        return True
    if path.name in RATING_FILES or path.suffix.lower() in (".zip", ".inter", ".dat") or not path.is_file():
        return False
    first = _first_line(path).removeprefix("\ufeff").strip()
    fields = [f.strip().strip('"') for f in first.replace("\t", ",").replace(";", ",").split(",")]
    if is_number(fields[0]):
        return False  # no header: a MovieLens layout
    return any(fields)  # an empty first name too: pandas' to_csv writes its index so


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


def _listed(columns: list[str]) -> str:
    shown = ", ".join(_shown(c) for c in columns[:8])
    return shown if len(columns) <= 8 else f"{shown}, ... ({len(columns)} in all)"


def _pick(
    columns: list[str], given: str | None, role: str, flag: str, required: bool, name: str, header: bool
) -> str | None:
    """The header name for a role: the one given (or the column it names without RecBole's type), else the first
    column whose name is a known alias. Without a header, columns are numbered from 1."""
    if given is not None:
        if given in columns:
            return given
        typed = [c for c in columns if header and header_name(c) == header_name(given)]
        if len(typed) == 1:
            return typed[0]
        if not header:
            raise UserError(
                f"{name}: no column {given!r} ({flag}): the file has no header (its first line holds numbers), so "
                f"its fields are numbered 1 to {len(columns)}"
            )
        raise UserError(f"{name}: no column {given!r} ({flag}); the columns are {_listed(columns)}")
    aliases = HEADER_NAMES[role]
    found = next((c for c in columns if header_name(c) in aliases), None)
    if found is None and required:
        raise UserError(
            f"{name}: no {role} column among {_listed(columns)}; name it with {flag} (expected a header "
            f"such as {', '.join(aliases[:3])})"
        )
    return found


def _nanoseconds(dates: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 nanoseconds since 1970, UTC, of a datetime column with or without a time zone; where a date is
    outside the years 1678-2261 that nanoseconds hold, such as a 9999-12-31 placeholder, which would wrap round)."""
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_convert(None)
    raw = dates.to_numpy()
    outside = (raw < np.datetime64("1678-01-01")) | (raw >= np.datetime64("2262-01-01"))
    return np.where(outside, np.datetime64(0, "ns"), raw).astype("datetime64[ns]").astype(np.int64), outside


def _shown(value) -> str:
    """A bad value as an error message shows it: quoted text (cut at 60 characters), or 'missing' (an empty
    field, a truncated line)."""
    if pd.isna(value):
        return "missing"
    text = str(value)
    return repr(text if len(text) <= 60 else text[:57] + "...")


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
    separator, quoting = None, csv.QUOTE_NONE
    if parquet:
        columns, header = _parquet_columns(path, name), True
    else:
        separator, quoting, columns, header = _csv_columns(path, name, sep)
    by_position = not header and not any((user_col, item_col, time_col, rating_col))
    if not header:
        columns = [str(k) for k in range(1, len(columns) + 1)]
        if by_position:  # as MovieLens' u.data
            user_col, item_col = "1", "2"
            rating_col = "3" if len(columns) >= 3 else None
            time_col = "4" if len(columns) >= 4 else None
    user = _pick(columns, user_col, "user", "--user-col", True, name, header)
    item = _pick(columns, item_col, "item", "--item-col", True, name, header)
    time = _pick(columns, time_col, "timestamp", "--time-col", False, name, header)
    rating = _pick(columns, rating_col, "rating", "--rating-col", False, name, header)
    wanted = [c for c in (user, item, time, rating) if c is not None]
    if len(set(wanted)) < len(wanted):
        raise UserError(
            f"{name}: one column named for two roles (user {user!r}, item {item!r}, time {time!r}, rating {rating!r})"
        )

    def chunks():
        if parquet:
            return _parquet_chunks(path, wanted, name)
        names = None if header else columns
        return _csv_chunks(path, separator, quoting, names, {user: str, item: str}, name, len(columns))

    # a quote opened in a CSV field and never closed takes the lines after it into that field
    quoted = not parquet and quoting != csv.QUOTE_NONE and _holds(path, b'"')
    roles = {user: "user", item: "item", time: "time", rating: "rating"}  # messages name a field by its role
    label = {c: c if header else f"field {c} ({role})" for c, role in roles.items() if c is not None}
    fields = (path, header, quoted, user, item, time, rating, wanted, label)
    try:
        try:
            ids, times, ratings, time_kind = _rows(chunks(), *fields)
        except _OtherDateOrder as e:  # the first chunk's dates read both ways, and a later one only the other way
            ids, times, ratings, time_kind = _rows(chunks(), *fields, time_kind=e.fmt)
    except UserError as e:
        if not by_position:
            raise
        raise UserError(
            f"{e} (a file whose first line holds numbers has no header: its fields are read by position as user, "
            "item, rating, timestamp; name them by number with --user-col, --item-col, --rating-col, --time-col)"
        ) from None
    (users, user_names), (items, item_names) = ids
    unit = None if time_kind in (None, "number") else "ns"
    text_format = time_kind if unit and time_kind != "datetime" else None
    return Interactions(
        users,
        items,
        times,
        name,
        ratings=ratings,
        time_unit=unit,
        user_names=user_names,
        item_names=item_names,
        time_format=text_format,
    )


def _parquet_columns(path: Path, name: str) -> list[str]:
    """A Parquet file's column names (UserError where pyarrow is missing or the file is not Parquet)."""
    try:
        import pyarrow.parquet as pq  # optional: pip install 'scalerec[parquet]'
    except ImportError:
        raise UserError(f"{name}: reading Parquet needs pyarrow (pip install 'scalerec[parquet]')") from None
    try:
        return list(pq.read_schema(path).names)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
        raise UserError(f"{name}: not a readable Parquet file ({e})") from None


def _csv_columns(path: Path, name: str, sep: str | None) -> tuple[str, int, list[str], bool]:
    """(separator, quoting, the first line's fields, whether it is a header) of a CSV or TSV file."""
    if _first_line(path).removeprefix("\ufeff").lstrip()[:1] in ("{", "["):
        raise UserError(f"{name}: JSON, which scalerec does not read (expected a CSV, TSV or Parquet table)")
    separator = _separator(path, sep)
    quoting = csv.QUOTE_NONE if separator == "\t" else csv.QUOTE_MINIMAL  # TSV has no quoting
    try:
        columns = [str(c) for c in pd.read_csv(path, sep=separator, nrows=0, engine="c", quoting=quoting).columns]
    except UnicodeDecodeError:
        raise _not_utf8(path, name) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{name}, line 1: not a table header ({e})") from None
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise UserError(f"{name}: not a readable compressed file ({e})") from None
    header = not any(is_number(c) for c in columns)  # a name is never a number: a first line with one is data
    return separator, quoting, columns, header


def _rows(chunks, path: Path, header: bool, quoted: bool, user, item, time, rating, wanted, label, time_kind=None):
    """((users, their names), (items, theirs)), times, ratings and the times' kind, from the file's chunks. The
    times' kind ("number" or the dates' format) is decided by the first chunk, unless given, then held to."""
    parquet, name = path.suffix.lower() in PARQUET, str(path)
    parts: dict[str, list] = {"users": [], "items": [], "timestamps": [], "ratings": []}
    given = time_kind
    rows = 0
    for df in chunks:

        def where(row: int, offset: int = rows) -> str:  # the file line (text; blank ones too) or the Parquet row
            if parquet:
                return f"row {offset + row + 1}"
            return f"line {line_of_row(path, offset + row, header, _opener(path))}"

        if not parquet:
            _check_lines(df, quoted, header and (user, item), name, where)
            df = df[wanted]
        parts["users"].append(_ids(df[user], label[user], name, where))
        parts["items"].append(_ids(df[item], label[item], name, where))
        if time is not None:
            times, time_kind = _times(df[time], label[time], name, where, time_kind, swap=rows > 0 and not given)
            parts["timestamps"].append(times)
        if rating is not None:
            numbers = pd.to_numeric(df[rating], errors="coerce")
            bad = ~np.isfinite(numbers.to_numpy(np.float64, na_value=np.nan))  # missing, not a number, inf
            if bad.any():
                row = _first_bad(bad)
                value = _shown(df[rating].iloc[row])
                raise UserError(f"{name}, {where(row)}: {label[rating]} is {value}, expected a finite number")
            parts["ratings"].append(compact(numbers.to_numpy(np.float64)))
        rows += len(df)
    if rows == 0:
        raise UserError(f"{name}: a header but no rows")
    ids = _joined_ids(parts.pop("users")), _joined_ids(parts.pop("items"))
    timestamps = np.concatenate(parts.pop("timestamps")) if time is not None else None
    ratings = np.concatenate(parts.pop("ratings")) if rating is not None else None
    return ids, timestamps, ratings, time_kind


def _csv_chunks(path: Path, sep: str, quoting: int, names: list[str] | None, dtype: dict, name: str, n_columns: int):
    """The file's rows in chunks, every column (not usecols: with usecols pandas silently ignores a line's surplus
    fields); `names` where the file has no header."""
    try:
        # keep_default_na=False: "NA", "null", "None" are ids like any other text; an empty field is missing
        with (
            warnings.catch_warnings(),
            pd.read_csv(
                path,
                sep=sep,
                engine="c",
                header=None if names else "infer",
                names=names,
                index_col=False,
                quoting=quoting,
                dtype=dtype,
                chunksize=parsing.CHUNK_ROWS,
                keep_default_na=False,
                na_values=[""],
            ) as reader,
        ):
            # pandas only warns where a first line holds more fields than the header, and drops them
            warnings.simplefilter("error", pd.errors.ParserWarning)
            yield from reader
    except pd.errors.ParserWarning:
        raise UserError(
            f"{name}: more fields on a line than the header's {n_columns} (the first data line, or every line; a "
            "separator inside a field needs quotes)"
        ) from None
    except pd.errors.ParserError as e:
        msg = str(e).replace("Error tokenizing data. C error: ", "").strip()
        if (m := re.search(r"EOF inside string starting at row (\d+)", msg)) is not None:
            header = names is None  # pandas counts the file's rows from 0, the header's too
            line = line_of_row(path, int(m.group(1)) - header, header, _opener(path))
            raise UserError(f'{name}, line {line}: a quote (") opens a field that is never closed') from None
        as_in = "as in the header" if names is None else "as on the first line"
        raise UserError(f"{name}: {msg} (expected {n_columns} fields per line, {as_in})") from None
    except UnicodeDecodeError:
        raise _not_utf8(path, name) from None
    except (OSError, EOFError, lzma.LZMAError) as e:  # a damaged .gz / .bz2 / .xz
        raise UserError(f"{name}: not a readable compressed file ({e})") from None


def _holds(path: Path, byte: bytes) -> bool:
    """Whether the (decompressed) file holds this byte anywhere: a scan at memory speed."""
    with _opener(path)(path, "rb") as f:
        while block := f.read(1 << 24):
            if byte in block:
                return True
    return False


def _check_lines(df: pd.DataFrame, quoted: bool, header: tuple[str, str] | bool, name: str, where) -> None:
    """UserError where a chunk's fields hold line breaks (a quote never closed joined lines: rows lost to one
    field), or where a row repeats the header (files joined with their headers: the header names would be ids)."""
    if quoted:
        for col in df.columns:
            if df[col].dtype.kind not in "iufcbmM":
                joined = df[col].str.contains("[\r\n]", regex=True, na=False).to_numpy()
                if joined.any():
                    raise UserError(
                        f"{name}, {where(_first_bad(joined))}: a quoted field of column {col!r} runs on into the "
                        "lines after it: a stray quote, which would join them, or a field holding a line break, "
                        "which scalerec does not read; remove the quote or the line break"
                    )
    if header:
        user, item = header
        again = _names(df[user], user) & _names(df[item], item)
        if again.any():
            raise UserError(
                f"{name}, {where(_first_bad(again))}: the header again (files joined with their headers?); remove "
                "the repeated header lines"
            )


def _names(values: pd.Series, column: str) -> np.ndarray:
    """Where a column's values are its own header name (as aliases are matched: a BOM, case or spacing aside).
    Only the distinct values are compared, then the rows found."""
    same = [
        v for v in pd.unique(values) if isinstance(v, str) and header_name(v.lstrip("\ufeff")) == header_name(column)
    ]
    return values.isin(same).to_numpy() if same else np.zeros(len(values), bool)


def _not_utf8(path: Path, name: str) -> UserError:
    return not_utf8(path, name, _opener(path))


def _parquet_chunks(path: Path, wanted: list[str], name: str):
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=parsing.CHUNK_ROWS, columns=wanted)
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
    if (nul := np.asarray(pd.Index(uniques).str.contains("\0", regex=False), bool)).any():  # never an id
        raise UserError(
            f"{name}, {where(_first_bad(nul[codes]))}: a NUL byte in column {col!r} (a binary or damaged file?)"
        )
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


class _OtherDateOrder(UserError):
    """A chunk's dates that the format held to cannot read and the same format day and month swapped can: the
    file is read again in that one (the first chunk's dates read both ways, 01/02/2020 to 12/02/2020)."""

    def __init__(self, message: str, fmt: str) -> None:
        super().__init__(message)
        self.fmt = fmt


def _swapped(fmt: str) -> str | None:
    """The format with day and month swapped (%m/%d/%Y -> %d/%m/%Y), or None where it has not both."""
    if "%m" not in fmt or "%d" not in fmt:
        return None
    return fmt.replace("%m", "\0").replace("%d", "%m").replace("\0", "%d")


def _times(values: pd.Series, col: str, name: str, where, kind: str | None, swap: bool = False):
    """One chunk's times as numbers, or as nanoseconds where the column holds dates: (the times, their kind).
    `kind` is "number" or the dates' format, decided by the first chunk and held to; with `swap`, dates that it
    cannot read but the format with day and month swapped can raise _OtherDateOrder."""
    expected = "a number or a date/time"
    if values.dtype.kind in "iuf":
        bad, out, this = values.isna().to_numpy(), _number_times(values, col, name, where), "number"
    elif values.dtype.kind == "M":
        out, outside = _nanoseconds(values)
        bad, this, expected = values.isna().to_numpy() | outside, "datetime", "a date/time in the years 1678-2261"
    else:
        if not pd.api.types.is_string_dtype(values):  # Parquet's date32: datetime.date objects
            values = values.map(lambda v: v if pd.isna(v) else str(v))
        numbers = pd.to_numeric(values, errors="coerce")
        counted = int(numbers.notna().sum())
        if kind == "number" or (kind is None and 2 * counted >= int(values.notna().sum())):  # mostly numbers
            bad, out, this = numbers.isna().to_numpy(), _number_times(numbers, col, name, where), "number"
            expected = "a number, as the column's other times are"
        elif counted:  # a number among dates (here, or in the chunks before) is not read as a date
            row = _first_bad(numbers.notna().to_numpy())
            raise UserError(f"{name}, {where(row)}: {col} is {_shown(values.iloc[row])}, a number among dates")
        else:
            text = values.str.strip()
            dates, this = _dates(text, kind)
            out, bad = _checked(text, dates)
            shown = {"ISO8601": "ISO 8601", None: "none that pandas can guess from the first date: use ISO 8601"}
            expected = f"a date/time in the years 1678-2261, in the column's format ({shown.get(this, this)})"
    if this == "number" and out.dtype.kind == "f":
        bad = bad | ~np.isfinite(out)  # inf, 1e400
    if bad.any():
        row = _first_bad(bad)
        message = f"{name}, {where(row)}: {col} is {_shown(values.iloc[row])}, expected {expected}"
        other = _swapped(this) if swap and this not in ("number", "datetime", None) else None
        if other is not None and not _checked(text, _dates(text, other)[0])[1].any():
            raise _OtherDateOrder(message, other)
        raise UserError(message)
    if kind is not None and (kind == "number") != (this == "number"):
        now, before = ("numbers", "dates") if this == "number" else ("dates", "numbers")
        raise UserError(f"{name}, {where(0)}: {col} holds {now} here and {before} before (expected one kind)")
    return out, this


def _checked(text: pd.Series, dates: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(the dates read from `text` as nanoseconds; where they are missing, out of the years 1678-2261, or "now"
    and "today", which pandas reads as the clock's time)."""
    out, outside = _nanoseconds(dates)
    return out, dates.isna().to_numpy() | outside | text.str.lower().isin(["now", "today"]).to_numpy()


def _dates(values: pd.Series, fmt: str | None) -> tuple[pd.Series, str | None]:
    """(the dates, UTC; their format): in `fmt` where a chunk before chose it; else ISO 8601 where it reads every
    date, else the first date's format, month first or day first, whichever reads them all (month first where
    both do, as pandas reads 01/02/2020). Never a format per value: 12/06/2020 and 18/10/2020 in one column would
    be read one month first and the other day first."""

    def read(fmt: str, part: pd.Series = values) -> pd.Series:
        try:
            return pd.to_datetime(part, errors="coerce", utc=True, format=fmt)
        except (ValueError, TypeError):
            return pd.Series(pd.NaT, index=part.index, dtype="datetime64[ns, UTC]")

    if fmt is not None:
        return read(fmt), fmt
    present = values.notna()  # a missing time is its own error
    first = str(values[present].iloc[0]) if present.any() else ""
    with warnings.catch_warnings():  # pandas warns that dayfirst is a preference, which is how it is used here
        warnings.simplefilter("ignore")
        from pandas.tseries.api import guess_datetime_format

        guesses = [g for day in (False, True) if (g := guess_datetime_format(first, dayfirst=day))]
    candidates = list(dict.fromkeys(["ISO8601", *guesses]))
    sample = values[present].iloc[:1000]  # a candidate that cannot read these is not parsed on the whole chunk
    fits = [c for c in candidates if read(c, sample).notna().all()]
    best, fails = None, None
    for c in fits or candidates:
        dates = read(c)
        wrong = int((dates.isna() & present).sum())
        if wrong == 0:
            return dates, c
        if fails is None or wrong < fails:  # the error names a date that is off the column's likelier format
            best, fails = (dates, c), wrong
    return best if guesses else (best[0], None)  # None: no format pandas can guess, and not ISO 8601


def _number_times(numbers: pd.Series, col: str, name: str, where) -> np.ndarray:
    """Numeric times, compact; an integer past int64 (read as uint64) is an error, not a wrapped-around time."""
    raw = numbers.to_numpy()
    if raw.dtype.kind == "u" and len(raw) and raw.max() > np.iinfo(np.int64).max:
        row = _first_bad(raw > np.iinfo(np.int64).max)
        raise UserError(f"{name}, {where(row)}: {col} is {raw[row]}, too large (at most 2**63 - 1)")
    return compact(raw, narrow_floats=False)
