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
