"""Download a public dataset archive, check its digest, and unpack it; write the pipeline's
raw log from a local copy or from that archive.

GroupLens publishes an md5 beside each archive; the sha256 of ML-100K is known as well (see
../shared/data/README.md). The check uses the sha256 when one is known or given, else the md5.
A mirror URL or a local archive can replace the official source; the digest still applies
unless the caller overrides it. DATASETS is the one table of datasets with an official download.

    fetch_dataset   an official archive -> OUT/<folder>/ (`diffurec fetch`)
    fetch_raw       the raw log for the pipeline: a copy of a local file, else the official
                    archive's ratings rewritten as RecBole .inter (`diffurec pipeline fetch-raw`)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from diffurec.errors import DiffuRecError
from diffurec.files import file_digest, file_md5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    name: str
    url: str
    folder: str  # the top-level folder inside the archive
    ratings: str  # the interactions file inside that folder, for the next step
    md5: str  # GroupLens publishes one for every archive
    sha256: str | None = None


GROUPLENS = "https://files.grouplens.org/datasets/movielens"
DATASETS = {
    "ml-100k": Dataset(
        "ml-100k",
        f"{GROUPLENS}/ml-100k.zip",
        "ml-100k",
        "u.data",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        md5="0e33842e24a9c977be4e0107933c0723",
    ),
    "ml-1m": Dataset(
        "ml-1m", f"{GROUPLENS}/ml-1m.zip", "ml-1m", "ratings.dat", md5="c4d9eecfca2ab87c1945afe126590906"
    ),
}


# The pipeline's raw log is RecBole's .inter, whatever the source.
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def _download(url: str, target: Path, timeout: float) -> None:
    """GET `url` into `target`; `timeout` bounds the whole download, not each read (net.py)."""
    from diffurec import net

    try:
        net.download(url, target, deadline_s=timeout, progress=f"fetch {Path(url).name}")
    except net.NetworkError as error:
        raise DiffuRecError(f"{url}: download failed: {error.reason}") from None


def _safe_extract(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                resolved = (target / member.filename).resolve()
                if not resolved.is_relative_to(target.resolve()):
                    raise DiffuRecError(
                        f"{archive}: member {member.filename!r} would unpack "
                        f"outside the output folder; refusing"
                    )
            zf.extractall(target)
    except zipfile.BadZipFile as error:
        raise DiffuRecError(f"{archive}: not a valid zip archive ({error})") from None


def fetch_dataset(
    name: str,
    out: str | os.PathLike,
    url: str | None = None,
    from_path: str | os.PathLike | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
) -> dict:
    """Fetch dataset `name` into out/<folder>/; returns what was fetched and checked.

    Without url/from_path it downloads from the official source. sha256/md5 override the
    published digests (for a mirror that repackages, or a test archive).
    """
    if name not in DATASETS:
        raise DiffuRecError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    if url and from_path:
        raise DiffuRecError("give either --url or --from, not both")
    dataset = DATASETS[name]
    if sha256:
        expected = ("sha256", sha256.lower())
    elif md5:
        expected = ("md5", md5.lower())
    elif dataset.sha256:
        expected = ("sha256", dataset.sha256)
    else:
        expected = ("md5", dataset.md5)

    out = Path(out)
    final = out / dataset.folder
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dataset.folder}.tmp-", dir=out))
    try:
        archive = tmp / f"{dataset.name}.zip"
        if from_path:
            source = str(from_path)
            if not Path(from_path).is_file():
                raise DiffuRecError(f"{from_path}: no such file")
            shutil.copyfile(from_path, archive)
        else:
            source = url or dataset.url
            log.info("downloading %s", source)
            _download(source, archive, timeout)
        actual = file_digest(archive, expected[0])
        if actual != expected[1]:
            raise DiffuRecError(
                f"{source}: {expected[0]} mismatch: expected {expected[1]}, got "
                f"{actual} (corrupt download, or a different file)"
            )
        unpacked = tmp / "unpacked"
        _safe_extract(archive, unpacked)
        if not (unpacked / dataset.folder / dataset.ratings).is_file():
            raise DiffuRecError(f"{source}: archive has no {dataset.folder}/{dataset.ratings}")
        if final.exists():
            shutil.rmtree(final)
        (unpacked / dataset.folder).rename(final)
        size = archive.stat().st_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetched %s into %s (%s ok)", name, final, expected[0])
    return {
        "dataset": name,
        "source": source,
        "folder": str(final),
        "ratings": str(final / dataset.ratings),
        "bytes": size,
        "checksum": {"algorithm": expected[0], "value": expected[1]},
    }


def fetch_raw(
    dataset: str,
    out: str | Path,
    source: str | None = None,
    download_dir: str | Path = "runs/downloads",
    url: str | None = None,
    sha256: str | None = None,
) -> dict:
    """Write the raw interaction log to `out`, atomically: a byte-for-byte copy of `source` when
    that file exists, else the official `dataset` archive (checksum checked, unpacked once into
    `download_dir` and reused) rewritten as RecBole .inter.

    Returns {"path", "md5", "origin" (the file the rows came from), "bytes"}. url, sha256: a
    mirror of the official archive and its digest.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    local = Path(source) if source else None
    try:
        if local is not None and local.is_file():
            shutil.copyfile(local, tmp)
            origin = str(local)
        else:
            if dataset not in DATASETS:
                where = f"{source}: not found, and " if source else ""
                raise DiffuRecError(
                    f"{where}{dataset!r} has no official download "
                    f"({', '.join(DATASETS)} have): give --source FILE"
                )
            if local is not None:
                log.warning("%s not found: using the official %s download", local, dataset)
            origin = official_ratings(dataset, download_dir, url, sha256)
            write_inter(origin, tmp)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(out), "md5": file_md5(out), "origin": origin, "bytes": out.stat().st_size}


def official_ratings(
    dataset: str, download_dir: str | Path, url: str | None = None, sha256: str | None = None
) -> str:
    """The ratings file of an official archive, downloaded (and checksum-checked) only once."""
    spec = DATASETS[dataset]
    ratings = Path(download_dir) / spec.folder / spec.ratings
    if ratings.is_file():
        log.info("using the earlier download %s", ratings)
        return str(ratings)
    return str(fetch_dataset(dataset, download_dir, url=url, sha256=sha256)["ratings"])


def write_inter(ratings: str | Path, out: str | Path) -> None:
    """Rewrite an official ratings file (u.data, ratings.dat) as RecBole .inter, row for row, so
    the pipeline reads one format whatever the source."""
    from diffurec.data.readers import read_interactions

    frame = read_interactions(ratings)
    with open(out, "w") as handle:
        handle.write(INTER_HEADER)
        for user, item, rating, timestamp in zip(
            frame["user"], frame["item"], frame["rating"], frame["timestamp"], strict=True
        ):
            # Whole seconds stay whole: `:g` would round 881250949 to 8.8125e+08.
            stamp = int(timestamp) if float(timestamp).is_integer() else repr(float(timestamp))
            handle.write(f"{user}\t{item}\t{rating:g}\t{stamp}\n")
