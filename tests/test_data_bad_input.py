"""Every bad input of issue 2: one line naming file/row/column, exit 2, no traceback, nothing written."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pytest

from diffurec.cli import main

HEADER = "user_id,item_id,timestamp\n"


def _truncated_gzip(path):
    rows = "".join(f"{i},{i % 7},{1_000_000_000 + i}\n" for i in range(3000))
    data = gzip.compress((HEADER + rows).encode())
    path.write_bytes(data[: len(data) // 2])


# name -> (file name, content builder or bytes, extra CLI args, expected fragments of the message)
CASES = {
    "missing file": ("absent.csv", None, [], ["absent.csv", "no such file"]),
    "empty file": ("empty.csv", b"", [], ["empty.csv", "file is empty"]),
    "header only": ("header.csv", HEADER.encode(), [], ["header.csv", "header", "no data rows"]),
    "missing column": (
        "nocol.csv",
        b"user_id,timestamp\n1,100\n1,200\n1,300\n",
        [],
        ["nocol.csv", "row 1", "no item column", "'user_id', 'timestamp'"],
    ),
    "misnamed column": (
        "named.csv",
        b"user_id,product,timestamp\n1,2,100\n",
        ["--item-col", "item"],
        ["named.csv", "row 1", "column 'item'", "not found", "'product'"],
    ),
    "non-numeric timestamp": (
        "nonnum.csv",
        (HEADER + "1,2,100\n1,3,yesterday\n1,4,300\n").encode(),
        [],
        ["nonnum.csv", "row 3", "column 'timestamp'", "'yesterday' is not a number"],
    ),
    "negative timestamp": (
        "negative.csv",
        (HEADER + "1,2,100\n1,3,200\n1,4,-300\n").encode(),
        [],
        ["negative.csv", "row 4", "column 'timestamp'", "negative"],
    ),
    "null user id": (
        "nullid.csv",
        (HEADER + "1,2,100\n,3,200\n1,4,300\n").encode(),
        [],
        ["nullid.csv", "row 3", "column 'user_id'", "user id is empty"],
    ),
    "null item id in a tsv": (
        "nullitem.tsv",
        b"user_id\titem_id\n1\t2\n1\t\n",
        [],
        ["nullitem.tsv", "row 3", "column 'item_id'", "item id is empty"],
    ),
    "undecodable bytes": (
        "latin1.csv",
        (HEADER + "1,2,100\n").encode() + b"1,caf\xe9,200\n",
        [],
        ["latin1.csv", "row 3", "column 'item_id'", "not valid UTF-8"],
    ),
    "truncated gzip": ("cut.csv.gz", _truncated_gzip, [], ["cut.csv.gz", "truncated gzip"]),
    "wrong delimiter (header)": (
        "semi.csv",
        b"user_id;item_id;timestamp\n1;2;100\n",
        [],
        ["semi.csv", "row 1", "wrong delimiter", "semicolon"],
    ),
    "wrong delimiter (u.data)": (
        "u.data",
        b"196,242,3,881250949\n",
        [],
        ["u.data", "row 1", "expected 4 fields", "wrong delimiter"],
    ),
    "stray field (ratings.dat)": (
        "ratings.dat",
        b"1::2::5::978300760\n1::3::5::978300761::x\n",
        [],
        ["ratings.dat", "row 2", "expected 4 fields", "found 5"],
    ),
    "no user long enough": (
        "short.txt",
        b"u1 a b\nu2 c d\nu3 e\n",
        [],
        ["short.txt", "no user has at least 3 interactions"],
    ),
    "sequence line without items": ("seq.txt", b"u1 a b c\nu2\n", [], ["seq.txt", "row 2", "no items"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_and_writes_nothing(case, tmp_path, capsys):
    name, content, extra, fragments = CASES[case]
    source = tmp_path / "in" / name
    source.parent.mkdir()
    if callable(content):
        content(source)
    elif content is not None:
        source.write_bytes(content)
    work = tmp_path / "work"
    work.mkdir()
    status = main(["preprocess", "--input", str(source), "--out", str(work / "splits"), *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("diffurec preprocess: error:")]
    assert status == 2
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in err
    assert list(work.iterdir()) == []  # no splits folder, no temporary left behind


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    source = tmp_path / "bad.csv"
    source.write_text(HEADER + "1,2,100\n1,3,oops\n")
    out = tmp_path / "splits"
    done = subprocess.run(
        [sys.executable, "-m", "diffurec", "-q", "preprocess", "--input", str(source), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"diffurec preprocess: error: {source}, row 3, column 'timestamp': timestamp 'oops' is "
        f"not a number (unix seconds or an ISO 8601 date); 1 such row(s)"
    ]
    assert not out.exists()


def test_failed_preprocess_keeps_an_existing_splits_folder(tmp_path, capsys):
    good = tmp_path / "good.txt"
    good.write_text("u1 a b c\nu2 b c d\n")
    out = tmp_path / "splits"
    assert main(["preprocess", "--input", str(good), "--out", str(out)]) == 0
    before = (out / "seq_items.npy").read_bytes()
    bad = tmp_path / "bad.txt"
    bad.write_text("u1 a\n")
    assert main(["preprocess", "--input", str(bad), "--out", str(out)]) == 2
    assert (out / "seq_items.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "good.txt", "splits"]


def test_dirty_but_usable_data_is_cleaned_not_rejected(tmp_path, capsys):
    source = tmp_path / "dirty.csv"
    source.write_text(HEADER + "1,a,10\n1,a,10\n1,b,20\n1,c,30\n2,a,5\n3,b,7\n3,c,8\n3,d,9\n")
    out = tmp_path / "splits"
    assert main(["preprocess", "--input", str(source), "--out", str(out)]) == 0
    import json

    stats = json.loads((out / "stats.json").read_text())
    assert stats["dropped"] == {"exact_duplicates": 1, "short_user_interactions": 1, "short_users": 1}
    assert (stats["users"], stats["interactions"]) == (2, 6)
