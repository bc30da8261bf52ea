"""`scalerec export`: ONNX and torch.export files that score as scalerec does, loaded by their own runtimes (ONNX
without torch), for NeuMF and MF, with every refusal one line and no file half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import scalerec
from tests.helpers import assert_one_line_error, run_main

pytestmark = [pytest.mark.usefixtures("isolated"), pytest.mark.slow]  # servers and exporters: seconds each
onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra (pip install 'scalerec[export]')")


def clicks_run(tmp_path, model: str = "neumf", epochs: int = 1):
    rows = [f"u{u},i{(u * 7 + k * 3) % 50},{k}" for u in range(60) for k in range(9)]
    (tmp_path / "clicks.csv").write_text("user,item,time\n" + "\n".join(rows) + "\n")
    return scalerec.train(
        data=str(tmp_path / "clicks.csv"), model=model, epochs=epochs, batch_size=256, factors=8,
        layers=[16, 16, 8], eval_negatives=20, threads=1, output=str(tmp_path / model), log=None,
    )  # fmt: skip


@pytest.mark.parametrize("model", ["neumf", "mf"])
def test_onnx_and_torch_exports_score_as_scalerec_does(capsys, tmp_path, model):
    run = clicks_run(tmp_path, model)
    rec = scalerec.load(run)
    for fmt, name in (("onnx", "model.onnx"), ("torch", "model.pt2")):
        rc, out, err = run_main(capsys, ["export", run.path, "--format", fmt, "--output", tmp_path / "out"])
        assert rc == 0, err
        assert f"Exported epoch {rec.epoch}'s model (the best)" in out and "differ from scalerec's by at most" in out
        assert (tmp_path / "out" / name).is_file()
    ids = json.loads((tmp_path / "out" / "ids.json").read_text())
    assert ids["users"] == list(rec.users) and ids["items"] == list(rec.items) and ids["users"][0] == "u0"
    rng = np.random.default_rng(0)
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["user", "item"]
    assert [o.name for o in session.get_outputs()] == ["score"]
    program = torch.export.load(tmp_path / "out" / "model.pt2").module()
    for batch in (1, 7, 333):  # any batch size
        users, items = rng.integers(len(ids["users"]), size=batch), rng.integers(len(ids["items"]), size=batch)
        expected = rec.score([ids["users"][u] for u in users], [ids["items"][i] for i in items])
        got = session.run(["score"], {"user": users, "item": items})[0]
        assert got.dtype == np.float32 and got.shape == (batch,)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        with torch.no_grad():
            exported = program(torch.from_numpy(users), torch.from_numpy(items)).numpy()
        np.testing.assert_allclose(exported, expected, atol=1e-4, rtol=0)


NO_TORCH = """
import importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "scalerec"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Refuse())
import numpy as np, onnxruntime
folder = sys.argv[1]
ids = json.load(open(f"{folder}/ids.json"))
user, item = {u: i for i, u in enumerate(ids["users"])}, {t: i for i, t in enumerate(ids["items"])}
session = onnxruntime.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
pairs = json.loads(sys.argv[2])
feed = {"user": np.array([user[u] for u, _ in pairs]), "item": np.array([item[i] for _, i in pairs])}
print(json.dumps(session.run(["score"], feed)[0].tolist()))
"""


def test_an_onnx_model_scores_in_a_process_without_torch(capsys, tmp_path):
    run = clicks_run(tmp_path)
    assert run_main(capsys, ["export", run.path, "--format", "onnx", "--output", tmp_path / "out"])[0] == 0
    pairs = [["u3", "i10"], ["u17", "i4"], ["u59", "i49"]]
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(tmp_path / "out"), json.dumps(pairs)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = scalerec.load(run).score([u for u, _ in pairs], [i for _, i in pairs])
    np.testing.assert_allclose(json.loads(done.stdout), expected, atol=1e-4, rtol=0)


def test_export_refusals_are_one_line_and_leave_no_file(capsys, tmp_path, monkeypatch):
    import scalerec.export as export

    run = clicks_run(tmp_path)
    (tmp_path / "a-file").write_text("mine")
    rc, _, err = run_main(capsys, ["export", run.path, "--format", "onnx", "--output", tmp_path / "a-file"])
    assert_one_line_error(rc, err, f"--output {tmp_path / 'a-file'}: a file (expected a folder")
    for check in ("_onnx_check", "_torch_check"):  # an exported model that scores differently: refused
        real = getattr(export, check)
        monkeypatch.setattr(export, check, lambda *a, real=real: real(*a) + np.float32(1e-3))
    for fmt in ("onnx", "torch"):
        rc, _, err = run_main(capsys, ["export", run.path, "--format", fmt, "--output", tmp_path / "out"])
        assert_one_line_error(
            rc, err, "the exported model's scores differ from scalerec's by up to 0.001", "not written"
        )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # neither the model nor a temporary
    monkeypatch.setattr(export, "installed", lambda module: module == "onnx")
    rc, _, err = run_main(capsys, ["export", run.path, "--format", "onnx", "--output", tmp_path / "out"])
    assert_one_line_error(rc, err, "--format onnx needs onnxruntime, onnxscript: pip install 'scalerec[export]'")
    rc, _, err = run_main(capsys, ["export", tmp_path / "nowhere", "--format", "torch", "--output", tmp_path / "o"])
    assert_one_line_error(rc, err, "no such folder")
