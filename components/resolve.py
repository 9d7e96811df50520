"""Step 0: the data version -> the raw log's md5 (what every later step's cache is keyed on)."""

from typing import NamedTuple

from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_data(data_version: str, source: str) -> NamedTuple("DataVersion", md5=str, path=str, commit=str):
    """Run `diffurec data resolve`: the raw log's md5 and path in dvc.lock at the git revision
    `data_version` of $DIFFUREC_GIT_REPO (on a cluster: the settings ConfigMap's; locally the
    checkout), and the commit it names. With a `source` path: that file's md5 instead; with
    source "official": md5 "" (the download is checksum-pinned)."""
    import json
    import os
    import tempfile
    from collections import namedtuple

    from diffurec.cli import main

    out = os.path.join(tempfile.mkdtemp(prefix="resolve-"), "data_version.json")
    if main(["data", "resolve", "--rev", data_version, "--source", source, "--out", out]) != 0:
        raise RuntimeError("diffurec data resolve failed (the line above says why)")
    found = json.load(open(out))
    return namedtuple("DataVersion", ["md5", "path", "commit"])(found["md5"], found["path"], found["commit"])
