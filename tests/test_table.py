"""Any table: CSV, TSV, Parquet; string ids, dates, no timestamps, --min-rating, the k-core, bad input."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from scalerec.config import DataConfig
from scalerec.data.loading import load_dataset
from scalerec.data.prepare import from_interactions
from scalerec.data.table import read_table_file
from scalerec.errors import UserError


def load(tmp_path, path, **kw):
    notes = []
    cfg = DataConfig(data=str(path), data_dir=str(tmp_path / "cache"), **{"eval_negatives": 2, **kw})
    ds = load_dataset(cfg, notes.append)
    return ds, ds.notes


ROWS = [  # user, item, when, stars
    ("alice", "book-1", "2024-01-03", 5),
    ("alice", "book-2", "2024-01-01", 3),
    ("alice", "film-9", "2024-02-01", 4),
    ("bob", "book-1", "2024-03-01 10:00", 2),
    ("bob", "film-9", "2024-03-01 09:00", 5),
    ("carol", "book-2", "2023-12-31", 4),
    ("carol", "film-7", "2024-01-05", 1),
    ("carol", "book-3", "2024-01-04", 5),
]


def write_csv(path, rows=ROWS, header="who,what,when,stars", sep=","):
    path.write_text(header + "\n" + "".join(sep.join(map(str, r)) + "\n" for r in rows))
    return path


def test_string_ids_and_dates_hold_out_each_users_latest(tmp_path):
    path = write_csv(tmp_path / "log.csv")
    ds, _ = load(tmp_path, path, user_col="who", item_col="what", time_col="when", rating_col="stars")
    assert list(ds.user_ids) == ["alice", "bob", "carol"]
    assert list(ds.item_ids) == ["book-1", "book-2", "book-3", "film-7", "film-9"]
    held_out = {ds.user_ids[u]: ds.item_ids[i] for u, i in zip(ds.test_users, ds.test_items)}
    assert held_out == {"alice": "film-9", "bob": "book-1", "carol": "film-7"}  # dates, not file order
    validated = {ds.user_ids[u]: ds.item_ids[i] for u, i in zip(ds.valid_users, ds.valid_items)}
    assert validated == {"alice": "book-1", "carol": "book-3"}  # the second-latest; bob has two rows only
    assert len(ds.train_users) == len(ROWS) - 3 - 2


def test_columns_found_by_their_usual_names_in_tsv_and_parquet(tmp_path):
    rows = [(u, i, t) for u, i, t, _ in ROWS]
    tsv = write_csv(tmp_path / "log.tsv", rows, "user_id\titem_id\ttimestamp", "\t")
    frame = pd.DataFrame(rows, columns=["userId", "movieId", "time"])
    frame["time"] = pd.to_datetime(frame["time"], format="mixed")
    frame.to_parquet(tmp_path / "log.parquet")
    a, _ = load(tmp_path, tsv)
    b, _ = load(tmp_path, tmp_path / "log.parquet")
    for ds in (a, b):
        assert list(ds.user_ids) == ["alice", "bob", "carol"]
        assert [ds.item_ids[i] for i in ds.test_items] == ["film-9", "book-1", "film-7"]


def test_numeric_ids_in_parquet_stay_numbers(tmp_path):
    frame = pd.DataFrame({"user": [7, 7, 9, 9, 9], "item": [1, 2, 1, 3, 4], "timestamp": [1, 2, 3, 4, 5]})
    frame.to_parquet(tmp_path / "t.pq")
    ds, _ = load(tmp_path, tmp_path / "t.pq", eval_negatives=1)
    assert ds.user_ids.tolist() == [7, 9] and ds.item_ids.tolist() == [1, 2, 3, 4]
    assert ds.item_ids[ds.test_items].tolist() == [2, 4]


def test_a_string_user_too_busy_for_the_negatives_is_named(tmp_path):
    path = write_csv(tmp_path / "busy.csv", [("zoe", f"i{k}", k) for k in range(4)] + [("max", "i0", 9)] * 2, "u,i,t")
    with pytest.raises(UserError, match="user 'zoe' has interacted with 4 of 4 items"):
        load(tmp_path, path, user_col="u", item_col="i", time_col="t")


def test_without_timestamps_the_held_out_item_is_random_with_the_seed(tmp_path):
    rows = [(f"u{u}", f"i{i}") for u in range(30) for i in range(u % 5, u % 5 + 6)]
    path = write_csv(tmp_path / "pairs.csv", rows, "user,item")
    picks = []
    for seed in (0, 0, 1):
        ds, notes = load(tmp_path, path, data_seed=seed)
        assert any("no timestamps" in n and f"seed {seed}" in n for n in notes)
        picks.append(ds.test_items.tolist())
    assert picks[0] == picks[1] and picks[0] != picks[2]
    # each held-out item is one of its user's, and the rest are its training items
    held = [(int(ds.user_ids[u][1:]), int(ds.item_ids[i][1:])) for u, i in zip(ds.test_users, ds.test_items)]
    assert len(held) == 30 and all(u % 5 <= item < u % 5 + 6 for u, item in held)
    assert len({item - u % 5 for u, item in held}) > 3  # not always the first or the last of a user's rows


def test_min_rating_keeps_only_the_positives_and_says_how_many_it_dropped(tmp_path):
    path = write_csv(tmp_path / "log.csv")
    ds, notes = load(tmp_path, path, user_col="who", item_col="what", time_col="when", rating_col="stars", min_rating=4)
    assert len(ds.train_users) + len(ds.test_users) == 4  # 5 of 8 rows rated 4+, and bob is left with one
    assert any(n.startswith("3 rows rated below 4 dropped") for n in notes)
    assert "bob" not in list(ds.user_ids)  # one positive left: dropped, and said so
    with pytest.raises(UserError, match="needs a rating column"):
        load(tmp_path, write_csv(tmp_path / "nr.csv", [r[:3] for r in ROWS], "user,item,time"), min_rating=4)


def brute_core(pairs, ku, ki):
    pairs = set(pairs)
    while True:
        users = pd.Series([u for u, _ in pairs]).value_counts()
        items = pd.Series([i for _, i in pairs]).value_counts()
        keep = {(u, i) for u, i in pairs if users[u] >= ku and items[i] >= ki}
        if keep == pairs:
            return keep
        pairs = keep


def test_k_core_iterates_to_a_fixed_point():
    rng = np.random.default_rng(3)
    users, items = rng.integers(0, 60, 700), (rng.zipf(1.6, 700) % 80)
    ts = np.arange(700.0)
    ds = from_interactions(users, items, ts, "t", "t", 1, 0, min_user_interactions=5, min_item_interactions=4)
    got = {
        (int(ds.user_ids[u]), int(ds.item_ids[i]))
        for u, i in zip(np.r_[ds.train_users, ds.test_users], np.r_[ds.train_items, ds.test_items])
    }
    expected = brute_core(zip(users.tolist(), items.tolist()), 5, 4)
    assert got == expected and len(expected) > 100
    assert ds.n_items == len({i for _, i in expected})  # items outside the core are gone
    assert any(n.startswith("k-core (users with at least 5") for n in ds.notes)


@pytest.mark.parametrize(
    ("text", "kw", "message"),
    [
        ("", {}, "empty file"),
        ("user,item,timestamp\n", {}, "a header but no rows"),
        ("a,b,c\n1,2,3\n", {}, "no user column among 'a', 'b', 'c'; name it with --user-col"),
        ("u,i,t\n1,2,3\n", {"user_col": "u", "item_col": "x"}, "no column 'x' \\(--item-col\\)"),
        ("u,i,t\n1,2,3\n,4,5\n", {"user_col": "u", "item_col": "i"}, "line 3: no value in column 'u'"),
        ("u,i,t\n1,2,3\n1,3,yesterday-ish\n", {"user_col": "u", "item_col": "i", "time_col": "t"}, "line 3: t is"),
        ("u,i,t\n1,2,3\n1,3,4,5,6\n", {"user_col": "u", "item_col": "i"}, "line 3"),
        ("u,i,t\n1,2,3\n", {"user_col": "u", "item_col": "u"}, "one column named for two roles"),
    ],
)
def test_bad_tables_name_the_file_and_the_line(tmp_path, text, kw, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        read_table_file(path, **{k: v for k, v in kw.items()})


def test_a_file_that_is_not_parquet_is_an_error(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        read_table_file(path)


def test_an_unknown_header_points_to_the_column_options(tmp_path):
    with pytest.raises(UserError, match="--user-col"):
        load(tmp_path, write_csv(tmp_path / "log.csv"))


def test_chunked_reading_gives_the_dataset_of_one_read(tmp_path, monkeypatch):
    from scalerec.data import parsing

    rng = np.random.default_rng(0)
    rows = [(f"u{rng.integers(40)}", f"i{rng.integers(25)}", 1_000 + n, 1 + n % 5) for n in range(300)]
    csv = write_csv(tmp_path / "log.csv", rows, header="user,item,ts,rating")
    pq_path = tmp_path / "log.parquet"
    pd.DataFrame(rows, columns=["user", "item", "ts", "rating"]).to_parquet(pq_path)
    whole = {p: load(tmp_path / f"a{n}", p)[0] for n, p in enumerate((csv, pq_path))}
    monkeypatch.setattr(parsing, "CHUNK_ROWS", 7)  # 43 chunks, each with its own subset of the ids
    for n, path in enumerate((csv, pq_path)):
        raw = read_table_file(path)
        assert raw.users.dtype == np.int32 and list(raw.user_names) == sorted({r[0] for r in rows})
        assert [raw.user_names[c] for c in raw.users] == [r[0] for r in rows]  # every row keeps its id
        ds = load(tmp_path / f"b{n}", path)[0]
        for field in ("train_users", "train_items", "test_items", "eval_negatives", "user_ids", "item_ids"):
            np.testing.assert_array_equal(getattr(ds, field), getattr(whole[path], field), err_msg=field)


def test_a_time_column_that_changes_kind_between_chunks_names_the_line(tmp_path, monkeypatch):
    from scalerec.data import parsing

    monkeypatch.setattr(parsing, "CHUNK_ROWS", 4)
    rows = [(f"u{n % 3}", f"i{n}", f"2024-01-{1 + n:02d}", 5) for n in range(6)] + [("u1", "i9", "1700000000", 4)]
    rows += [("u2", "i8", "1700000001", 4)]  # the second chunk: numbers where the first held dates
    with pytest.raises(UserError, match=r"log.csv, line 8: time is '1700000000', a number among dates"):
        read_table_file(write_csv(tmp_path / "log.csv", rows, header="user,item,time,rating"))
    rows[5:] = [("u2", "i5", "yesterday", 4), ("u1", "i9", "2024-02-01", 4), ("u2", "i8", "2024-02-02", 4)]
    with pytest.raises(UserError, match=r"log.csv, line 7: time is 'yesterday', expected a date/time .*ISO 8601"):
        read_table_file(write_csv(tmp_path / "log.csv", rows, header="user,item,time,rating"))


@pytest.mark.parametrize("suffix", [".csv.gz", ".tsv.bz2", ".csv.xz"])
def test_compressed_tables_are_read_and_their_errors_name_the_line(tmp_path, suffix):
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix[suffix.rindex(".") :]]
    sep = "\t" if ".tsv" in suffix else ","
    text = write_csv(tmp_path / "plain.txt", header="user,item,time,rating", sep=sep).read_text()
    path = tmp_path / f"log{suffix}"
    with opener(path, "wt") as f:
        f.write(text.replace(",", sep))
    ds, _ = load(tmp_path, path)
    assert ds.n_users == 3 and sorted(ds.user_ids) == ["alice", "bob", "carol"]
    with opener(path, "wt") as f:
        f.write(text.replace(",", sep) + "\n" + sep.join(["dave", "book-1"]) + "\n")  # a blank line, then a short one
    with pytest.raises(UserError, match=rf"log{re.escape(suffix)}, line 11: time is missing"):
        read_table_file(path)
    path.write_bytes(b"not compressed")
    with pytest.raises(UserError, match=rf"log{re.escape(suffix)}: not a readable"):
        read_table_file(path)


def test_a_compressed_file_without_a_header_is_read_by_position(tmp_path):
    import gzip

    path = tmp_path / "u.data.gz"
    with gzip.open(path, "wt") as f:
        f.write("196\t242\t3\t881250949\n186\t302\t4\t891717742\n")
    raw = read_table_file(path)  # user, item, rating, timestamp
    assert list(raw.user_names[raw.users]) == ["196", "186"] and list(raw.item_names[raw.items]) == ["242", "302"]
    assert list(raw.ratings) == [3, 4] and list(raw.timestamps) == [881250949, 891717742]


def test_a_stray_quote_is_text_in_a_tsv_and_an_error_in_a_csv(tmp_path):
    rows = [(f"u{n % 4}", f"artist {n}", 1_600_000_000 + n) for n in range(12)]
    rows[3] = ("u3", '"Heroes', 1_600_000_003)  # Last.fm's artist names hold such quotes
    rows[9] = ("u1", 'Heroes"', 1_600_000_009)  # where a later one closes it, pandas would read lines 5-11 as one
    raw = read_table_file(write_csv(tmp_path / "plays.tsv", rows, "user\titem\ttimestamp", "\t"))
    assert len(raw.users) == 12 and '"Heroes' in raw.item_names  # no row joined to another
    path = write_csv(tmp_path / "plays.csv", rows, "user,item,timestamp")
    with pytest.raises(UserError, match=r"plays.csv, line 5: a quoted field of column 'item' runs on into the lines"):
        read_table_file(path)  # the CSV parser would take every line after it into that one field
    rows[3] = ("u3", '"Heroes, live"', 1_600_000_003)  # a quoted field with a comma is fine
    raw = read_table_file(write_csv(tmp_path / "plays.csv", rows, "user,item,timestamp"))
    assert len(raw.users) == 12 and "Heroes, live" in raw.item_names


def test_dates_are_read_in_one_format_for_the_whole_column(tmp_path):
    rows = [("u1", "a", "12/06/2020"), ("u1", "b", "18/10/2020"), ("u2", "a", "01/02/2020"), ("u2", "b", "03/04/2020")]
    raw = read_table_file(write_csv(tmp_path / "d.csv", rows, "user,item,time"))
    days = pd.to_datetime(raw.timestamps, utc=True)
    assert [(d.month, d.day) for d in days] == [(6, 12), (10, 18), (2, 1), (4, 3)]  # all day first: 18/10 says so
    assert raw.time_format == "%d/%m/%Y"
    rows += [("u3", "c", "20/03/2020"), ("u3", "d", "21/03/2020")]
    _, notes = load(tmp_path, write_csv(tmp_path / "d.csv", rows, "user,item,time"), eval_negatives=1)
    assert "times read as dates in one format, %d/%m/%Y (day first)" in notes  # the log says how
    rows[2] = ("u2", "a", "2020-02-01")
    with pytest.raises(UserError, match=r"d.csv, line 4: time is '2020-02-01', expected a date/time .*%d/%m/%Y"):
        read_table_file(write_csv(tmp_path / "d.csv", rows, "user,item,time"))
    iso = [("u1", "a", "2020-02-27"), ("u1", "b", "2020-02-27 10:00:00"), ("u2", "a", "2020-02-28T01:00:00Z")]
    assert len(read_table_file(write_csv(tmp_path / "iso.csv", iso, "user,item,time")).users) == 3


def test_dates_that_only_a_later_chunk_tells_day_first_are_read_day_first(tmp_path, monkeypatch):
    from scalerec.data import parsing

    monkeypatch.setattr(parsing, "CHUNK_ROWS", 4)  # the first chunk's dates read month first and day first
    rows = [(f"u{n % 3}", f"i{n}", f"{1 + n:02d}/03/2020") for n in range(12)] + [("u0", "i12", "18/10/2020")]
    raw = read_table_file(write_csv(tmp_path / "d.csv", rows, "user,item,time"))
    days = pd.to_datetime(raw.timestamps, utc=True)
    assert raw.time_format == "%d/%m/%Y" and [(d.month, d.day) for d in days[:2]] == [(3, 1), (3, 2)]
    assert (days[-1].month, days[-1].day) == (10, 18)
    rows[-1] = ("u0", "i12", "18/13/2020")  # neither way: refused at its line
    with pytest.raises(UserError, match=r"d.csv, line 14: time is '18/13/2020', expected a date/time .*%m/%d/%Y"):
        read_table_file(write_csv(tmp_path / "d.csv", rows, "user,item,time"))
    rows[-1] = ("u0", "i12", "2020-10-18")  # another format: refused, not read again
    with pytest.raises(UserError, match=r"d.csv, line 14: time is '2020-10-18'"):
        read_table_file(write_csv(tmp_path / "d.csv", rows, "user,item,time"))


def test_a_repeated_header_is_refused_not_read_as_ids(tmp_path):
    part = "user_id,item_id\n" + "".join(f"u{n % 3},i{n}\n" for n in range(6))
    (tmp_path / "joined.csv").write_text(part + part)  # two files joined with their headers, no time column
    with pytest.raises(UserError, match=r"joined.csv, line 8: the header again"):
        read_table_file(tmp_path / "joined.csv")


def test_a_file_without_a_header_is_read_by_position_and_its_fields_named_by_number(tmp_path):
    rows = [(f"A{n % 4}XQ", f"B0{n}", 4.0, 1_400_000_000 + n) for n in range(12)]  # Amazon's ratings files
    path = write_csv(tmp_path / "ratings_Books.csv", rows[1:], header=",".join(map(str, rows[0])))
    raw = read_table_file(path)
    assert len(raw.users) == 12 and raw.user_names[raw.users[0]] == "A0XQ"  # the first line is a row, not a header
    assert list(raw.timestamps[:2]) == [1_400_000_000, 1_400_000_001]
    raw = read_table_file(path, user_col="1", item_col="2")
    assert raw.timestamps is None and raw.ratings is None
    with pytest.raises(UserError, match=r"no column '7' \(--item-col\): the file has no header .* numbered 1 to 4"):
        read_table_file(path, user_col="1", item_col="7")
    text = [(f"u{n}", f"mbid{n}", f"Artist {n}", 10 + n) for n in range(4)]
    path = write_csv(tmp_path / "plays.tsv", text[1:], header="\t".join(map(str, text[0])), sep="\t")
    with pytest.raises(UserError, match=r"field 3 \(rating\) is 'Artist 0', expected a finite number .*by number"):
        read_table_file(path)


def test_json_latin1_and_recbole_typed_headers(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"user_id": "a", "item_id": "b"}\n')
    with pytest.raises(UserError, match=r"log.jsonl: JSON, which scalerec does not read"):
        read_table_file(tmp_path / "log.jsonl")
    head = b'"User-ID";"ISBN";"Book-Rating"\n"1";"0195153448";"0"\n'
    (tmp_path / "bx.csv").write_bytes(head + b'"2";"3442410665\xe9";"5"\n')
    with pytest.raises(UserError, match=r"bx.csv, line 3: not UTF-8 text \(byte 0xe9 at byte 16 of the line\)"):
        read_table_file(tmp_path / "bx.csv")
    (tmp_path / "bx.csv").write_bytes(head + b'"2";"034545104X";"5"\n')
    raw = read_table_file(tmp_path / "bx.csv", rating_col="Book-Rating")  # User-ID, ISBN: known names; ';' found
    assert list(raw.item_names) == ["0195153448", "034545104X"] and list(raw.ratings) == [0, 5]
    rows = [("A7NOF", "B0IP2", 3.0, 1408367345), ("A804Y", "B0V2M", 5.0, 1404045091)]
    path = write_csv(tmp_path / "books.tsv", rows, "user_id:token\titem_id:token\trating:float\ttimestamp:float", "\t")
    raw = read_table_file(path, user_col="user_id", item_col="item_id")  # named without their types
    assert list(raw.user_names) == ["A7NOF", "A804Y"] and list(raw.timestamps) == [1408367345, 1404045091]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["u0,i0,900000000,extra", "u1,i1,900000001,x"], r"more fields on a line than the header's 3"),
        (["u0,i0,2020-01-01", "u1,i1,9999-12-31"], r"line 3: time is '9999-12-31', expected a date/time in the years"),
        (["u0,i0,2020-01-01", "u1,i1,now"], r"line 3: time is 'now', expected a date/time"),
        (["u0,i0,2020-01-01", "u1,i1,2020-01-02", "u1,i2,1577836800"], r"line 4: time is '1577836800', a number among"),
        (["u0,i0,1", '"u1,i1,2', "u2,i2,3"], r"line 3: a quote \(\"\) opens a field that is never closed"),
        (["u0,i0,1", "User ,Item,2", "u2,i2,3"], r"line 3: the header again"),
    ],
    ids=["surplus-fields", "year-9999", "now", "a-number-among-dates", "quote-never-closed", "header-again"],
)
def test_rows_that_would_be_lost_or_misread_are_refused(tmp_path, lines, message):
    (tmp_path / "t.csv").write_text("user,item,time\n" + "\n".join(lines) + "\n")
    with pytest.raises(UserError, match=message):
        read_table_file(tmp_path / "t.csv")


def test_a_pandas_csv_with_its_index_column_is_a_table(tmp_path):
    frame = pd.DataFrame({"user": ["a", "a", "b", "b"], "item": ["x", "y", "x", "z"], "time": [1, 2, 3, 4]})
    frame.to_csv(tmp_path / "log.csv")  # header ",user,item,time"
    ds, _ = load(tmp_path, tmp_path / "log.csv", eval_negatives=1)
    assert list(ds.user_ids) == ["a", "b"] and ds.n_items == 3


def test_parquet_date32_times(tmp_path):
    import datetime

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    days = [datetime.date(2020, 1, d) for d in (3, 1, 2, 5)]
    table = pa.table({"user": ["a", "a", "b", "b"], "item": ["x", "y", "x", "z"], "time": pa.array(days, pa.date32())})
    pq.write_table(table, tmp_path / "log.parquet")
    raw = read_table_file(tmp_path / "log.parquet")
    assert [d.day for d in pd.to_datetime(raw.timestamps, utc=True)] == [3, 1, 2, 5]
