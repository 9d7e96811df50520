"""Step 1: the raw interaction log: a data version's bytes from the DVC remote, a local copy,
or the dataset's official source."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fetch_raw(dataset: str, source: str, md5: str, path: str, raw: Output[Dataset]):
    """The Dataset is a folder holding one raw file. With `source` empty: `diffurec data pull`
    of the object `md5` (resolve_data's; `path` names the file) from the DVC remote. With
    source "official": the official `dataset` download (checksum checked). Else a copy of the
    path `source` (the official download when it is missing), whose md5 must be `md5` when
    one is given (resolve_data read it: a file that changed in between fails here)."""
    import os

    from diffurec.cli import main
    from diffurec.files import file_md5

    os.makedirs(raw.path, exist_ok=True)
    if not source:
        raw_file = os.path.join(raw.path, os.path.basename(path))
        command = ["data", "pull", "--md5", md5, "--out", raw_file]
    else:
        raw_file = os.path.join(raw.path, f"{dataset}.inter")
        command = ["pipeline", "fetch-raw", "--dataset", dataset, "--out", raw_file]
        command += ["--download-dir", os.path.join(raw.path, os.pardir, "downloads")]
        if source != "official":
            command += ["--source", source]
    if main(command) != 0:
        raise RuntimeError(f"diffurec {command[0]} {command[1]} failed (the line above says why)")
    actual = file_md5(raw_file)
    if md5 and actual != md5:
        raise RuntimeError(f"{source or path}: md5 {actual}, expected {md5} (changed since resolve_data)")
    raw.metadata.update(
        {"file": os.path.basename(raw_file), "md5": actual, "dataset": dataset, "source": source or "dvc"}
    )
