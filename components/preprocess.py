"""Step 3: leave-one-out splits (docs/formats.md, splits folder) from the raw log."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess(raw: Input[Dataset], max_len: int, splits: Output[Dataset]):
    """Run `diffurec preprocess`; the splits Dataset is the splits folder."""
    import json
    import os

    from diffurec.cli import main
    from diffurec.lineage import fill_run_identity

    fill_run_identity(DIFFUREC_DATASET=raw.metadata.get("dataset"))
    status = main(
        [
            "preprocess",
            "--input",
            os.path.join(raw.path, raw.metadata["file"]),
            "--out",
            splits.path,
            "--max-len",
            str(max_len),
        ]
    )
    if status != 0:
        raise RuntimeError("diffurec preprocess failed (the line above says why)")
    from diffurec.lineage import dir_md5

    stats = json.load(open(os.path.join(splits.path, "stats.json")))
    splits.metadata.update({key: stats[key] for key in ("users", "items", "interactions") if key in stats})
    splits.metadata["md5"] = dir_md5(splits.path)
    if raw.metadata.get("dataset"):
        splits.metadata["dataset"] = raw.metadata["dataset"]
