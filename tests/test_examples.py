"""The notebooks in examples/, executed cell by cell as a reader runs them, with small = True (their parameters
cell, as papermill sets it): a failing cell fails the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill", reason="papermill and ipykernel (the dev extra)")
pytest.importorskip("ipykernel", reason="papermill and ipykernel (the dev extra)")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.slow


def execute(name: str, tmp_path: Path, monkeypatch) -> dict:
    """The notebook run in tmp_path with small = True; the executed notebook as JSON."""
    monkeypatch.setenv("SCALEREC_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / name
    papermill.execute_notebook(
        str(EXAMPLES / name), str(out), parameters={"small": True}, cwd=str(tmp_path), progress_bar=False,
        kernel_name="python3",
    )  # fmt: skip
    return json.loads(out.read_text())


def text_of(nb: dict) -> str:
    return "".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for cell in nb["cells"] if cell["cell_type"] == "code" for o in cell.get("outputs", [])
    )  # fmt: skip


@pytest.mark.parametrize("name", ["quickstart.ipynb", "scaling_story.ipynb"])
def test_each_notebook_starts_with_its_parameters(name):
    nb = json.loads((EXAMPLES / name).read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "parameters" in first["metadata"].get("tags", []) and "small = False" in "".join(first["source"])


def test_the_quickstart_notebook_trains_evaluates_and_recommends(tmp_path, monkeypatch):
    text = text_of(execute("quickstart.ipynb", tmp_path, monkeypatch))
    assert "best epoch" in text and "full_HR@10" in text and "film-" in text
    assert (tmp_path / "runs" / "quickstart" / "best.pt").is_file()


def test_the_scaling_story_notebook_replays_every_run_and_draws_the_figures(tmp_path, monkeypatch):
    nb = execute("scaling_story.ipynb", tmp_path, monkeypatch)
    text = text_of(nb)
    for run in ("1-base", "2-16x-same-lr", "5-192x-linear-warmup", "6-192x-lars-warmup", "8-192x-lamb-warmup",
                "9-grow-to-192x"):  # fmt: skip
        assert f"{run}:" in text, run
    assert "the largest batch that fits" in text and "9-grow-to-192x: batch 64->12288" in text  # it grew
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 5  # the figures, inline
    assert (tmp_path / "runs" / "scaling-story" / "report.md").is_file()
