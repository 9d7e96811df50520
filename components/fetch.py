"""Step 1: the raw interaction log, from a local copy or the dataset's official source."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fetch_raw(dataset: str, source: str, raw: Output[Dataset]):
    """Copy `source` (a path the step can read) or, when it is empty or missing, download the
    official `dataset` (checksum checked); the Dataset is a folder holding one raw file."""
    import os

    from diffurec.cli import main

    os.makedirs(raw.path, exist_ok=True)
    raw_file = os.path.join(raw.path, f"{dataset}.inter")
    command = [
        "pipeline",
        "fetch-raw",
        "--dataset",
        dataset,
        "--out",
        raw_file,
        "--download-dir",
        os.path.join(raw.path, os.pardir, "downloads"),
    ]
    if source:
        command += ["--source", source]
    if main(command) != 0:
        raise RuntimeError("diffurec pipeline fetch-raw failed (the line above says why)")
    from diffurec.files import file_md5

    raw.metadata.update(
        {
            "file": os.path.basename(raw_file),
            "md5": file_md5(raw_file),
            "dataset": dataset,
            "source": source or "official",
        }
    )
