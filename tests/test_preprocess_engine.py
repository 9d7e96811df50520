"""The DuckDB preprocessing engine gives byte for byte the outputs of the pandas one it replaced.

tests/fixtures/engine/expected.json holds, per case (input file and options), the md5 of every
file the pandas preprocessing (commit b97e9bc) wrote, and its stats.json and format.json:
ML-100K, ML-1M, Beauty, Toys (../shared/data) and small fixtures in every supported format
(tests/fixtures/engine/make_fixtures.py wrote them; record.py recorded the outputs). Arrays the
splits format no longer stores are rebuilt from the loaded splits and compared the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from diffurec.data import preprocess, readers
from diffurec.data.preprocess import preprocess_file
from diffurec.data.readers import load_interactions, read_interactions
from diffurec.data.splits import load_splits
from diffurec.errors import DiffuRecError

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "engine" / "expected.json").read_text())["cases"]
# Header keys that change with the splits format version, not with preprocessing.
FORMAT_VERSION_KEYS = {"version", "samples"}


def _input(case: dict, shared_data: Path) -> Path:
    return (shared_data if case["root"] == "shared" else FIXTURES) / case["input"]


def _case_id(case: dict) -> str:
    options = ",".join(f"{k}={v}" for k, v in case["options"].items() if k != "sep")
    return f"{case['input']}[{options}]"


def _npy_md5(array) -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(np.asarray(array), dtype=np.int32))
    return hashlib.md5(buffer.getvalue()).hexdigest()


def _without_path(document: dict) -> dict:
    document = json.loads(json.dumps(document))
    document["source"]["path"] = "<input>"
    return document


def _assert_same_outputs(case: dict, out: Path) -> None:
    written = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in out.iterdir()}
    for name in ("seq_items.npy", "seq_offsets.npy", "item_map.tsv", "user_map.tsv"):
        assert written.get(name) == case["files"][name], name
    splits = load_splits(out)
    for name, md5 in case["files"].items():
        if name in ("stats.json", "format.json"):
            continue  # they name the input's path; compared as JSON below
        if name in written:
            assert written[name] == md5, name
        else:  # no longer stored: the loaded splits compute it
            attribute = name.removesuffix(".npy")
            assert _npy_md5(getattr(splits, attribute)) == md5, attribute
    assert _without_path(json.loads((out / "stats.json").read_text())) == case["stats"]
    header = _without_path(json.loads((out / "format.json").read_text()))
    for key in (set(header) | set(case["format_json"])) - FORMAT_VERSION_KEYS:
        assert header.get(key) == case["format_json"].get(key), key


@pytest.mark.parametrize("case", EXPECTED, ids=_case_id)
def test_duckdb_engine_writes_what_the_pandas_engine_wrote(case, shared_data, tmp_path):
    if "error" in case:
        with pytest.raises(DiffuRecError) as raised:
            preprocess_file(_input(case, shared_data), tmp_path / "s", **case["options"])
        assert str(raised.value) == case["error"]
        return
    preprocess_file(_input(case, shared_data), tmp_path / "s", **case["options"])
    _assert_same_outputs(case, tmp_path / "s")


def test_delimited_and_parquet_logs_never_reach_the_pandas_reader(monkeypatch, shared_data, tmp_path):
    """Only bad input (for its exact message) and sequence files may use read_interactions."""

    def refuse(*args, **kwargs):
        raise AssertionError("read_interactions called")

    monkeypatch.setattr(readers, "read_interactions", refuse)
    for case in EXPECTED:
        if case["input"] in ("ml-1m/ml-1m.inter", "engine/small.parquet", "engine/edge.csv"):
            preprocess_file(_input(case, shared_data), tmp_path / "s", **case["options"])
            _assert_same_outputs(case, tmp_path / "s")


def test_a_small_memory_limit_gives_the_same_bytes(monkeypatch, shared_data, tmp_path):
    monkeypatch.setenv("DIFFUREC_DUCKDB_MEMORY", "16MB")
    monkeypatch.setenv("DIFFUREC_DUCKDB_THREADS", "1")
    case = next(c for c in EXPECTED if c["input"] == "ml-100k/ml-100k.inter" and not c["options"])
    preprocess_file(_input(case, shared_data), tmp_path / "s", **case["options"])
    _assert_same_outputs(case, tmp_path / "s")
    assert not list(tmp_path.glob(".duckdb-*"))  # the work folder is gone


BAD = {
    "null user id": ("nullid.csv", "user_id,item_id,timestamp\n1,2,100\n\n,3,200\n1,4,300\n"),
    "null item id in a tsv": ("nullitem.tsv", "user_id\titem_id\n1\t2\n1\t \n"),
    "non-numeric timestamp": ("nonnum.csv", "user_id,item_id,timestamp\n1,2,100\n1,3,yesterday\n1,4,x\n"),
    "empty timestamp": ("nots.csv", "user_id,item_id,timestamp\n1,2,100\n1,3,\n"),
    "negative timestamp": ("negative.csv", "user_id,item_id,timestamp\n1,2,100\n\n\n1,3,200\n1,4,-300\n"),
    "non-numeric rating": ("rating.csv", "user_id,item_id,rating\n1,2,5\n1,3,good\n"),
    "null id in u.data": ("u.data", "1\t2\t3\t100\n\t3\t3\t200\n"),
}


@pytest.mark.parametrize("name", BAD)
def test_large_file_messages_equal_the_in_memory_readers(name, tmp_path, monkeypatch):
    """Above EXACT_MESSAGE_BYTES DuckDB's own counts build the message: the same line."""
    file_name, text = BAD[name]
    path = tmp_path / file_name
    path.write_text(text)
    with pytest.raises(DiffuRecError) as exact:
        read_interactions(path)
    monkeypatch.setattr(readers, "EXACT_MESSAGE_BYTES", 0)
    with preprocess_session(tmp_path) as con, pytest.raises(DiffuRecError) as built:
        load_interactions(con, path)
    assert str(built.value) == str(exact.value)
    assert "row " in str(built.value)


def preprocess_session(folder: Path):
    return readers.duckdb_session(folder)


def test_preprocess_module_has_no_pandas_row_engine():
    """The pandas cleaning functions are gone: one engine."""
    assert not hasattr(preprocess, "kcore")
