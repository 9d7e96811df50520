"""`diffurec pipeline ...`: run the whole pipeline (DVC or kfp's local runner), compile and
submit the Kubeflow pipeline, and two small steps the DVC stages use (fetch-raw, lineage).

    pipeline run        dvc repro of dvc.yaml (validate -> ... -> promote), then where things are;
                        a local Prometheus and Pushgateway watch it (pipelines/local_monitoring.py)
    pipeline local      the same steps as a Kubeflow pipeline, with kfp's local SubprocessRunner
    pipeline compile    write the Kubeflow pipeline spec (pipelines/diffurec_pipeline.yaml)
    pipeline submit     compile and submit a run (or a recurring run) to a Kubeflow endpoint,
                        wait for it and report its state, metrics, gate decision and version
    pipeline upload     upload the pipeline to the Kubeflow UI as a version named after the commit
    pipeline fetch-raw  the raw log: copy a local file, or download the official dataset
    pipeline lineage    the lineage JSON (data md5s, git commit, params, preset) for a run

The `diffurec` command finds this group through the `diffurec.commands` entry point
(pyproject.toml), so the library never imports the pipeline package. Handlers parse and call
pipelines/runners.py or the library; see diffurec/cli/__init__.py for the handler contract.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffurec.cli import add_force, check_flags
from diffurec.files import prepare_output

if TYPE_CHECKING:
    from pipelines import local_monitoring


def register(subparsers: Any) -> None:
    """Add the `pipeline` group to the `diffurec` parser."""
    group = subparsers.add_parser(
        "pipeline",
        help="run, compile or submit the whole pipeline (DVC / Kubeflow)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="pipeline_command", metavar="PIPELINE_COMMAND", required=True)
    group.set_defaults(describe=describe_pipeline)

    run = commands.add_parser(
        "run",
        help="run the whole pipeline with `dvc repro` and print where the results are",
        description="Run dvc.yaml's stages (raw -> validate -> preprocess -> train -> evaluate -> "
        "register -> gate -> promote) with `dvc repro` in the repository, push the "
        "DVC-tracked data to the default remote, and print where the metrics, the "
        "model and the gate decision are. Stages whose inputs did not change are "
        "skipped. Parameters: params.yaml (try `dvc exp run -S train.max_minutes=0`).",
    )
    run.add_argument(
        "--repo",
        metavar="DIR",
        help="repository with dvc.yaml (default: the current folder if it has one, else this checkout)",
    )
    run.add_argument("--force", action="store_true", help="re-run every stage (dvc repro --force)")
    run.add_argument("--no-push", action="store_true", help="do not `dvc push` afterwards")
    add_monitoring_flags(run)
    run.set_defaults(func=run_pipeline)

    set_help = (
        "override a pipeline argument, e.g. --set source=FILE, or one key of a dict "
        "argument, e.g. --set train.preset=paper --set train.epochs=3 (repeatable)"
    )
    local = commands.add_parser(
        "local",
        help="run the Kubeflow pipeline locally (kfp SubprocessRunner, this venv)",
        description="Run the same pipeline as on a cluster with kfp's local SubprocessRunner: "
        "every step in this virtual environment, artifacts under --root. Arguments "
        "default to params.yaml; the data source to params.yaml's local copy when it "
        "exists, else the official download; the registry to $MLFLOW_TRACKING_URI, "
        "else runs/mlflow/mlflow.db (the one `pipeline run` uses).",
    )
    local.add_argument(
        "--root", default="runs/kfp", metavar="DIR", help="pipeline root for artifacts (default: runs/kfp)"
    )
    local.add_argument(
        "--params", default="params.yaml", metavar="YAML", help="parameters (default: params.yaml)"
    )
    local.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help=set_help)
    local.add_argument(
        "--profile",
        default="laptop",
        help="profile of parameters (params.yaml profiles:; default: laptop, the sections as they are)",
    )
    add_monitoring_flags(local)
    local.set_defaults(func=run_local)

    compile_ = commands.add_parser(
        "compile",
        help="compile the Kubeflow pipeline to a spec file",
        description="Compile pipelines/diffurec_pipeline.py (defaults from params.yaml) to the "
        "spec the Kubeflow UI uploads.",
    )
    compile_.add_argument(
        "--out", metavar="YAML", help="spec file (default: pipelines/diffurec_pipeline.yaml)"
    )
    compile_.add_argument("--params", metavar="YAML", help="parameters (default: params.yaml)")
    compile_.add_argument(
        "--profile",
        default="cluster",
        help="profile of parameters the spec's defaults come from (params.yaml profiles:; default: "
        "cluster, full quality on a GPU; laptop: the short run)",
    )
    compile_.add_argument(
        "--image",
        metavar="REF",
        help="the image every step runs, e.g. the one CI just pushed, by tag or digest "
        "(default: $DIFFUREC_IMAGE, else the release image components/__init__.py names)",
    )
    add_force(compile_, None)
    compile_.set_defaults(func=run_compile)

    submit = commands.add_parser(
        "submit",
        help="compile and submit the pipeline (or a recurring run) to Kubeflow",
        description="Compile the pipeline and start a run on a Kubeflow Pipelines endpoint "
        "(kfp.Client), or create a recurring run with --recurring CRON.",
    )
    submit.add_argument(
        "--host",
        default=os.environ.get("KFP_HOST"),
        help="Kubeflow Pipelines API endpoint (default: $KFP_HOST)",
    )
    submit.add_argument("--token", default=None, help="bearer token (default: $KFP_TOKEN; never printed)")
    submit.add_argument(
        "--namespace",
        default=os.environ.get("KFP_NAMESPACE"),
        help="Kubeflow profile namespace (default: $KFP_NAMESPACE)",
    )
    submit.add_argument("--experiment", default="diffurec", help="experiment name (default: diffurec)")
    submit.add_argument("--run-name", help="run (or recurring run) name")
    submit.add_argument(
        "--service-account",
        default="diffurec-pipeline-runner",
        help="Kubernetes service account of the run's pods (default: diffurec-pipeline-runner, from k8s/)",
    )
    submit.add_argument(
        "--recurring",
        metavar="CRON",
        help="create a recurring run on this cron schedule (6 fields, seconds "
        "first, e.g. '0 0 3 * * *') instead of one run",
    )
    submit.add_argument("--params", metavar="YAML", help="parameters (default: params.yaml)")
    submit.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help=set_help)
    submit.add_argument(
        "--timeout",
        type=float,
        default=4 * 3600.0,
        help="seconds to wait for the run to end (default: 14400, 4 h); then exit 5",
    )
    submit.add_argument(
        "--no-wait", action="store_true", help="return once the run is created (print its URL)"
    )
    submit.add_argument(
        "--poll", type=float, default=30.0, help="seconds between looks at the run (default: 30)"
    )
    submit.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow server to read the registered version, its metrics and the gate decision "
        "from, by the run id (default: $MLFLOW_TRACKING_URI; without one: the gate's outcome "
        "from the run's tasks)",
    )
    submit.add_argument(
        "--summary", metavar="MD", help="also write a markdown summary here (e.g. for $GITHUB_STEP_SUMMARY)"
    )
    add_kfp_request_timeout(submit)
    submit.set_defaults(func=run_submit)

    upload = commands.add_parser(
        "upload",
        help="upload the pipeline to the Kubeflow UI, as a version named after the commit",
        description="Compile the pipeline and upload it to a Kubeflow Pipelines endpoint: the "
        "pipeline (with its description and parameter descriptions) when missing, then a "
        "version named after this checkout's commit (first 12 hex digits). A version that "
        "exists is left as it is. Uncommitted changes are refused unless --allow-dirty "
        "(the version is then named <sha>-dirty).",
    )
    upload.add_argument(
        "--host", default=os.environ.get("KFP_HOST"), help="API endpoint (default: $KFP_HOST)"
    )
    upload.add_argument("--token", default=None, help="bearer token (default: $KFP_TOKEN; never printed)")
    upload.add_argument(
        "--namespace",
        default=os.environ.get("KFP_NAMESPACE"),
        help="Kubeflow profile namespace the pipeline belongs to (multi-user; default: $KFP_NAMESPACE)",
    )
    upload.add_argument("--version", help="version name (default: the commit, <sha> or <sha>-dirty)")
    upload.add_argument(
        "--allow-dirty", action="store_true", help="upload a checkout with uncommitted changes"
    )
    upload.add_argument("--params", metavar="YAML", help="parameters (default: params.yaml)")
    upload.add_argument(
        "--image",
        metavar="REF",
        help="the image every step runs (default: $DIFFUREC_IMAGE, else the release's)",
    )
    add_kfp_request_timeout(upload)
    upload.set_defaults(func=run_upload)

    fetch = commands.add_parser(
        "fetch-raw",
        help="the raw log for the pipeline: a local copy or the official download",
        description="Write the raw interaction log to OUT: a copy of --source when that file "
        "exists, else the official DATASET archive (checksum checked, cached in "
        "--download-dir) converted to RecBole's .inter format.",
    )
    fetch.add_argument("--dataset", required=True, help="dataset name (ml-100k, ml-1m, ...)")
    fetch.add_argument("--source", help="local copy of the raw log (used when it exists)")
    fetch.add_argument("--out", required=True, metavar="FILE", help="where to write the raw log")
    fetch.add_argument(
        "--download-dir",
        default="runs/downloads",
        metavar="DIR",
        help="where official archives are unpacked and kept (default: runs/downloads)",
    )
    fetch.add_argument("--url", help="a mirror of the official archive (default: the official URL)")
    fetch.add_argument("--sha256", help="the mirror archive's sha256 (default: the published digest)")
    add_force(fetch, None)
    fetch.set_defaults(func=run_fetch_raw)

    lineage = commands.add_parser(
        "lineage",
        help="write the lineage JSON of a run (data md5s, git commit, params, preset)",
        description="DVC-style md5 of the raw file and of the splits folder, the git commit "
        "(or $DIFFUREC_GIT_COMMIT), the parameters and the preset, as JSON.",
    )
    lineage.add_argument("--raw", metavar="FILE", help="raw interaction log")
    lineage.add_argument("--splits", metavar="DIR", help="splits folder")
    lineage.add_argument("--params", metavar="YAML", help="params file (default: none)")
    lineage.add_argument(
        "--sections", nargs="+", metavar="NAME", help="params sections to record (default: all)"
    )
    lineage.add_argument("--preset", help="the model preset")
    lineage.add_argument("--out", required=True, metavar="JSON", help="where to write it")
    add_force(lineage, "a file that is not a JSON object")
    lineage.set_defaults(func=run_lineage)


# The telemetry step of each subcommand (monitoring/README.md, "Series").
PIPELINE_STEPS = {
    "run": "pipeline",
    "local": "pipeline",
    "compile": "compile",
    "submit": "submit",
    "upload": "upload",
    "fetch-raw": "fetch_raw",
    "lineage": "lineage",
}


def describe_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """The telemetry step of a `pipeline` subcommand."""
    return {"step": PIPELINE_STEPS[args.pipeline_command]}


def add_kfp_request_timeout(parser: argparse.ArgumentParser) -> None:
    """--request-timeout of the commands that talk to a Kubeflow endpoint."""
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="seconds each call to the endpoint may take in all (default: 30)",
    )


def add_monitoring_flags(parser: argparse.ArgumentParser) -> None:
    """--no-monitoring / --keep-monitoring of the commands that run the whole pipeline."""
    parser.add_argument(
        "--no-monitoring",
        action="store_true",
        help="start no Prometheus/Pushgateway (by default: on 127.0.0.1, ports 9090/9091 or free "
        "ones, data in runs/monitoring; none when $DIFFUREC_PUSHGATEWAY or $DIFFUREC_PROMETHEUS "
        "is set: those are used)",
    )
    parser.add_argument(
        "--keep-monitoring",
        action="store_true",
        help="leave Prometheus and the Pushgateway running afterwards (make run KEEP_MONITORING=1)",
    )


def open_monitoring(
    root: Path, args: argparse.Namespace, params_file: str | None = None
) -> local_monitoring.Monitoring | None:
    """The run's Prometheus and Pushgateway (their addresses in the environment the steps
    inherit). Stopped when the program exits, after main() pushed this command's own step to
    them, or kept with --keep-monitoring; an error or Ctrl-C stops them too."""
    from pipelines import runners
    from pipelines.local_monitoring import local_monitoring

    servers = contextlib.ExitStack()
    monitoring = servers.enter_context(
        local_monitoring(root, enabled=not args.no_monitoring, keep=args.keep_monitoring)
    )
    atexit.register(servers.close)
    runners.warn_if_gate_lacks_prometheus(root, params_file)
    return monitoring


def print_monitoring(monitoring: local_monitoring.Monitoring | None, result: dict[str, Any]) -> None:
    """Where Prometheus is and the key series of the run (queried from it); how to stop kept servers."""
    from pipelines.local_monitoring import describe, key_series

    if monitoring is None:
        return
    print(f"  monitoring: {describe(monitoring)}")
    if monitoring.prometheus:
        lines = key_series(
            monitoring, result["pipeline"], result["model"], run=result["run"], since=result["ended"]
        )
        width = max(len(line.title) for line in lines)
        for line in lines:
            rows = [""]
            for item in line.said:  # items joined up to 100 characters a row
                if rows[-1] and len(rows[-1]) + len(item) > 100 - width:
                    rows.append("")
                rows[-1] += f"{',  ' if rows[-1] else ''}{item}"
            titles = [line.title] + [""] * (len(rows) - 1)
            for title, row in zip(titles, rows, strict=True):
                print(f"    {title.ljust(width)}  {row}")
            if line.promql:
                print(f"    {''.ljust(width)}  = {line.promql}")
    if monitoring.started and not monitoring.keep:
        print("  (both stop when this command ends; keep them: make run KEEP_MONITORING=1)")
    elif monitoring.servers:
        print(f"  both keep running; stop them with: {monitoring.stop_command()}")


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import runners

    root = runners.repo_root(args.repo)
    monitoring = open_monitoring(root, args)
    result = runners.run_dvc(root, force=args.force, push=not args.no_push)
    decision, promotion = result["decision"], result["promotion"]
    print(f"\npipeline finished in {result['seconds']:.0f} s ({root})")
    if result["metrics"]:
        print("  test metrics (percent): " + "  ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items()))
    if decision:
        print(f"  gate: {'PASSED' if decision.get('passed') else 'REJECTED'} - {decision.get('reason', '')}")
    if promotion:
        print(f"  promotion: {promotion.get('message', promotion)}")
    width = max(len(name) for name in runners.RUN_OUTPUTS)
    for name, path in runners.RUN_OUTPUTS.items():
        print(f"  {name.ljust(width)}  {path}")
    print_monitoring(monitoring, result)
    gauges = {"pipeline_seconds": result["seconds"]}
    if decision:
        gauges["gate_passed"] = 1.0 if decision.get("passed") else 0.0
    return {"gauges": gauges, "labels": {"runner": "dvc"}}


def run_local(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import runners

    monitoring = open_monitoring(runners.repo_root(), args, args.params)
    result = runners.run_local(args.root, args.params, args.set, args.profile)
    run_dir, passed = result["run_dir"], result["passed"]
    print(f"\nkfp local run finished in {result['seconds']:.0f} s; artifacts under {run_dir}")
    for name, sub in (
        ("metrics", "evaluate/metrics"),
        ("model", "train/model"),
        ("gate decision", "gate/decision"),
    ):
        print(f"  {name.ljust(13)}  {run_dir / sub}")
    print(f"  gate passed: {passed}; promote step {'ran' if result['promoted'] else 'skipped'}")
    print_monitoring(monitoring, result)
    gauges = {"pipeline_seconds": result["seconds"]}
    if passed is not None:
        gauges["gate_passed"] = 1.0 if passed else 0.0
    return {"gauges": gauges, "labels": {"runner": "kfp-local"}}


def run_compile(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import runners

    if args.out:
        prepare_output(args.out, kind="file", inputs=[args.params], force=args.force)
    out = runners.compile_spec(args.out, args.params, args.image, args.profile)
    from pipelines.diffurec_pipeline import PIPELINE_NAME  # after: --image is read on import

    print(f"compiled {PIPELINE_NAME} to {out}")
    return {}


def run_submit(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import runners

    from diffurec.train_settings import POSITIVE

    check_flags(args, {"timeout": POSITIVE, "poll": POSITIVE, "request_timeout": POSITIVE})
    if args.summary:
        prepare_output(args.summary, kind="file", inputs=[args.params], flag="--summary", force=True)
    token = args.token or os.environ.get("KFP_TOKEN")
    submitted = runners.submit(
        args.host,
        token,
        args.namespace,
        args.experiment,
        args.run_name,
        args.service_account,
        args.recurring,
        args.params,
        args.set,
        args.request_timeout,
    )
    print(submitted["message"])
    labels = {"runner": "kubeflow"}
    if args.recurring or args.no_wait:
        if submitted.get("url"):
            print(f"  {submitted['url']}")
        return {"labels": labels}
    print(
        f"  {submitted['url']}\nwaiting for it (at most {args.timeout:.0f} s; --no-wait does not)", flush=True
    )
    outcome, timed_out = runners.wait_and_report(
        submitted["host"],
        token,
        args.namespace,
        submitted,
        timeout=args.timeout,
        poll=args.poll,
        request_timeout=args.request_timeout,
        tracking_uri=args.tracking_uri,
    )
    print("\n".join(runners.outcome_lines(submitted, outcome, timed_out)))
    if args.summary:
        Path(args.summary).write_text(runners.summary_markdown(submitted, outcome, timed_out))
    status = runners.exit_status(outcome, timed_out)
    gauges = {} if outcome["gate"] is None else {"gate_passed": 1.0 if outcome["gate"]["passed"] else 0.0}
    return {"gauges": gauges, "labels": labels, "exit_status": status}


def run_upload(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import runners

    from diffurec.train_settings import POSITIVE

    check_flags(args, {"request_timeout": POSITIVE})
    version = args.version or runners.commit_version_name(args.allow_dirty)
    result = runners.upload(
        args.host,
        args.token or os.environ.get("KFP_TOKEN"),
        args.namespace,
        version,
        args.params,
        args.request_timeout,
        args.image,
    )
    print(result["message"])
    return {"labels": {"runner": "kubeflow"}}


def run_fetch_raw(args: argparse.Namespace) -> dict[str, Any]:
    from diffurec.data.fetch import fetch_raw

    prepare_output(args.out, kind="file", inputs=[args.source], force=args.force)
    result = fetch_raw(
        args.dataset,
        args.out,
        source=args.source,
        download_dir=args.download_dir,
        url=args.url,
        sha256=args.sha256,
    )
    print(f"raw log {result['path']} (md5 {result['md5']}) from {result['origin']}")
    return {"gauges": {"raw_bytes": float(result["bytes"])}, "labels": {"dataset": args.dataset}}


def run_lineage(args: argparse.Namespace) -> dict[str, Any]:
    from diffurec.files import read_params
    from diffurec.lineage import build_lineage, write_lineage

    inputs = [args.raw, args.splits, args.params]
    prepare_output(args.out, kind="file", inputs=inputs, force=args.force, written_by="json")
    params = read_params(args.params, args.sections) if args.params else {}
    lineage = build_lineage(raw=args.raw, splits=args.splits, params=params, preset=args.preset)
    write_lineage(args.out, lineage)
    print(
        f"lineage written to {args.out}: raw {lineage['raw_data_md5']}, splits "
        f"{lineage['splits_md5']}, commit {lineage['git_commit']}"
    )
    return {}
