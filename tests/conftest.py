"""Shared fixtures: paths to the real datasets in ../shared/data and small slices of them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIFFUREC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real datasets not found at {SHARED_DATA} (set DIFFUREC_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def ml100k_splits(shared_data, tmp_path_factory):
    """ML-100K leave-one-out splits (943 users, 1,682 items), written and loaded once per run."""
    from diffurec.data.preprocess import preprocess_file
    from diffurec.data.splits import load_splits

    out = tmp_path_factory.mktemp("ml100k") / "splits"
    preprocess_file(shared_data / "ml-100k" / "ml-100k.inter", out)
    return load_splits(out)


@pytest.fixture(scope="module")
def tiny_splits(shared_data, tmp_path_factory):
    """100 ML-100K users x their last 20 interactions: 1,700 training samples (the trainer's
    tests; tests/trainer_data.py)."""
    from trainer_data import write_ml100k_slice

    from diffurec.data.splits import load_splits

    return load_splits(write_ml100k_slice(shared_data, tmp_path_factory.mktemp("tiny") / "splits", 100, 20))
