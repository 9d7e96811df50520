"""Download a public dataset archive, check its digest, and unpack it.

GroupLens publishes an md5 beside each archive; the sha256 of ML-100K is known as well (see
../shared/data/README.md). The check uses the sha256 when one is known or given, else the md5.
A mirror URL or a local archive can replace the official source; the digest still applies
unless the caller overrides it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from diffurec.errors import DiffuRecError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    name: str
    url: str
    folder: str  # the top-level folder inside the archive
    ratings: str  # the interactions file inside that folder, for the next step
    sha256: str | None = None
    md5: str | None = None


GROUPLENS = "https://files.grouplens.org/datasets/movielens"
DATASETS = {
    "ml-100k": Dataset("ml-100k", f"{GROUPLENS}/ml-100k.zip", "ml-100k", "u.data",
                       sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                       md5="0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": Dataset("ml-1m", f"{GROUPLENS}/ml-1m.zip", "ml-1m", "ratings.dat",
                     md5="c4d9eecfca2ab87c1945afe126590906"),
}


def _download(url: str, target: Path, timeout: float) -> None:
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"fetch {Path(url).name}",
                      disable=None, leave=False) as bar:
                while block := response.read(1 << 16):
                    f.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as error:
        raise DiffuRecError(f"{url}: download failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DiffuRecError(f"{url}: download failed: {reason}") from None


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _safe_extract(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                resolved = (target / member.filename).resolve()
                if not resolved.is_relative_to(target.resolve()):
                    raise DiffuRecError(f"{archive}: member {member.filename!r} would unpack "
                                        f"outside the output folder; refusing")
            zf.extractall(target)
    except zipfile.BadZipFile as error:
        raise DiffuRecError(f"{archive}: not a valid zip archive ({error})") from None


def fetch_dataset(name: str, out, url: str | None = None, from_path=None,
                  sha256: str | None = None, md5: str | None = None,
                  timeout: float = 60.0) -> dict:
    """Fetch dataset `name` into out/<folder>/; returns what was fetched and checked.

    Without url/from_path it downloads from the official source. sha256/md5 override the
    published digests (for a mirror that repackages, or a test archive).
    """
    if name not in DATASETS:
        raise DiffuRecError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    if url and from_path:
        raise DiffuRecError("give either --url or --from, not both")
    dataset = DATASETS[name]
    if sha256 or md5:
        expected = ("sha256", sha256.lower()) if sha256 else ("md5", md5.lower())
    else:
        expected = ("sha256", dataset.sha256) if dataset.sha256 else ("md5", dataset.md5)

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
            raise DiffuRecError(f"{source}: {expected[0]} mismatch: expected {expected[1]}, got "
                                f"{actual} (corrupt download, or a different file)")
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
    return {"dataset": name, "source": source, "folder": str(final),
            "ratings": str(final / dataset.ratings), "bytes": size,
            "checksum": {"algorithm": expected[0], "value": expected[1]}}
