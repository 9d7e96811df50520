"""Training windows built on the fly (splits version 2) equal the arrays version 1 stored.

The oracle is today's code before the change: RECORDED holds the md5 of every array that
`diffurec preprocess` materialised at commit b97e9bc (train_inputs [S, max_len] and the rest)
and of every batch its trainer built in epoch 1 (batch_tensors, length-bucketed or not, on
one and two ranks), on ML-100K (max_len 50 and 20) and Beauty (max_len 50). Each md5 covers
every sample, so one differing window anywhere fails the test.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from diffurec.data.preprocess import preprocess_file
from diffurec.data.splits import (
    FORMAT_VERSION,
    SampleWindows,
    build_splits,
    leave_one_out,
    load_splits,
    write_splits,
)
from diffurec.errors import DiffuRecError
from diffurec.train import batch_tensors, epoch_batches, rank_piece

CASES = {  # name -> (file under ../shared/data, format, max_len)
    "ml-100k-50": ("ml-100k/ml-100k.inter", None, 50),
    "ml-100k-20": ("ml-100k/ml-100k.inter", None, 20),
    "beauty-50": ("amazon-beauty/Beauty.txt", "sequences", 50),
}
# Recorded at b97e9bc with the version 1 code (arrays: np.load of each .npy, md5 of its bytes).
RECORDED = {
    "ml-100k-50": {
        "seq_items": ([100000], "20fbb63ece91aff057b406e67e03e3d6"),
        "seq_offsets": ([944], "c30729af4cc1d34f9b1e66285033cef3"),
        "train_inputs": ([97171, 50], "c9d7828ad9ec679c517900189eb336ba"),
        "train_targets": ([97171], "e986da758f61a8604a3dfd027cdbe653"),
        "train_users": ([97171], "063ae88ba7c3e358a69aa292819bb81e"),
        "valid_inputs": ([943, 50], "1a74bb72fac17ad3cc65ef2053db9dbe"),
        "valid_targets": ([943], "0ddc09351bc5dc51e7553b21c9a889a9"),
        "test_inputs": ([943, 50], "1f6ac476b98bc642fd46616022b97b39"),
        "test_targets": ([943], "21225b652c5e33925a220f96f283be50"),
    },
    "ml-100k-20": {
        "seq_items": ([100000], "20fbb63ece91aff057b406e67e03e3d6"),
        "seq_offsets": ([944], "c30729af4cc1d34f9b1e66285033cef3"),
        "train_inputs": ([97171, 20], "0c1cb2c4590b64c1b3a02af52aa3e27a"),
        "train_targets": ([97171], "e986da758f61a8604a3dfd027cdbe653"),
        "train_users": ([97171], "063ae88ba7c3e358a69aa292819bb81e"),
        "valid_inputs": ([943, 20], "93c0dbc9f5067b177753b2df6782c6a3"),
        "valid_targets": ([943], "0ddc09351bc5dc51e7553b21c9a889a9"),
        "test_inputs": ([943, 20], "a8018683cf8808c80ec1e907002e6897"),
        "test_targets": ([943], "21225b652c5e33925a220f96f283be50"),
    },
    "beauty-50": {
        "seq_items": ([198502], "53537930a3d8c4c1a2cb8e20a26081c1"),
        "seq_offsets": ([22364], "0004ff43385ea1fc171a0db6bec7367f"),
        "train_inputs": ([131413, 50], "f16506022c307d1a5e47b5cece4bb23f"),
        "train_targets": ([131413], "4c0ef93883ee631b108b5696435416fd"),
        "train_users": ([131413], "bf50cd08fdc7a30b61032c0fb999cbcc"),
        "valid_inputs": ([22363, 50], "2e7258cd97d3c77a1713aa373f4160a7"),
        "valid_targets": ([22363], "57721da4591dd7183b42683d040c909b"),
        "test_inputs": ([22363, 50], "f72c83448d00fd75d40924d8af865a69"),
        "test_targets": ([22363], "324f3651a3df9acdd9e76e6e6fc1e429"),
    },
}
# history_lengths(train_inputs) of version 1 (int32), and md5 over epoch 1's batches as
# batch_tensors returned them: per batch and rank, str(shape), inputs bytes, targets bytes
# (batch size 256, seed 1997; "bucketed": with those lengths, "full": without).
RECORDED_BATCHES = {
    "ml-100k-50": {
        "lengths": "bb4c3e33f455921f5d267de8c28b4edd",
        "bucketed-world1": "a85bdb401d34438d23c4bce28f2574b9",
        "bucketed-world2": "64a61302d1cb8b37a82609eda1f068ae",
        "full-world1": "64bfe98d4a51107e230f52b50a3e73c7",
        "full-world2": "0458981b572264d5e873f447c03a368c",
    },
    "ml-100k-20": {
        "lengths": "00af61067f16dc930687a6a040866c94",
        "bucketed-world1": "80b33d97250a9422e5266fdaf626c113",
        "bucketed-world2": "0124b2924f1b9f5a1714702f0e1de20f",
        "full-world1": "d29facb23e89e1a5986586bb24536127",
        "full-world2": "2c8bc47b506d27706b82ccbb195f245d",
    },
    "beauty-50": {
        "lengths": "b4c55bbffc3633bbc6d55044a15a739b",
        "bucketed-world1": "95b86cd63e14a54ab8b27128495e0497",
        "bucketed-world2": "de669b7f91b872ec1dccaa00cc2f3fb5",
        "full-world1": "e76324b060f3e4787ef22d7275899e3b",
        "full-world2": "5a889e49709cdb90b8cc426f0d5499fa",
    },
}
VERSION_1_ARRAYS = (
    "train_inputs",
    "train_targets",
    "train_users",
    "valid_inputs",
    "valid_targets",
    "test_inputs",
    "test_targets",
)


def _md5(array: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def case_splits(shared_data, tmp_path_factory):
    """Each case preprocessed once (today's `diffurec preprocess`), by name."""
    folders = {}
    for name, (relative, fmt, max_len) in CASES.items():
        folder = tmp_path_factory.mktemp(name) / "splits"
        preprocess_file(shared_data / relative, folder, max_len=max_len, format=fmt)
        folders[name] = folder
    return folders


@pytest.mark.parametrize("case", list(CASES))
def test_every_window_equals_the_version_1_arrays(case_splits, case):
    folder = case_splits[case]
    header = json.loads((folder / "format.json").read_text())
    assert header["version"] == FORMAT_VERSION == 2
    # the folder stores the sequences once; no materialised windows, targets or users
    assert sorted(p.name for p in folder.iterdir()) == [
        "format.json",
        "item_map.tsv",
        "seq_items.npy",
        "seq_offsets.npy",
        "stats.json",
        "user_map.tsv",
    ]
    splits = load_splits(folder)
    assert header["num_train_samples"] == splits.num_train_samples == RECORDED[case]["train_targets"][0][0]
    for name, (shape, md5) in RECORDED[case].items():
        array = np.asarray(getattr(splits, name))
        assert (list(array.shape), _md5(array)) == (shape, md5), name
    # the trainer's own whole-set reads: lengths, and every sample through train_batch
    lengths = splits.train_lengths()
    assert lengths.dtype == np.int32 and _md5(lengths) == RECORDED_BATCHES[case]["lengths"]
    inputs, targets = splits.train_batch(np.arange(splits.num_train_samples))
    assert _md5(inputs) == RECORDED[case]["train_inputs"][1]
    assert _md5(targets) == RECORDED[case]["train_targets"][1]


@pytest.mark.parametrize("case", list(CASES))
def test_trainer_batches_equal_the_version_1_batches(case_splits, case):
    """Length buckets and DDP pieces: epoch 1 batch by batch, as batch_tensors returns them."""
    splits = load_splits(case_splits[case])
    lengths = splits.train_lengths()
    for bucketed in (True, False):
        for world in (1, 2):
            digest = hashlib.md5()
            used = lengths if bucketed else None
            for batch in epoch_batches(splits.num_train_samples, 256, 1997, 1, used):
                for rank in range(world):
                    inputs, targets = batch_tensors(
                        splits, rank_piece(batch, rank, world), used, torch.device("cpu")
                    )
                    assert inputs.dtype == targets.dtype == torch.int64
                    digest.update(str(tuple(inputs.shape)).encode())
                    digest.update(inputs.numpy().tobytes())
                    digest.update(targets.numpy().tobytes())
            key = f"{'bucketed' if bucketed else 'full'}-world{world}"
            assert digest.hexdigest() == RECORDED_BATCHES[case][key], key


def test_a_version_1_folder_still_loads_from_its_sequences(case_splits, tmp_path):
    """A folder written before this change: the extra arrays are ignored, the same data comes out."""
    old = tmp_path / "v1"
    shutil.copytree(case_splits["ml-100k-20"], old)
    header = json.loads((old / "format.json").read_text())
    (old / "format.json").write_text(json.dumps({**header, "version": 1}))
    for name, array in leave_one_out(
        np.load(old / "seq_items.npy"), np.load(old / "seq_offsets.npy"), 20
    ).items():
        np.save(old / f"{name}.npy", np.zeros_like(array))  # never read: zeros would show
    splits = load_splits(old)
    for name in VERSION_1_ARRAYS:
        assert _md5(np.asarray(getattr(splits, name))) == RECORDED["ml-100k-20"][name][1], name


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"format": "diffurec-splits", "version": 3}, "found diffurec-splits version 3; rebuild it with"),
        ({"format": "something-else", "version": 2}, "found something-else version 2"),
    ],
)
def test_an_unknown_version_is_refused_with_how_to_rebuild(tmp_path, header, message):
    (tmp_path / "format.json").write_text(json.dumps(header))
    with pytest.raises(
        DiffuRecError, match=r"format\.json: expected diffurec-splits version 1 or 2"
    ) as error:
        load_splits(tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert ("rebuild" in str(error.value)) == (header["format"] == "diffurec-splits")


def test_windows_of_a_small_case_by_hand(tmp_path):
    """Users [1 2 3 4 5], [6 7 8] and [2 9 3 4] with max_len 3, the windows written out."""
    splits = build_splits(
        np.array([1, 2, 3, 4, 5, 6, 7, 8, 2, 9, 3, 4]), np.array([0, 5, 8, 12]), list("abcdefghi"), "xyz", 3
    )
    written = load_splits(write_splits(splits, tmp_path / "s"))
    for s in (splits, written):
        assert s.num_train_samples == 3 and s.train_sample_offsets.tolist() == [0, 2, 2, 3]
        assert np.asarray(s.train_inputs).tolist() == [[0, 0, 1], [0, 1, 2], [0, 0, 2]]
        assert s.train_targets.tolist() == [2, 3, 9] and s.train_users.tolist() == [0, 0, 2]
        assert s.train_lengths().tolist() == [1, 2, 1]
        # a batch in any order, cut to its longest history
        inputs, targets = s.train_batch(np.array([2, 1]), width=2)
        assert inputs.tolist() == [[0, 2], [1, 2]] and targets.tolist() == [9, 3]
        assert s.valid_inputs.tolist() == [[1, 2, 3], [0, 0, 6], [0, 2, 9]]
        assert s.test_inputs.tolist() == [[2, 3, 4], [0, 6, 7], [2, 9, 3]]
        assert s.valid_targets.tolist() == [4, 7, 3] and s.test_targets.tolist() == [5, 8, 4]
    with pytest.raises(IndexError):
        splits.train_batch(np.array([3]))


def test_sample_windows_index_like_an_array(case_splits):
    splits = load_splits(case_splits["beauty-50"])
    view = splits.train_inputs
    assert isinstance(view, SampleWindows)
    assert len(view) == view.shape[0] == splits.num_train_samples and view.shape[1] == 50
    whole = np.asarray(view)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(view), 500)
    keys = [
        7,
        -1,
        slice(-64, None),
        slice(10, 200, 7),
        picks,
        (picks, slice(-20, None)),
        (slice(100, 300), -1),
        (5, -1),
        whole[:, -1] == 1,
    ]
    for key in keys:
        assert np.array_equal(view[key], whole[key]), key
    with pytest.raises(IndexError):
        view[len(view)]


def test_a_user_too_short_for_leave_one_out_is_named(case_splits, tmp_path):
    folder = tmp_path / "short"
    shutil.copytree(case_splits["ml-100k-20"], folder)
    offsets = np.load(folder / "seq_offsets.npy")
    offsets[5] = offsets[6] - 2  # user 5: two items; user 4 gets the rest
    np.save(folder / "seq_offsets.npy", offsets)
    with pytest.raises(DiffuRecError, match=r"short: user 5 has 2 items; leave-one-out needs at least 3"):
        load_splits(folder).train_lengths()
