"""Preprocessing: hand-computed prefixes and cleaning, the paper's splits, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffurec.cli import main
from diffurec.data.preprocess import TIE_RULE_FILE, TIE_RULE_STABLE, preprocess_file
from diffurec.data.splits import load_splits

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _sequences(splits):
    offsets = np.asarray(splits.seq_offsets)
    items = np.asarray(splits.seq_items)
    return [items[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def test_three_user_prefixes_written_out_by_hand(tmp_path):
    # u1 a b c d e / u2 c a f / u3 b d a c ; items by first appearance: a1 b2 c3 d4 e5 f6.
    preprocess_file(FIXTURES / "three_users.txt", tmp_path / "s", max_len=3)
    s = load_splits(tmp_path / "s")
    assert s.user_ids == ["u1", "u2", "u3"]
    assert s.item_ids == list("abcdef")
    assert _sequences(s) == [[1, 2, 3, 4, 5], [3, 1, 6], [2, 4, 1, 3]]
    assert np.asarray(s.train_inputs).tolist() == [[0, 0, 1], [0, 1, 2], [0, 0, 2]]
    assert np.asarray(s.train_targets).tolist() == [2, 3, 4]
    assert np.asarray(s.train_users).tolist() == [0, 0, 2]
    assert np.asarray(s.valid_inputs).tolist() == [[1, 2, 3], [0, 0, 3], [0, 2, 4]]
    assert np.asarray(s.valid_targets).tolist() == [4, 1, 1]
    assert np.asarray(s.test_inputs).tolist() == [[2, 3, 4], [0, 3, 1], [2, 4, 1]]
    assert np.asarray(s.test_targets).tolist() == [5, 6, 3]
    header = json.loads((tmp_path / "s" / "format.json").read_text())
    assert header["tie_rule"] == TIE_RULE_FILE
    assert header["num_train_samples"] == 3 and header["max_len"] == 3


def test_cleaning_by_hand_keep_all(tmp_path):
    # clicks.csv: v1 has an exact duplicate row (p3 at 100) and a tie at 100 (file order
    # p1, p3); v2 repeats p2 at a later time; v3 has one interaction (too short).
    stats = preprocess_file(
        FIXTURES / "clicks.csv",
        tmp_path / "s",
        user_col="visitor",
        item_col="product",
        time_col="when",
        rating_col="stars",
    )
    s = load_splits(tmp_path / "s")
    assert s.user_ids == ["v1", "v2"]
    assert s.item_ids == ["p2", "p1", "p3", "p4"]
    assert _sequences(s) == [[1, 2, 3, 4], [1, 2, 3, 1]]
    assert stats["rows_read"] == 10 and stats["rows_dropped"] == 2
    assert stats["dropped"] == {"exact_duplicates": 1, "short_user_interactions": 1, "short_users": 1}
    assert (stats["users"], stats["items"], stats["interactions"], stats["train_samples"]) == (2, 4, 8, 2)
    assert stats["sequence_length"]["min"] == 4 and stats["sequence_length"]["max"] == 4
    assert json.loads((tmp_path / "s" / "stats.json").read_text())["dropped"] == stats["dropped"]
    assert json.loads((tmp_path / "s" / "format.json").read_text())["tie_rule"] == TIE_RULE_STABLE


def test_cleaning_keep_first_min_rating_and_kcore(tmp_path):
    kwargs = dict(user_col="visitor", item_col="product", time_col="when", rating_col="stars")
    stats = preprocess_file(FIXTURES / "clicks.csv", tmp_path / "first", dedup="keep-first", **kwargs)
    assert _sequences(load_splits(tmp_path / "first")) == [[1, 2, 3, 4], [1, 2, 3]]
    assert stats["dropped"]["repeated_user_item"] == 1

    stats = preprocess_file(FIXTURES / "clicks.csv", tmp_path / "rated", min_rating=3, **kwargs)
    s = load_splits(tmp_path / "rated")
    assert stats["dropped"]["below_min_rating"] == 2
    assert [[s.item_ids[i - 1] for i in seq] for seq in _sequences(s)] == [
        ["p2", "p1", "p3"],
        ["p2", "p3", "p2"],
    ]

    # 2-core: v3 and p4 go first, then everything left has >= 2 interactions.
    stats = preprocess_file(FIXTURES / "clicks.csv", tmp_path / "core", kcore_k=2, **kwargs)
    s = load_splits(tmp_path / "core")
    assert stats["dropped"]["kcore"] == 2
    assert [[s.item_ids[i - 1] for i in seq] for seq in _sequences(s)] == [
        ["p2", "p1", "p3"],
        ["p2", "p1", "p3", "p2"],
    ]


@pytest.mark.parametrize(
    "name, users, items, interactions, samples, named_tests",
    [
        # named users' test targets read off the last field of their lines in the file
        ("amazon-beauty/Beauty.txt", 22363, 12101, 198502, 131413, {"1": "5", "2": "11", "22363": "10487"}),
        (
            "amazon-toys/Toys_and_Games.txt",
            19412,
            11924,
            167597,
            109361,
            {"1": "5", "9": "54", "19412": "11523"},
        ),
    ],
)
def test_paper_splits_beauty_and_toys(
    shared_data, tmp_path, name, users, items, interactions, samples, named_tests
):
    path = shared_data / name
    stats = preprocess_file(path, tmp_path / "s")
    s = load_splits(tmp_path / "s")
    assert (stats["users"], stats["items"], stats["interactions"], stats["train_samples"]) == (
        users,
        items,
        interactions,
        samples,
    )
    # These files already number items 1..N by first appearance: ids are kept as they are.
    assert s.item_ids == [str(i) for i in range(1, items + 1)]
    lines = {line.split()[0]: line.split() for line in path.read_text().splitlines()}
    for user, target in named_tests.items():
        u = s.user_ids.index(user)
        fields = lines[user]
        assert fields[-1] == target
        assert s.item_ids[int(s.test_targets[u]) - 1] == fields[-1]
        assert s.item_ids[int(s.valid_targets[u]) - 1] == fields[-2]
        history = [int(x) for x in fields[1:-1]][-50:]
        assert np.asarray(s.test_inputs[u])[-len(history) :].tolist() == history
    # every user's test target is the last item of the line, for all users
    last = np.array([int(lines[u][-1]) for u in s.user_ids])
    assert np.array_equal(np.asarray(s.test_targets), last)


@pytest.mark.slow
def test_ml1m_inter_stable_ties_and_paper_sequence_file(shared_data, tmp_path):
    inter = preprocess_file(shared_data / "ml-1m" / "ml-1m.inter", tmp_path / "inter")
    paper = preprocess_file(shared_data / "ml-1m" / "ml-1m_diffurec_sequences.txt", tmp_path / "paper")
    for stats in (inter, paper):
        assert (stats["users"], stats["items"], stats["interactions"]) == (6040, 3706, 1000209)
        assert stats["train_samples"] == 1000209 - 3 * 6040  # 982,089: "about 982 k"
    a, b = load_splits(tmp_path / "inter"), load_splits(tmp_path / "paper")
    assert json.loads((tmp_path / "inter" / "format.json").read_text())["tie_rule"] == TIE_RULE_STABLE
    # The .inter file's ids are '1m_<user>' and titles; the sequence file's are MovieLens ids.
    # Identify an item by the set of users who rated it (a random-weight signature; 36 rarely
    # rated items share their rater set with another and stay ambiguous), then compare test
    # items: the stable sort gives the paper's test item for 4,493 of 6,040 users (data README).
    order = np.argsort([int(u) for u in b.user_ids])
    by_user = {u.removeprefix("1m_"): i for i, u in enumerate(a.user_ids)}
    order_a = np.array([by_user[b.user_ids[i]] for i in order])
    weights = np.random.default_rng(0).random(len(order))

    def signatures(splits, user_order):
        rank = np.empty(len(user_order), dtype=np.int64)
        rank[user_order] = np.arange(len(user_order))
        owner = np.repeat(rank, np.diff(np.asarray(splits.seq_offsets)))
        return np.round(np.bincount(np.asarray(splits.seq_items), weights=weights[owner]), 9)

    sig_a, sig_b = signatures(a, order_a), signatures(b, order)
    assert sorted(sig_a[1:]) == sorted(sig_b[1:])  # the same items, rated by the same users
    test_a = sig_a[np.asarray(a.test_targets)[order_a]]
    test_b = sig_b[np.asarray(b.test_targets)[order]]
    assert int((test_a == test_b).sum()) == 4493


def test_reproducible_bytes(tmp_path, shared_data):
    for out in ("one", "two"):
        preprocess_file(shared_data / "ml-100k" / "ml-100k.inter", tmp_path / out)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert {"seq_items.npy", "seq_offsets.npy", "item_map.tsv", "user_map.tsv"} <= set(names)
    for name in names:  # every file of the folder, byte for byte
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_ml100k_fixture_splits(ml100k_splits):
    assert (ml100k_splits.num_users, ml100k_splits.num_items) == (943, 1682)
    assert len(ml100k_splits.train_targets) == 100000 - 3 * 943
    assert int(np.asarray(ml100k_splits.train_targets).min()) >= 1


def test_cli_preprocess_returns_gauges_and_writes_atomically(tmp_path, shared_data, capsys):
    out = tmp_path / "splits"
    assert (
        main(
            [
                "preprocess",
                "--input",
                str(shared_data / "ml-100k" / "ml-100k.inter"),
                "--out",
                str(out),
                "--max-len",
                "20",
                "--kcore",
                "10",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stats = json.loads((out / "stats.json").read_text())
    assert printed["users"] == stats["users"] and stats["settings"]["kcore"] == 10
    assert stats["rows_dropped"] == stats["dropped"]["kcore"] > 0
    assert load_splits(out).max_len == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splits"]  # no temporary left behind


def test_preprocess_handler_returns_prometheus_gauges(tmp_path):
    from diffurec.cli import build_parser

    args = build_parser().parse_args(
        [
            "preprocess",
            "--input",
            str(FIXTURES / "clicks.csv"),
            "--format",
            "csv",
            "--user-col",
            "visitor",
            "--item-col",
            "product",
            "--time-col",
            "when",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    result = args.func(args)
    assert result["gauges"] == {
        "rows_read": 10,
        "rows_dropped": 2,
        "users": 2,
        "items": 4,
        "interactions": 8,
        "train_samples": 2,
    }
    assert result["labels"] == {"format": "csv"}
