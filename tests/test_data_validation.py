"""Great Expectations suites: pass on real data with the exact expectation count, fail on
each matching corruption, write report.json and Data Docs, and exit 2 through the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from diffurec.cli import main
from diffurec.data import validation

RAW_FULL = 12  # user, item, timestamp and rating columns
RAW_NO_RATING = 11
RAW_SEQUENCES = 7  # no timestamp, no rating
SPLITS = 11
HEADER = "user_id,item_id,rating,timestamp\n"


def _failed(report, severity="critical"):
    return {
        (r["expectation"], str(r["kwargs"].get("column", r["kwargs"].get("column_list", ""))))
        for r in report["results"]
        if not r["success"] and r["severity"] == severity
    }


def _result(report, expectation, column):
    return next(
        r
        for r in report["results"]
        if r["expectation"] == expectation and r["kwargs"].get("column", "") == column
    )


def test_raw_suite_passes_on_real_ml100k_slice_with_every_expectation(shared_data, tmp_path):
    lines = (shared_data / "ml-100k" / "ml-100k.inter").read_text().splitlines()[:3001]
    path = tmp_path / "slice.inter"
    path.write_text("\n".join(lines) + "\n")
    report = validation.validate_file(path, tmp_path / "report")
    assert report["success"], _failed(report)
    assert report["expectations_expected"] == report["expectations_evaluated"] == RAW_FULL
    assert report["rows_validated"] == 3000 and report["failed"] == 0
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["expectations_evaluated"] == RAW_FULL and len(saved["results"]) == RAW_FULL
    index = (tmp_path / "report" / "data_docs" / "index.html").read_text()
    assert "raw_interactions.interactions" in index
    assert list((tmp_path / "report" / "data_docs" / "validations").rglob("*.html"))


def test_raw_suite_sizes_follow_the_columns(shared_data, tmp_path):
    csv_lines = (shared_data / "amazon-beauty" / "interactions.csv").read_text().splitlines()[:501]
    (tmp_path / "beauty.csv").write_text("\n".join(csv_lines) + "\n")
    report = validation.validate_file(tmp_path / "beauty.csv", tmp_path / "r1")
    assert report["success"] and report["expectations_evaluated"] == RAW_NO_RATING
    seq_lines = (shared_data / "amazon-toys" / "Toys_and_Games.txt").read_text().splitlines()[:100]
    (tmp_path / "toys.txt").write_text("\n".join(seq_lines) + "\n")
    report = validation.validate_file(tmp_path / "toys.txt", tmp_path / "r2")
    assert report["success"] and report["expectations_evaluated"] == RAW_SEQUENCES


def test_raw_suite_fails_on_each_corruption_and_names_the_file_rows(tmp_path):
    # row 3: null user; row 5: timestamp not a number; row 6: milliseconds (out of range);
    # rows 7-8: an exact duplicate (warning only); user 9 has one interaction (warning only).
    path = tmp_path / "corrupt.csv"
    path.write_text(
        HEADER + "1,a,4,978300760\n,b,4,978300761\n1,c,4,978300762\n"
        "2,a,4,yesterday\n2,b,4,978300760000\n2,c,4,978300770\n2,c,4,978300770\n"
        "9,a,4,978300800\n"
    )
    report = validation.validate_file(path, tmp_path / "report")
    assert not report["success"]
    assert report["expectations_evaluated"] == RAW_FULL
    assert _failed(report) == {
        ("expect_column_values_to_not_be_null", "user"),
        ("expect_column_values_to_not_be_null", "timestamp_numeric"),
        ("expect_column_values_to_be_between", "timestamp_numeric"),
    }
    assert _failed(report, "warning") == {
        ("expect_column_values_to_be_between", "user_interactions"),
        ("expect_compound_columns_to_be_unique", "['user', 'item', 'timestamp_numeric', 'rating']"),
    }
    assert _result(report, "expect_column_values_to_not_be_null", "user")["example_file_rows"] == [3]
    assert _result(report, "expect_column_values_to_not_be_null", "timestamp_numeric")[
        "example_file_rows"
    ] == [5]
    assert _result(report, "expect_column_values_to_be_between", "timestamp_numeric")[
        "example_file_rows"
    ] == [6]
    assert validation.summarize_failures(report).count("file row") == 3


def test_raw_suite_fails_without_a_splittable_user_or_an_item_column(tmp_path):
    short = tmp_path / "short.csv"
    short.write_text(HEADER + "1,a,4,978300760\n1,b,4,978300761\n2,a,4,978300762\n")
    report = validation.validate_file(short, tmp_path / "r1")
    assert _failed(report) == {("expect_column_max_to_be_between", "user_interactions")}

    noitem = tmp_path / "noitem.csv"
    noitem.write_text("user_id,rating,timestamp\n1,4,978300760\n1,4,978300761\n1,4,978300762\n")
    report = validation.validate_file(noitem, tmp_path / "r2")
    assert ("expect_column_to_exist", "item") in _failed(report)
    assert ("expect_column_values_to_not_be_null", "item") in _failed(report)
    assert report["expectations_evaluated"] == RAW_FULL


def test_a_suite_that_runs_nothing_fails(tmp_path):
    report = validation.run_suite("empty", [], {}, tmp_path / "r", {})
    assert report["expectations_evaluated"] == report["expectations_expected"] == 0
    assert not report["success"]


def test_splits_suite_passes_on_ml100k(ml100k_splits, tmp_path):
    report = validation.validate_splits_folder(ml100k_splits.path, tmp_path / "r")
    assert report["success"], _failed(report)
    assert report["expectations_expected"] == report["expectations_evaluated"] == SPLITS
    assert report["rows"] == {
        "item_map": 1682,
        "sequence_items": 100000,
        "seq_offsets": 944,
        "users": 943,
    }
    assert report["checked_on"] == {"all_rows": SPLITS, "sample": 0} and report["sample"] is None
    assert _result(report, "expect_column_sum_to_be_between", "train_samples")["observed_value"] == 97171


def _corrupt_copy(splits, tmp_path, name, change):
    folder = tmp_path / name
    shutil.copytree(splits.path, folder)
    change(folder)
    return folder


def _edit(folder, array, edit):
    values = np.load(folder / f"{array}.npy")
    edit(values)
    np.save(folder / f"{array}.npy", values)


def _set(array, position, value):
    return lambda folder: _edit(folder, array, lambda a: a.__setitem__(position, value))


def _two_items_for_user_0(folder):
    # Move user 0's end back to 2 items; user 1 takes the rest, so the totals stay right.
    _edit(folder, "seq_offsets", lambda a: a.__setitem__(1, 2))


def _one_train_sample_too_many(folder):
    header = json.loads((folder / "format.json").read_text())
    (folder / "format.json").write_text(json.dumps({**header, "num_train_samples": 97172}))


def _duplicate_map_index(folder):
    lines = (folder / "item_map.tsv").read_text().splitlines()
    lines[3] = "2\t" + lines[3].split("\t")[1]  # rows 2 and 3 of the map both say index 2
    (folder / "item_map.tsv").write_text("\n".join(lines) + "\n")


BETWEEN, UNIQUE_COUNT = "expect_column_values_to_be_between", "expect_column_unique_value_count_to_be_between"
SUM = ("expect_column_sum_to_be_between", "train_samples")  # sum of length - 3 over users


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        # item N+1 in seq_items (user 5's test target): out of range and one distinct value too many
        (
            lambda f: _set("seq_items", int(np.load(f / "seq_offsets.npy")[6]) - 1, 1683)(f),
            {(BETWEEN, "item"): 1, (UNIQUE_COUNT, "item"): None},
        ),
        (_set("seq_items", 11, 0), {(BETWEEN, "item"): 1, (UNIQUE_COUNT, "item"): None}),  # padding
        # offset 5 below offset 4: user 4 has -1 items (the total still adds up)
        (
            lambda f: _set("seq_offsets", 5, int(np.load(f / "seq_offsets.npy")[4]) - 1)(f),
            {("expect_column_values_to_be_increasing", "offset"): 1, (BETWEEN, "length"): 1},
        ),
        (_set("seq_offsets", 0, 1), {("expect_column_min_to_be_between", "offset"): None, SUM: None}),
        (_set("seq_offsets", 943, 99999), {("expect_column_max_to_be_between", "offset"): None, SUM: None}),
        (_two_items_for_user_0, {(BETWEEN, "length"): 1}),
        (_one_train_sample_too_many, {SUM: None}),
        (_duplicate_map_index, {("expect_column_values_to_be_unique", "index"): 2}),
    ],
    ids=[
        "item-n-plus-1",
        "item-0",
        "offset-decreases",
        "offset-0",
        "offset-end",
        "user-2-items",
        "num-train-samples",
        "map-index-twice",
    ],
)
def test_splits_suite_fails_on_each_matching_corruption(ml100k_splits, tmp_path, change, failed):
    """Each corruption of what splits version 2 stores fails exactly its expectations, with the
    offending row count, and the CLI's one line names the first of them."""
    folder = _corrupt_copy(ml100k_splits, tmp_path, "s", change)
    report = validation.validate_splits_folder(folder, tmp_path / "r")
    assert report["expectations_evaluated"] == SPLITS and not report["success"]
    assert {k: _result(report, *k).get("unexpected_count") for k in _failed(report)} == failed
    expectation, column = next(iter(failed))
    assert f"{expectation}({column})" in validation.summarize_failures(report, limit=len(failed))


