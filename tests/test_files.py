"""diffurec.files: the one JSON writer, file hasher and params.yaml reader every step uses."""

from __future__ import annotations

import hashlib
import os

import pytest

from diffurec.errors import DiffuRecError
from diffurec.files import file_digest, file_md5, read_params, write_json_atomic


def test_write_json_atomic_writes_indent_2_and_a_trailing_newline(tmp_path):
    path = write_json_atomic(tmp_path / "new" / "out.json", {"b": 1, "a": [1, 2], "c": None})
    assert path == tmp_path / "new" / "out.json"
    assert path.read_text() == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ],\n  "c": null\n}\n'
    write_json_atomic(path, {"b": {"y": 1, "x": 2}, "a": 0}, sort_keys=True)
    assert path.read_text() == '{\n  "a": 0,\n  "b": {\n    "x": 2,\n    "y": 1\n  }\n}\n'
    assert os.listdir(path.parent) == ["out.json"]  # no temporary file left


def test_write_json_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.json"
    path.write_text('{"old": true}\n')
    with pytest.raises(TypeError):
        write_json_atomic(path, {"not json": object()})
    assert path.read_text() == '{"old": true}\n'
    assert os.listdir(tmp_path) == ["out.json"]


def test_write_json_atomic_gives_the_mode_of_an_ordinary_file(tmp_path):
    """Readers in other containers need the usual umask mode, not a private temp file's 0600."""
    ordinary = tmp_path / "ordinary.json"
    ordinary.write_text("{}\n")
    written = write_json_atomic(tmp_path / "written.json", {})
    assert written.stat().st_mode == ordinary.stat().st_mode


def test_file_digests_match_the_published_test_vectors(tmp_path):
    abc = tmp_path / "abc"
    abc.write_bytes(b"abc")
    assert file_md5(abc) == "900150983cd24fb0d6963f7d28e17f72"
    assert file_digest(abc) == file_md5(abc)
    assert file_digest(abc, "sha256") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    # Over several 1 MiB blocks: the same digest as hashing the bytes at once.
    big = tmp_path / "big"
    data = os.urandom(3 * (1 << 20) + 17)
    big.write_bytes(data)
    assert file_md5(big) == hashlib.md5(data).hexdigest()


def test_read_params_all_or_some_sections(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  dataset: ml-100k\ntrain:\n  epochs: 3\ngate:\n  min: {}\n")
    assert read_params(params) == {
        "data": {"dataset": "ml-100k"},
        "train": {"epochs": 3},
        "gate": {"min": {}},
    }
    assert read_params(params, ["train", "data"]) == {"train": {"epochs": 3}, "data": {"dataset": "ml-100k"}}
    with pytest.raises(DiffuRecError, match=f"{params}: no section 'registry'"):
        read_params(params, ["data", "registry"])
    with pytest.raises(DiffuRecError, match="missing.yaml: params file not found"):
        read_params(tmp_path / "missing.yaml")
    params.write_text("- a list\n")
    with pytest.raises(DiffuRecError, match="expected a mapping of sections"):
        read_params(params)
