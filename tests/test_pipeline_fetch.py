"""`diffurec pipeline fetch-raw`, the DVC raw stage: a local copy when there is one, else the
official archive (here: served by a local HTTP server) rewritten row for row as RecBole .inter."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from functools import partial

import pytest

from diffurec.cli import main

from pipeline_clone import write_slice


@pytest.fixture()
def inter_slice(tmp_path, shared_data):
    return write_slice(shared_data / "ml-100k" / "ml-100k.inter", tmp_path / "slice.inter", users=25)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep stderr for the command's own one-line errors
        pass


@pytest.fixture()
def archive_server(tmp_path, inter_slice):
    """An ml-100k.zip with ml-100k/u.data (GroupLens' layout) made of the slice's rows."""
    rows = inter_slice.read_text().splitlines(keepends=True)[1:]
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("ml-100k/u.data", "".join(rows))
    handler = partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield (
            f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip",
            hashlib.sha256(archive.read_bytes()).hexdigest(),
            server,
        )
    finally:
        server.shutdown()
        server.server_close()


def test_local_copy_is_copied_byte_for_byte(tmp_path, inter_slice):
    out = tmp_path / "data" / "raw" / "ml-100k.inter"
    assert (
        main(
            ["pipeline", "fetch-raw", "--dataset", "ml-100k", "--source", str(inter_slice), "--out", str(out)]
        )
        == 0
    )
    assert out.read_bytes() == inter_slice.read_bytes()


def test_missing_copy_falls_back_to_the_official_archive(tmp_path, inter_slice, archive_server):
    url, sha256, server = archive_server
    out = tmp_path / "raw" / "ml-100k.inter"
    downloads = tmp_path / "downloads"
    command = [
        "pipeline",
        "fetch-raw",
        "--dataset",
        "ml-100k",
        "--source",
        str(tmp_path / "nowhere.inter"),
        "--out",
        str(out),
        "--download-dir",
        str(downloads),
        "--url",
        url,
        "--sha256",
        sha256,
    ]
    assert main(command) == 0
    # Same rows, same order, whole-second timestamps kept exactly: identical to the .inter slice.
    assert out.read_text() == inter_slice.read_text()
    # The download is kept: a second run needs no server.
    server.shutdown()
    out.unlink()
    assert main(command) == 0
    assert out.read_text() == inter_slice.read_text()


def test_wrong_checksum_and_unknown_dataset_fail_cleanly(tmp_path, archive_server, capsys):
    url, _, _ = archive_server
    out = tmp_path / "raw.inter"
    assert (
        main(
            [
                "pipeline",
                "fetch-raw",
                "--dataset",
                "ml-100k",
                "--out",
                str(out),
                "--download-dir",
                str(tmp_path / "dl"),
                "--url",
                url,
                "--sha256",
                "0" * 64,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256 mismatch" in err[0]
    assert not out.exists()
    assert (
        main(
            [
                "pipeline",
                "fetch-raw",
                "--dataset",
                "beauty",
                "--source",
                str(tmp_path / "Beauty.txt"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Beauty.txt: not found" in err[0]
    assert not out.exists()
