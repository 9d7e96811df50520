"""Steps 2 and 4: Great Expectations suites on the raw log and on the processed splits."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(data: Input[Dataset], kind: str, report: Output[HTML], summary: Output[Metrics]):
    """Run `diffurec validate` on a raw Dataset (kind "raw") or a splits Dataset (kind "splits").

    A failed critical expectation fails the step, so nothing downstream runs."""
    import html
    import json
    import os
    import tempfile

    from diffurec.cli import main
    from diffurec.lineage import fill_run_identity

    # The dataset label of the step's Prometheus series (fetch and preprocess record it); not
    # an input parameter, so that it stays out of the cache key.
    fill_run_identity(DIFFUREC_DATASET=data.metadata.get("dataset"))
    out = tempfile.mkdtemp(prefix="validate-")
    if kind == "raw":
        command = ["validate", "--input", os.path.join(data.path, data.metadata["file"])]
    elif kind == "splits":
        command = ["validate", "--splits", data.path]
    else:
        raise ValueError(f"kind must be 'raw' or 'splits', got {kind!r}")
    status = main(command + ["--out", out])
    result = (
        json.load(open(os.path.join(out, "report.json")))
        if os.path.isfile(os.path.join(out, "report.json"))
        else None
    )
    if result is not None:
        # One self-contained page for the Kubeflow UI (Data Docs spread over many files).
        rows = "".join(
            f"<tr><td>{html.escape(str(r.get('table', '')))}</td>"
            f"<td>{html.escape(str(r.get('expectation', '')))}</td>"
            f"<td>{html.escape(str((r.get('kwargs') or {}).get('column') or ''))}</td>"
            f"<td>{html.escape(str(r.get('severity', '')))}</td>"
            f"<td>{'ok' if r.get('success') else 'FAILED'}</td></tr>"
            for r in result["results"]
        )
        with open(report.path, "w") as page:
            page.write(
                f"<html><body><h2>{html.escape(result['suite'])}: "
                f"{'passed' if result['success'] else 'FAILED'}</h2>"
                f"<p>{result['expectations_evaluated']}/{result['expectations_expected']} "
                f"expectations evaluated, {result['failed']} failed, "
                f"{result['warnings']} warning(s)</p><table border=1><tr><th>table</th>"
                f"<th>expectation</th><th>column</th><th>severity</th><th>result</th>"
                f"</tr>{rows}</table></body></html>"
            )
        # The Metrics artifact's file is the report JSON: an output without a file is never
        # taken from kfp's local cache (it treats the missing file as a lost artifact).
        with open(summary.path, "w") as out_file:
            json.dump(result, out_file)
        summary.log_metric("expectations_evaluated", result["expectations_evaluated"])
        summary.log_metric("expectations_failed", result["failed"])
        summary.log_metric("expectations_warnings", result["warnings"])
    if status != 0:
        raise RuntimeError(f"diffurec validate failed on the {kind} data (the line above says why)")
