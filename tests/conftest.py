"""Fixtures that the test modules share (plain helpers are in tests/helpers.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Cache and default run folder in tmp_path; torch's thread count restored after --threads 1."""
    monkeypatch.setenv("SCALEREC_DATA_DIR", str(tmp_path / "data_dir"))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# Asked before any test hides the GPU: CUDA reads CUDA_VISIBLE_DEVICES once, when it starts.
HAS_GPU = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def cpu_unless_marked_gpu(request, monkeypatch):
    """Every test runs on the CPU, also on a machine with a GPU (--device auto would pick it, and the figures a
    test checks are the CPU's), in its own process and the processes it starts; tests marked gpu see the GPU, and
    are skipped where there is none."""
    if request.node.get_closest_marker("gpu") is not None:
        if not HAS_GPU:
            pytest.skip("needs a CUDA GPU")
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
