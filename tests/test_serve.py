"""`scalerec serve`: the server started as a user starts it (a subprocess), driven by a real HTTP client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import scalerec
from tests.helpers import assert_one_line_error, run_main

pytestmark = [pytest.mark.usefixtures("isolated"), pytest.mark.slow]  # servers and exporters: seconds each
pytest.importorskip("fastapi", reason="the serve extra (pip install 'scalerec[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra (pip install 'scalerec[serve]')")


def start(run_path, *options: str) -> tuple[subprocess.Popen, str]:
    """`scalerec serve RUN --port 0 OPTIONS` and its address, once it says it serves."""
    cmd = [sys.executable, "-m", "scalerec", "serve", str(run_path), "--port", "0", "--threads", "1", *options]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    line = p.stdout.readline()
    while line.startswith("Precomputed"):
        line = p.stdout.readline()
    if "on http://" not in line:
        p.kill()
        raise AssertionError(f"no server: {line}{p.stderr.read()}")
    return p, line.split("on http://")[1].split()[0]


def call(address: str, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://{address}{path}", data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def run(tmp_path):
    rows = [f"u{u},{(u * 7 + k * 3) % 50},{k}" for u in range(60) for k in range(9)]
    (tmp_path / "clicks.csv").write_text("user,item,time\n" + "\n".join(rows) + "\n")
    return scalerec.train(
        data=str(tmp_path / "clicks.csv"), epochs=2, batch_size=256, factors=8, layers=[16, 16, 8],
        eval_negatives=20, threads=1, output=str(tmp_path / "run"), log=None,
    )  # fmt: skip


def test_the_server_answers_as_recommend_does_and_stops_on_sigterm(capsys, run):
    p, address = start(run.path)
    try:
        status, health = call(address, "/health")
        assert status == 200 and health == {
            "status": "ok",
            "model": str(run.path),
            "epoch": run.best_epoch,
            "which": "best",
        }
        rc, csv, _ = run_main(capsys, ["recommend", run.path, "--users", "u7", "--k", "5"])
        printed = [line.split(",") for line in csv.splitlines()[1:]]
        status, got = call(address, "/recommend?user=u7&k=5")
        assert status == 200 and got["user"] == "u7"
        assert [
            [got["user"], str(r), str(x["item"]), f"{x['score']:.6g}"] for r, x in enumerate(got["items"], 1)
        ] == printed
        seen = {
            line.split(",")[1]
            for line in (run.path.parent / "clicks.csv").read_text().splitlines()
            if line.startswith("u7,")
        }
        assert not seen & {str(x["item"]) for x in got["items"]}  # no seen item
        status, many = call(address, "/recommend", {"users": ["u7", "u8", "u7"], "k": 5})
        assert status == 200 and [r["user"] for r in many["recommendations"]] == ["u7", "u8", "u7"]
        first = many["recommendations"][0]["items"]  # scored beside another user: the same, up to rounding
        assert [x["item"] for x in first] == [x["item"] for x in got["items"]]
        assert [x["score"] for x in first] == pytest.approx([x["score"] for x in got["items"]], abs=1e-5)
        status, everything = call(address, "/recommend?user=u7&k=100000")  # clamped to the catalogue
        assert status == 200 and len(everything["items"]) == 50 - len(seen)
        status, scored = call(address, "/score", {"user": "u7", "items": [got["items"][0]["item"], 3]})
        assert status == 200 and scored["scores"][0]["score"] == pytest.approx(got["items"][0]["score"], abs=1e-5)
        assert scored["scores"][0]["score"] >= scored["scores"][1]["score"] or scored["scores"][1]["item"] == 3
        bad = [
            ("/recommend?user=nobody", None, None, 404, "unknown user(s) nobody"),
            ("/recommend?user=u7&k=0", None, None, 400, "k must be a whole number of at least 1, got '0'"),
            ("/recommend?user=u7&k=-3", None, None, 400, "k must be"),
            ("/recommend?user=u7&k=ten", None, None, 400, "k must be"),
            ("/recommend", None, None, 400, "give the user"),
            ("/recommend", None, b"{not json", 400, "the body is not JSON"),
            ("/recommend", {"users": []}, None, 400, "'users' must be a non-empty list"),
            ("/recommend", {"users": ["u7"], "k": 2.5}, None, 400, "k must be"),
            ("/recommend", {"user": "u7"}, None, 400, "a JSON object with 'users'"),
            ("/score", {"user": "u7", "items": ["no-such-item"]}, None, 404, "unknown item(s) no-such-item"),
            ("/score", {"user": "u7", "items": "3"}, None, 400, "'items' must be a non-empty list"),
            ("/score", [1, 2], None, 400, "a JSON object with 'user', 'items'"),
            ("/recommend", None, b"[" * 100000, 400, "the body is not JSON"),  # nested past Python's recursion
            ("/score", {"user": None, "items": ["3"]}, None, 404, "unknown user None"),
            ("/score", {"user": 1.5, "items": ["3"]}, None, 404, "unknown user 1.5"),
            ("/recommend", {"users": [None, [1], {"a": 1}]}, None, 404, "unknown user(s) None, [1], {'a': 1}"),
            ("/recommend", {"users": ["u7"], "k": None}, None, 400, "k must be"),
        ]
        for path, body, raw, code, message in bad:
            status, answer = call(address, path, body, raw)
            assert (status, list(answer)) == (code, ["error"]) and message in answer["error"], (path, answer)
        assert call(address, "/health")[0] == 200  # still up
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    assert p.returncode == 0 and "Traceback" not in err, err


def test_cold_start_popular_and_a_port_in_use(run):
    p, address = start(run.path, "--cold-start", "popular")
    try:
        status, got = call(address, "/recommend?user=a-new-user&k=3")
        assert status == 200 and got["cold_start"] is True and len(got["items"]) == 3
        counts = [x["score"] for x in got["items"]]
        assert counts == sorted(counts, reverse=True) and counts[0] >= 1
        status, mixed = call(address, "/recommend", {"users": ["u1", "a-new-user"], "k": 3})
        assert status == 200 and "cold_start" not in mixed["recommendations"][0]
        assert mixed["recommendations"][1] == got
        taken = address.rsplit(":", 1)[1]
        cmd = [sys.executable, "-m", "scalerec", "serve", str(run.path), "--port", taken]
        refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert_one_line_error(refused.returncode, refused.stderr, f"cannot listen on 127.0.0.1:{taken}")
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)


def test_many_requests_at_once_get_answers(run):
    from concurrent.futures import ThreadPoolExecutor

    p, address = start(run.path)
    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda u: call(address, f"/recommend?user=u{u % 60}&k=10"), range(200)))
        assert all(status == 200 and len(a["items"]) == 10 for status, a in answers)
        assert time.monotonic() - t0 < 60
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)


def test_answers_name_users_and_items_as_the_file_does(tmp_path):
    from scalerec.serve import Service

    rows = [f"{u}\t{(u * 7 + k * 3) % 50 + 1}\t5\t{1000 + k}" for u in range(1, 41) for k in range(6)]
    (tmp_path / "u.data").write_text("\n".join(rows) + "\n")
    run = scalerec.train(data=str(tmp_path / "u.data"), epochs=1, factors=4, layers=[8, 8], eval_negatives=20, log=None)
    service = Service(scalerec.load(run))
    got = service.recommend(["3", 3], 2)  # a query string's "3" and JSON's 3: the file's integer 3 both times
    assert got[0] == got[1] and got[0]["user"] == 3 and all(isinstance(x["item"], int) for x in got[0]["items"])
    scored = service.score("3", [str(got[0]["items"][0]["item"])])
    assert scored["user"] == 3 and scored["scores"][0]["item"] == got[0]["items"][0]["item"]


def test_precomputed_answers_are_the_live_ones(run):
    from scalerec.serve import Service

    live, table = Service(scalerec.load(run)), Service(scalerec.load(run))
    table.precompute(8, batch=7)  # batches that do not divide the users
    users = [f"u{u}" for u in range(60)]
    for k in (1, 8, 20):  # 20: past the table, scored live
        a, b = live.recommend(users, k), table.recommend(users, k)
        assert [[x["item"] for x in r["items"]] for r in a] == [[x["item"] for x in r["items"]] for r in b]
        for ra, rb in zip(a, b):
            assert [x["score"] for x in ra["items"]] == pytest.approx([x["score"] for x in rb["items"]], abs=1e-5)
