"""Top-K recommendations in original item ids, from a splits folder or a histories file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer_data import TINY_DIFFUREC, write_ml100k_slice

from diffurec.data.splits import load_splits
from diffurec.errors import DiffuRecError
from diffurec.model_folder import save_model_folder
from diffurec.models import build_model
from diffurec.recommend import read_histories, recommend_to_file, top_k_items


@pytest.fixture(scope="module")
def folders(shared_data, tmp_path_factory):
    """A 100-user ML-100K slice and an (untrained) tiny fast DiffuRec saved for it."""
    root = tmp_path_factory.mktemp("recommend")
    splits = load_splits(write_ml100k_slice(shared_data, root / "splits", 100, 20))
    torch.manual_seed(0)
    model = build_model("diffurec", splits.num_items, splits.max_len, "fast", **TINY_DIFFUREC)
    save_model_folder(root / "model", model, item_map_path=splits.path / "item_map.tsv")
    return splits, root / "model"


def _read_tsv(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "user_id\trank\titem_id\tscore"
    return [line.split("\t") for line in lines[1:]]


def test_recommendations_for_every_user_of_a_splits_folder(folders, tmp_path):
    splits, model_dir = folders
    result = recommend_to_file(
        model_dir, tmp_path / "recs.tsv", splits_dir=splits.path, top_k=5, mask_history=True
    )
    rows = _read_tsv(tmp_path / "recs.tsv")
    assert result["users"] == splits.num_users and len(rows) == 5 * splits.num_users
    known = set(splits.item_ids)
    by_user = {}
    for user, rank, item, score in rows:
        assert item in known
        by_user.setdefault(user, []).append((int(rank), item, float(score)))
    assert list(by_user) == splits.user_ids
    index = {item: i for i, item in enumerate(splits.item_ids, start=1)}
    for u, recs in enumerate(by_user.values()):
        assert [r for r, _, _ in recs] == [1, 2, 3, 4, 5]
        scores = [s for _, _, s in recs]
        assert scores == sorted(scores, reverse=True)
        history = set(
            np.asarray(splits.seq_items[splits.seq_offsets[u] : splits.seq_offsets[u + 1]]).tolist()
        )
        assert not history & {index[i] for _, i, _ in recs}  # masked: nothing already seen


def test_histories_file_matches_scoring_the_same_history(folders, tmp_path):
    splits, model_dir = folders
    first = np.asarray(splits.seq_items[splits.seq_offsets[0] : splits.seq_offsets[1]])
    original = " ".join(splits.item_ids[i - 1] for i in first)
    (tmp_path / "h.tsv").write_text(f"alice\t{original}\n\nbob\t{splits.item_ids[0]}\n")
    index = {item: i for i, item in enumerate(splits.item_ids, start=1)}
    users, items, offsets = read_histories(tmp_path / "h.tsv", index)
    assert users == ["alice", "bob"] and offsets.tolist() == [0, len(first), len(first) + 1]
    assert items[: len(first)].tolist() == first.tolist() and items[-1] == 1

    (tmp_path / "alice.tsv").write_text(f"alice\t{original}\n")
    recommend_to_file(
        model_dir, tmp_path / "recs.tsv", histories_path=tmp_path / "alice.tsv", top_k=3, seed=5
    )
    rows = _read_tsv(tmp_path / "recs.tsv")
    # the same window scored directly with the same seed gives the same list
    from diffurec.model_folder import load_model_folder
    from diffurec.recommend import windows

    window = windows(first, np.array([0, len(first)]), splits.max_len)
    expected, _ = top_k_items(load_model_folder(model_dir), window, 3, seed=5)
    assert [r[0] for r in rows] == ["alice"] * 3
    assert [r[2] for r in rows] == [splits.item_ids[i - 1] for i in expected[0]]


def test_top_k_never_returns_padding():
    class Constant(torch.nn.Module):
        config = {"num_items": 4}
        trims_padding = False

        def score(self, inputs, reverse_steps=None):
            return torch.tensor([[9.0, 1.0, 3.0, 2.0, 0.0]]).expand(inputs.size(0), -1)

    items, scores = top_k_items(Constant(), np.ones((2, 3), dtype=np.int32), 4)
    assert items.tolist() == [[2, 3, 1, 4]] * 2 and scores[0].tolist() == [3.0, 2.0, 1.0, 0.0]


def test_bad_histories_name_file_row_and_column(folders, tmp_path):
    splits, model_dir = folders
    bad = tmp_path / "bad.tsv"
    bad.write_text(f"u1\t{splits.item_ids[0]} {splits.item_ids[1]}\nu2\t{splits.item_ids[0]} no-such-item\n")
    with pytest.raises(DiffuRecError, match=r"bad.tsv, row 2, column 3: item 'no-such-item' is not in"):
        recommend_to_file(model_dir, tmp_path / "out.tsv", histories_path=bad)
    bad.write_text("only-a-user-id\n")
    with pytest.raises(DiffuRecError, match=r"bad.tsv, row 1: expected"):
        read_histories(bad, {})
    with pytest.raises(DiffuRecError, match="--top-k"):
        recommend_to_file(model_dir, tmp_path / "out.tsv", splits_dir=splits.path, top_k=0)
    assert not (tmp_path / "out.tsv").exists()