def test_splits_suite_fails_when_ids_are_not_contiguous(ml100k_splits, tmp_path):
    def declare_one_more_item(folder):
        header = json.loads((folder / "format.json").read_text())
        (folder / "format.json").write_text(json.dumps({**header, "num_items": 1683}))

    folder = _corrupt_copy(ml100k_splits, tmp_path, "s", declare_one_more_item)
    report = validation.validate_splits_folder(folder, tmp_path / "r")
    assert report["expectations_evaluated"] == SPLITS
    assert _failed(report) == {
        ("expect_table_row_count_to_equal", ""),
        ("expect_column_unique_value_count_to_be_between", "item"),
    }


def test_cli_validate_exit_codes_and_one_line(ml100k_splits, tmp_path, capsys):
    assert main(["validate", "--splits", str(ml100k_splits.path), "--out", str(tmp_path / "ok")]) == 0
    assert "11/11 expectations evaluated, 0 failed" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "1,a,4,978300760\n1,b,4,-1\n1,c,4,978300762\n")
    assert main(["validate", "--input", str(bad), "--out", str(tmp_path / "bad")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and str(bad) in err[0] and "file row 3" in err[0]
    assert json.loads((tmp_path / "bad" / "report.json").read_text())["failed"] == 1
    assert main(["validate", "--out", str(tmp_path / "x")]) == 2
    assert "exactly one of --input" in capsys.readouterr().err


# Every kind of raw-suite failure: a null user (row 3), timestamps not a number (row 5), out of
# range (row 6) or empty (row 10), an exact duplicate (rows 7-8), a rating that is not a number
# (row 11), a one-interaction user (9), blank lines shifting the rows.
CORRUPT = (
    HEADER + "1,a,4,978300760\n,b,4,978300761\n1,c,4,978300762\n"
    "2,a,4,yesterday\n2,b,4,978300760000\n2,c,4,978300770\n2,c,4,978300770\n"
    "9,a,4,978300800\n1,d,4,\n1,e,good,978300790\n\n3,a,5,978300800\n3,b,5,978300801\n3,c,5,978300802\n"
)
COMPARED = ("success", "unexpected_count", "unexpected_percent", "observed_value", "element_count")


def test_every_row_checks_by_duckdb_equal_gx_on_the_same_rows(tmp_path, monkeypatch):
    """The DuckDB form of each expectation (used above FULL_ROWS) against GX's own result."""
    path = tmp_path / "corrupt.csv"
    path.write_text(CORRUPT)
    by_gx = validation.validate_file(path, tmp_path / "gx")
    monkeypatch.setattr(validation, "FULL_ROWS", 0)  # "sampled": GX sees every row, DuckDB rechecks
    by_duckdb = validation.validate_file(path, tmp_path / "duckdb")
    assert by_gx["sample"] is None and by_gx["checked_on"] == {"all_rows": RAW_FULL, "sample": 0}
    assert by_duckdb["sample"]["of"] == 13 and by_duckdb["checked_on"]["all_rows"] == RAW_FULL
    assert len(_failed(by_gx)) == 5 and len(_failed(by_gx, "warning")) == 2
    for gx_result, duckdb_result in zip(by_gx["results"], by_duckdb["results"], strict=True):
        assert gx_result["expectation"] == duckdb_result["expectation"]
        assert gx_result["kwargs"] == duckdb_result["kwargs"]
        for key in COMPARED:
            assert gx_result.get(key) == pytest.approx(duckdb_result.get(key)), (gx_result, key)
        assert gx_result.get("example_file_rows") == duckdb_result.get("example_file_rows"), gx_result
    for key in ("success", "failed", "warnings", "rows_rejected", "rows"):
        assert by_gx[key] == by_duckdb[key], key


def test_a_large_log_is_checked_on_every_row_and_gx_on_a_sample(tmp_path, monkeypatch):
    """Above FULL_ROWS a bad row outside GX's sample still fails the run, with its file row."""
    monkeypatch.setattr(validation, "FULL_ROWS", 20)
    monkeypatch.setattr(validation, "SAMPLE_ROWS", 5)
    rows = [f"{u},{i},4,{978300000 + 10 * u + i}" for u in range(8) for i in range(5)]
    rows[13] = "2,3,4,yesterday"  # file row 15: not a multiple of 8 records, not in the sample
    path = tmp_path / "large.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    report = validation.validate_file(path, tmp_path / "report")
    assert report["sample"] == {"rows": 5, "of": 40, "rule": "every 8th row in file order"}
    assert report["rows"] == {"interactions": 40} and report["rows_validated"] == 40
    assert not report["success"]
    assert _failed(report) == {("expect_column_values_to_not_be_null", "timestamp_numeric")}
    failed = _result(report, "expect_column_values_to_not_be_null", "timestamp_numeric")
    assert failed["unexpected_count"] == 1 and failed["example_file_rows"] == [15]
    assert failed["checked_on"] == "all rows" and failed["element_count"] == 40
    assert report["checked_on"] == {"all_rows": RAW_FULL, "sample": 0}
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["sample"]["rows"] == 5 and saved["results"][0]["checked_on"] == "all rows"


def _many_corruptions(folder):
    _set("seq_items", 11, 0)(folder)
    _set("seq_items", 500, 1683)(folder)
    _set("seq_offsets", 5, int(np.load(folder / "seq_offsets.npy")[4]) - 1)(folder)
    _two_items_for_user_0(folder)
    _one_train_sample_too_many(folder)
    _duplicate_map_index(folder)
    _set("seq_offsets", 0, 1)(folder)
    _set("seq_offsets", 943, 99999)(folder)


def test_splits_every_row_checks_by_numpy_equal_gx_on_the_same_rows(ml100k_splits, tmp_path, monkeypatch):
    """The NumPy form of each splits expectation (used above FULL_ROWS) against GX's own result."""
    folder = _corrupt_copy(ml100k_splits, tmp_path, "s", _many_corruptions)
    by_gx = validation.validate_splits_folder(folder, tmp_path / "gx")
    monkeypatch.setattr(validation, "FULL_ROWS", 0)  # "sampled" every row: GX sees all, NumPy rechecks
    monkeypatch.setattr(validation, "CHUNK_ROWS", 5)  # offset 5, below offset 4, starts a chunk
    by_numpy = validation.validate_splits_folder(folder, tmp_path / "numpy")
    assert by_gx["sample"] is None and by_numpy["sample"]["rule"] == "every 1th row of each table"
    assert by_numpy["checked_on"] == {"all_rows": SPLITS, "sample": 0}
    assert len(_failed(by_gx)) == 8  # all but the row counts and item_map range
    for gx_result, numpy_result in zip(by_gx["results"], by_numpy["results"], strict=True):
        assert gx_result["expectation"] == numpy_result["expectation"]
        for key in COMPARED:
            assert gx_result.get(key) == pytest.approx(numpy_result.get(key)), (gx_result, key)
    for key in ("success", "failed", "warnings", "rows_rejected", "rows"):
        assert by_gx[key] == by_numpy[key], key


def test_a_large_splits_folder_is_checked_on_every_row_and_gx_on_a_sample(
    ml100k_splits, tmp_path, monkeypatch
):
    """Above FULL_ROWS sequence items, a bad item outside GX's sample still fails the run."""
    monkeypatch.setattr(validation, "FULL_ROWS", 1000)
    monkeypatch.setattr(validation, "SAMPLE_ROWS", 5)
    folder = _corrupt_copy(ml100k_splits, tmp_path, "s", _set("seq_items", 12345, 1683))  # not a 20,000th
    report = validation.validate_splits_folder(folder, tmp_path / "r")
    assert report["sample"] == {"rows": 5, "of": 100000, "rule": "every 20000th row of each table"}
    assert report["rows"]["sequence_items"] == 100000 and report["rows"]["users"] == 943
    assert not report["success"] and report["checked_on"] == {"all_rows": SPLITS, "sample": 0}
    assert _failed(report) == {(BETWEEN, "item"), (UNIQUE_COUNT, "item")}
    failed = _result(report, BETWEEN, "item")
    assert failed["unexpected_count"] == 1 and failed["element_count"] == 100000
    assert failed["example_values"] == [1683] and failed["checked_on"] == "all rows"
    assert _result(report, UNIQUE_COUNT, "item")["observed_value"] == 1683
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["sample"]["rows"] == 5 and all(r["checked_on"] == "all rows" for r in saved["results"])
