"""`diffurec fetch` against a real HTTP server on 127.0.0.1 serving an archive the test builds."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from diffurec.cli import main
from diffurec.data.fetch import DATASETS, fetch_dataset, fetch_raw
from diffurec.data.readers import read_interactions
from diffurec.errors import DiffuRecError

ROWS = 400


@pytest.fixture(scope="module")
def archive(shared_data, tmp_path_factory):
    """An ml-100k.zip laid out like GroupLens's, holding a real slice of ML-100K as u.data."""
    lines = (shared_data / "ml-100k" / "ml-100k.inter").read_text().splitlines()[1 : ROWS + 1]
    folder = tmp_path_factory.mktemp("served")
    path = folder / "ml-100k.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-100k/u.data", "\n".join(lines) + "\n")
        zf.writestr("ml-100k/README", "MovieLens 100K slice for tests\n")
    return path


@pytest.fixture(scope="module")
def server(archive):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_from_a_mirror_checks_sha256_and_unpacks(server, archive, tmp_path):
    result = fetch_dataset("ml-100k", tmp_path / "raw", url=f"{server}/ml-100k.zip", sha256=_sha256(archive))
    assert result["checksum"]["algorithm"] == "sha256"
    assert result["bytes"] == archive.stat().st_size
    frame = read_interactions(result["ratings"])
    assert len(frame) == ROWS and frame.attrs["format"] == "ml-100k"
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["ml-100k"]  # no temporaries


def test_fetch_md5_override_and_local_archive(archive, tmp_path):
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    result = fetch_dataset("ml-100k", tmp_path / "raw", from_path=archive, md5=md5)
    assert result["checksum"] == {"algorithm": "md5", "value": md5}


def test_checksum_mismatch_is_refused_and_writes_nothing(server, tmp_path, capsys):
    out = tmp_path / "raw"
    # No override: the published GroupLens sha256 applies, and the test archive differs.
    status = main(["fetch", "ml-100k", "--url", f"{server}/ml-100k.zip", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert f"sha256 mismatch: expected {DATASETS['ml-100k'].sha256}" in err
    assert "Traceback" not in err
    assert list(out.iterdir()) == []


def test_missing_url_and_bad_archive(server, tmp_path, capsys):
    assert main(["fetch", "ml-100k", "--url", f"{server}/nothing.zip", "--out", str(tmp_path / "a")]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    assert (
        main(
            ["fetch", "ml-100k", "--from", str(junk), "--sha256", _sha256(junk), "--out", str(tmp_path / "b")]
        )
        == 2
    )
    assert "not a valid zip archive" in capsys.readouterr().err
    assert list((tmp_path / "b").iterdir()) == []


def test_archive_escaping_the_output_folder_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t2\t3\t4\n")
        zf.writestr("../outside.txt", "x")
    with pytest.raises(DiffuRecError, match="outside the output folder"):
        fetch_dataset("ml-100k", tmp_path / "out", from_path=evil, sha256=_sha256(evil))
    assert not (tmp_path / "outside.txt").exists()


def test_cli_fetch_then_preprocess(server, archive, tmp_path, capsys):
    raw = tmp_path / "raw"
    assert (
        main(
            [
                "fetch",
                "ml-100k",
                "--url",
                f"{server}/ml-100k.zip",
                "--sha256",
                _sha256(archive),
                "--out",
                str(raw),
            ]
        )
        == 0
    )
    assert (
        main(["preprocess", "--input", str(raw / "ml-100k" / "u.data"), "--out", str(tmp_path / "splits")])
        == 0
    )
    assert (tmp_path / "splits" / "format.json").is_file()


# --- fetch_raw: the pipeline's raw log ----------------------------------------------------------

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def test_fetch_raw_copies_a_local_file_byte_for_byte(tmp_path):
    source = tmp_path / "mine.inter"
    source.write_bytes(b"user_id:token\titem_id:token\n1\t2\r\n3\t4\n")  # bytes as they are
    out = tmp_path / "raw" / "ml-100k.inter"
    result = fetch_raw("ml-100k", out, source=str(source), download_dir=tmp_path / "unused")
    assert out.read_bytes() == source.read_bytes()
    assert result == {
        "path": str(out),
        "md5": hashlib.md5(source.read_bytes()).hexdigest(),
        "origin": str(source),
        "bytes": len(source.read_bytes()),
    }
    assert sorted(p.name for p in out.parent.iterdir()) == ["ml-100k.inter"]
    assert not (tmp_path / "unused").exists()  # a local copy needs no download


def test_fetch_raw_falls_back_to_the_official_archive_as_inter(
    server, archive, shared_data, tmp_path, caplog
):
    import logging

    rows = (shared_data / "ml-100k" / "ml-100k.inter").read_text().splitlines(keepends=True)[1 : ROWS + 1]
    out = tmp_path / "raw" / "ml-100k.inter"
    downloads = tmp_path / "downloads"
    with caplog.at_level(logging.WARNING, logger="diffurec.data.fetch"):
        result = fetch_raw(
            "ml-100k",
            out,
            source=str(tmp_path / "nowhere.inter"),
            download_dir=downloads,
            url=f"{server}/ml-100k.zip",
            sha256=_sha256(archive),
        )
    # The u.data rows rewritten as .inter: the same rows as the .inter file they were cut from.
    assert out.read_text() == INTER_HEADER + "".join(rows)
    assert result["origin"] == str(downloads / "ml-100k" / "u.data")
    assert result["md5"] == hashlib.md5(out.read_bytes()).hexdigest()
    assert result["bytes"] == out.stat().st_size
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'nowhere.inter'} not found: using the official ml-100k download"
    ]


def test_fetch_raw_errors_leave_nothing_behind(server, tmp_path):
    out = tmp_path / "raw" / "data.inter"
    with pytest.raises(
        DiffuRecError,
        match=r"Beauty.txt: not found, and 'beauty' has no official "
        r"download \(ml-100k, ml-1m have\): give --source FILE",
    ):
        fetch_raw("beauty", out, source=str(tmp_path / "Beauty.txt"))
    with pytest.raises(DiffuRecError, match=r"^'beauty' has no official download"):
        fetch_raw("beauty", out)
    with pytest.raises(DiffuRecError, match="sha256 mismatch"):
        fetch_raw("ml-100k", out, download_dir=tmp_path / "dl", url=f"{server}/ml-100k.zip", sha256="0" * 64)
    assert list(out.parent.iterdir()) == []
