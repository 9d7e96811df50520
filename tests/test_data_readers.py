"""Each input format, read through the one entry point, on real slices and hand-written files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffurec.data.readers import detect_format, read_interactions
from diffurec.errors import DiffuRecError

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SLICE_ROWS = 300


@pytest.fixture(scope="module")
def ml100k_slice(shared_data):
    """The first SLICE_ROWS data rows of the real ML-100K .inter file, as parsed fields."""
    lines = (shared_data / "ml-100k" / "ml-100k.inter").read_text().splitlines()[1 : SLICE_ROWS + 1]
    return [line.split("\t") for line in lines]


def _expected(fields):
    return pd.DataFrame(
        {
            "user": [f[0] for f in fields],
            "item": [f[1] for f in fields],
            "rating": [float(f[2]) for f in fields],
            "timestamp": [float(f[3]) for f in fields],
        }
    )


def _check_same(frame, fields, first_row):
    expected = _expected(fields)
    pd.testing.assert_frame_equal(
        frame[["user", "item", "rating", "timestamp"]].reset_index(drop=True), expected
    )
    assert frame["row"].tolist() == list(range(first_row, first_row + len(fields)))


def test_recbole_inter_slice(tmp_path, ml100k_slice, shared_data):
    header = (shared_data / "ml-100k" / "ml-100k.inter").read_text().splitlines()[0]
    path = tmp_path / "slice.inter"
    path.write_text(header + "\n" + "\n".join("\t".join(f) for f in ml100k_slice) + "\n")
    frame = read_interactions(path)
    assert frame.attrs["format"] == "inter"
    _check_same(frame, ml100k_slice, first_row=2)


def test_movielens_100k_u_data(tmp_path, ml100k_slice):
    path = tmp_path / "u.data"
    path.write_text("\n".join("\t".join(f) for f in ml100k_slice) + "\n")
    frame = read_interactions(path)
    assert frame.attrs["format"] == "ml-100k"
    _check_same(frame, ml100k_slice, first_row=1)


def test_movielens_1m_ratings_dat(tmp_path, ml100k_slice):
    path = tmp_path / "ratings.dat"
    path.write_text("\n".join("::".join(f) for f in ml100k_slice) + "\n")
    frame = read_interactions(path)
    assert frame.attrs["format"] == "ml-1m"
    _check_same(frame, ml100k_slice, first_row=1)


def test_movielens_ratings_csv_gzip(tmp_path, ml100k_slice):
    path = tmp_path / "ratings.csv.gz"
    text = "userId,movieId,rating,timestamp\n" + "\n".join(",".join(f) for f in ml100k_slice) + "\n"
    path.write_bytes(gzip.compress(text.encode()))
    frame = read_interactions(path)
    assert frame.attrs["format"] == "movielens-csv"
    _check_same(frame, ml100k_slice, first_row=2)


def test_movielens_ratings_csv_hand_written():
    frame = read_interactions(FIXTURES / "ratings.csv")
    assert frame["user"].tolist() == ["1"] * 4 + ["2"] * 3
    assert frame["item"].tolist()[:2] == ["31", "1029"]
    assert frame["rating"].tolist()[0] == 2.5
    assert frame["timestamp"].iloc[-1] == 835355604.0


def test_generic_tsv_with_column_mapping(tmp_path, ml100k_slice):
    path = tmp_path / "log.tsv"
    path.write_text("who\twhat\tscore\twhen\n" + "\n".join("\t".join(f) for f in ml100k_slice) + "\n")
    frame = read_interactions(path, user_col="who", item_col="what", time_col="when", rating_col="score")
    _check_same(frame, ml100k_slice, first_row=2)


def test_generic_csv_defaults_find_common_names(shared_data, tmp_path):
    lines = (shared_data / "amazon-beauty" / "interactions.csv").read_text().splitlines()[:201]
    path = tmp_path / "beauty.csv"
    path.write_text("\n".join(lines) + "\n")
    frame = read_interactions(path)
    assert list(frame.columns) == ["user", "item", "timestamp", "row"]
    assert len(frame) == 200
    assert frame["user"].iloc[0] == lines[1].split(",")[0]
    assert frame["timestamp"].iloc[0] == float(lines[1].split(",")[2])


def test_parquet_real_slice(shared_data, tmp_path):
    source = pd.read_csv(shared_data / "amazon-beauty" / "interactions.csv", nrows=500)
    path = tmp_path / "beauty.parquet"
    source.to_parquet(path)
    frame = read_interactions(path)
    assert frame.attrs["format"] == "parquet"
    assert frame["user"].tolist() == source["user_id"].astype(str).tolist()
    assert frame["item"].tolist() == source["item_id"].astype(str).tolist()
    assert np.array_equal(frame["timestamp"].to_numpy(), source["timestamp"].to_numpy(float))
    assert frame["row"].tolist() == list(range(1, 501))


def test_csv_without_time_column_keeps_file_order():
    frame = read_interactions(FIXTURES / "clicks.csv", time_col=None, user_col="visitor", item_col="product")
    # 'when' is not a known time name, so there is no timestamp: file order is chronological.
    assert "timestamp" not in frame
    assert frame["item"].tolist()[:3] == ["p1", "p2", "p3"]


def test_sequence_text_real_slice(shared_data, tmp_path):
    lines = (shared_data / "amazon-beauty" / "Beauty.txt").read_text().splitlines()[:50]
    path = tmp_path / "slice.txt"
    path.write_text("\n".join(lines) + "\n")
    frame = read_interactions(path)
    assert frame.attrs["format"] == "sequences"
    assert len(frame) == sum(len(line.split()) - 1 for line in lines)
    first = lines[0].split()
    assert frame["item"].tolist()[: len(first) - 1] == first[1:]
    assert set(frame.loc[frame["user"] == first[0], "row"]) == {1}


def test_sequence_text_hand_written():
    frame = read_interactions(FIXTURES / "three_users.txt")
    assert frame["user"].tolist() == ["u1"] * 5 + ["u2"] * 3 + ["u3"] * 4
    assert frame["item"].tolist() == list("abcde") + list("caf") + list("bdac")
    assert frame["row"].tolist() == [1] * 5 + [2] * 3 + [3] * 4


def test_explicit_format_overrides_the_name(tmp_path, ml100k_slice):
    path = tmp_path / "export.bin"
    path.write_text("\n".join("::".join(f) for f in ml100k_slice) + "\n")
    with pytest.raises(DiffuRecError, match="cannot tell the format"):
        read_interactions(path)
    _check_same(read_interactions(path, format="ml-1m"), ml100k_slice, first_row=1)


def test_detect_format_names():
    assert detect_format("x/u.data") == "ml-100k"
    assert detect_format("ratings.dat.gz") == "ml-1m"
    assert detect_format("a.inter") == "inter"
    assert detect_format("ratings.csv") == "movielens-csv"
    assert detect_format("b.tsv.gz") == "tsv"
    assert detect_format("c.parquet") == "parquet"
    assert detect_format("Beauty.txt") == "sequences"


def test_recbole_titles_with_quotes_stay_whole(shared_data, tmp_path):
    # ML-1M's item ids are titles with ',' and spaces; a tab file must keep them whole, and
    # a '"' in a title must not start quoting.
    with open(shared_data / "ml-1m" / "ml-1m.inter", encoding="utf-8") as f:
        head = [next(f) for _ in range(2001)]
    titles = [line.split("\t")[1] for line in head[1:]]
    assert any("," in t for t in titles), "the slice should contain a title with a comma"
    head.append('1m_1\t"Quoted" Title, The (1999)\t4\t978300999\n')
    path = tmp_path / "ml1m_head.inter"
    path.write_text("".join(head))
    frame = read_interactions(path)
    assert frame["item"].tolist() == titles + ['"Quoted" Title, The (1999)']
    assert frame["user"].iloc[0] == "1m_1"


def test_timestamps_as_dates(tmp_path):
    path = tmp_path / "dated.csv"
    path.write_text("user,item,time\n1,a,2011-10-18\n1,b,2011-10-18T00:00:01Z\n")
    frame = read_interactions(path)
    assert frame["timestamp"].tolist() == [1318896000.0, 1318896001.0]
    parquet = tmp_path / "dated.parquet"
    pd.DataFrame(
        {"user_id": [1, 1], "item_id": [5, 6], "timestamp": pd.to_datetime(["2011-10-18", "2011-10-19"])}
    ).to_parquet(parquet)
    assert read_interactions(parquet)["timestamp"].tolist() == [1318896000.0, 1318982400.0]
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("user,item,time\n1,a,1318896000\n1,b,2011-10-18\n")
    with pytest.raises(DiffuRecError, match=r"row 3, column 'time'.*'2011-10-18' is not a number"):
        read_interactions(mixed)


@pytest.mark.parametrize("flag", ["user_col", "item_col", "time_col", "rating_col"])
def test_column_flags_are_refused_for_headerless_formats_by_both_readers(tmp_path, flag):
    """u.data has fixed columns: naming one is an error (not silently ignored), with the same
    line from the pandas reader and from DuckDB's (the preprocessing engine)."""
    from diffurec.data.readers import duckdb_session, load_interactions

    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t100\n2\t20\t4\t200\n")
    role = flag.split("_")[0]
    expected = f"--{role}-col does not apply to format 'ml-100k' (it has no header; its columns are "
    with pytest.raises(DiffuRecError) as pandas_error:
        read_interactions(path, **{flag: "x"})
    assert str(pandas_error.value).startswith(expected)
    with duckdb_session(tmp_path) as con, pytest.raises(DiffuRecError) as duckdb_error:
        load_interactions(con, path, **{flag: "x"})
    assert str(duckdb_error.value) == str(pandas_error.value)
