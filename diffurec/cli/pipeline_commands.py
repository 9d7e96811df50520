"""`diffurec pipeline ...`: run the whole pipeline (DVC or kfp's local runner), compile and
submit the Kubeflow pipeline, and two small steps the DVC stages use (fetch-raw, lineage).

    pipeline run        dvc repro of dvc.yaml (validate -> ... -> promote), then where things are
    pipeline local      the same steps as a Kubeflow pipeline, with kfp's local SubprocessRunner
    pipeline compile    write the Kubeflow pipeline spec (pipelines/diffurec_pipeline.yaml)
    pipeline submit     compile and submit a run (or a recurring run) to a Kubeflow endpoint
    pipeline fetch-raw  the raw log: copy a local file, or download the official dataset
    pipeline lineage    the lineage JSON (data md5s, git commit, params, preset) for a run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from diffurec.errors import DiffuRecError, located

log = logging.getLogger(__name__)

# What `diffurec pipeline run` (dvc.yaml) leaves where (paths relative to the repository).
RUN_OUTPUTS = {
    "metrics": "runs/metrics.json",
    "model": "runs/model",
    "gate decision": "runs/decision.json",
    "promotion": "runs/promotion.json",
    "popularity baseline metrics": "runs/popularity_metrics.json",
    "validation reports": "runs/validate/raw/report.json, runs/validate/splits/report.json",
    "lineage": "runs/lineage.json",
}
OFFICIAL_DATASETS = ("ml-100k", "ml-1m")
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def register(subparsers) -> None:
    """Add this group's subcommands to the `diffurec` parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    group = subparsers.add_parser(
        "pipeline", help="run, compile or submit the whole pipeline (DVC / Kubeflow)",
        description=__doc__, formatter_class=formatter)
    commands = group.add_subparsers(dest="pipeline_command", metavar="PIPELINE_COMMAND",
                                    required=True)

    run = commands.add_parser(
        "run", help="run the whole pipeline with `dvc repro` and print where the results are",
        description="Run dvc.yaml's stages (raw -> validate -> preprocess -> train -> evaluate -> "
                    "register -> gate -> promote) with `dvc repro` in the repository, push the "
                    "DVC-tracked data to the default remote, and print where the metrics, the "
                    "model and the gate decision are. Stages whose inputs did not change are "
                    "skipped. Parameters: params.yaml (try `dvc exp run -S train.max_minutes=0`).")
    run.add_argument("--repo", metavar="DIR", help="repository with dvc.yaml (default: the "
                     "current folder if it has one, else this checkout)")
    run.add_argument("--force", action="store_true", help="re-run every stage (dvc repro --force)")
    run.add_argument("--no-push", action="store_true", help="do not `dvc push` afterwards")
    run.set_defaults(func=run_pipeline)

    local = commands.add_parser(
        "local", help="run the Kubeflow pipeline locally (kfp SubprocessRunner, this venv)",
        description="Run the same pipeline as on a cluster with kfp's local SubprocessRunner: "
                    "every step in this virtual environment, artifacts under --root. Arguments "
                    "default to params.yaml; the data source to params.yaml's local copy when it "
                    "exists, else the official download; the registry to $MLFLOW_TRACKING_URI, "
                    "else runs/mlflow/mlflow.db (the one `pipeline run` uses).")
    local.add_argument("--root", default="runs/kfp", metavar="DIR",
                       help="pipeline root for artifacts (default: runs/kfp)")
    local.add_argument("--params", default="params.yaml", metavar="YAML",
                       help="parameters (default: params.yaml)")
    local.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                       help="override a pipeline argument, e.g. --set preset=paper (repeatable)")
    local.set_defaults(func=run_local)

    compile_ = commands.add_parser(
        "compile", help="compile the Kubeflow pipeline to a spec file",
        description="Compile pipelines/diffurec_pipeline.py (defaults from params.yaml) to the "
                    "spec the Kubeflow UI uploads.")
    compile_.add_argument("--out", metavar="YAML",
                          help="spec file (default: pipelines/diffurec_pipeline.yaml)")
    compile_.add_argument("--params", metavar="YAML", help="parameters (default: params.yaml)")
    compile_.set_defaults(func=run_compile)

    submit = commands.add_parser(
        "submit", help="compile and submit the pipeline (or a recurring run) to Kubeflow",
        description="Compile the pipeline and start a run on a Kubeflow Pipelines endpoint "
                    "(kfp.Client), or create a recurring run with --recurring CRON.")
    submit.add_argument("--host", default=os.environ.get("KFP_HOST"),
                        help="Kubeflow Pipelines API endpoint (default: $KFP_HOST)")
    submit.add_argument("--token", default=None,
                        help="bearer token (default: $KFP_TOKEN; never printed)")
    submit.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE"),
                        help="Kubeflow profile namespace (default: $KFP_NAMESPACE)")
    submit.add_argument("--experiment", default="diffurec", help="experiment name (default: diffurec)")
    submit.add_argument("--run-name", help="run (or recurring run) name")
    submit.add_argument("--service-account", default="diffurec-pipeline-runner",
                        help="Kubernetes service account of the run's pods "
                             "(default: diffurec-pipeline-runner, from k8s/)")
    submit.add_argument("--recurring", metavar="CRON",
                        help="create a recurring run on this cron schedule (6 fields, seconds "
                             "first, e.g. '0 0 3 * * *') instead of one run")
    submit.add_argument("--params", metavar="YAML", help="parameters (default: params.yaml)")
    submit.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a pipeline argument (repeatable)")
    submit.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the endpoint to answer (default: 10)")
    submit.set_defaults(func=run_submit)

    fetch = commands.add_parser(
        "fetch-raw", help="the raw log for the pipeline: a local copy or the official download",
        description="Write the raw interaction log to OUT: a copy of --source when that file "
                    "exists, else the official DATASET archive (checksum checked, cached in "
                    "--download-dir) converted to RecBole's .inter format.")
    fetch.add_argument("--dataset", required=True, help="dataset name (ml-100k, ml-1m, ...)")
    fetch.add_argument("--source", help="local copy of the raw log (used when it exists)")
    fetch.add_argument("--out", required=True, metavar="FILE", help="where to write the raw log")
    fetch.add_argument("--download-dir", default="runs/downloads", metavar="DIR",
                       help="where official archives are unpacked and kept (default: runs/downloads)")
    fetch.add_argument("--url", help="a mirror of the official archive (default: the official URL)")
    fetch.add_argument("--sha256", help="the mirror archive's sha256 (default: the published digest)")
    fetch.set_defaults(func=run_fetch_raw)

    lineage = commands.add_parser(
        "lineage", help="write the lineage JSON of a run (data md5s, git commit, params, preset)",
        description="DVC-style md5 of the raw file and of the splits folder, the git commit "
                    "(or $DIFFUREC_GIT_COMMIT), the parameters and the preset, as JSON.")
    lineage.add_argument("--raw", metavar="FILE", help="raw interaction log")
    lineage.add_argument("--splits", metavar="DIR", help="splits folder")
    lineage.add_argument("--params", metavar="YAML", help="params file (default: none)")
    lineage.add_argument("--sections", nargs="+", metavar="NAME",
                         help="params sections to record (default: all)")
    lineage.add_argument("--preset", help="the model preset")
    lineage.add_argument("--out", required=True, metavar="JSON", help="where to write it")
    lineage.set_defaults(func=run_lineage)


# ---------------------------------------------------------------------------- helpers

def repo_root(explicit: str | None = None) -> Path:
    """The repository to run in: --repo, the current folder with a dvc.yaml, or this checkout."""
    if explicit:
        root = Path(explicit).resolve()
        if not (root / "dvc.yaml").is_file():
            raise located(root / "dvc.yaml", "not found (is --repo the project's repository?)")
        return root
    if Path("dvc.yaml").is_file():
        return Path.cwd()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "dvc.yaml").is_file():
        return checkout
    raise DiffuRecError("no dvc.yaml here or in the diffurec checkout: run from the repository")


def import_pipeline(root: Path | None = None):
    """pipelines/diffurec_pipeline.py of the checkout (components/ and pipelines/ are not part
    of the installed library: they live beside it in the repository)."""
    root = root or Path(__file__).resolve().parents[2]
    if not (root / "pipelines" / "diffurec_pipeline.py").is_file():
        raise DiffuRecError(f"{root}/pipelines/diffurec_pipeline.py not found: the pipeline "
                            "commands run from a source checkout of the project")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import importlib

    return importlib.import_module("pipelines.diffurec_pipeline")


def tool_env() -> dict:
    """The environment for DVC stages: this venv's `diffurec` first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    env.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def dvc(args: list[str], cwd: Path, check: bool = True) -> int:
    command = [sys.executable, "-m", "dvc", *args]
    log.info("$ dvc %s", " ".join(args))
    status = subprocess.run(command, cwd=cwd, env=tool_env()).returncode
    if check and status != 0:
        raise DiffuRecError(f"`dvc {' '.join(args)}` failed with status {status} in {cwd} "
                            "(the stage's own error is printed above)")
    return status


def parse_overrides(pairs: list[str], defaults: dict) -> dict:
    """NAME=VALUE strings -> typed pipeline arguments (typed like the defaults)."""
    arguments = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in defaults:
            raise DiffuRecError(f"--set {pair!r}: expected NAME=VALUE with NAME one of "
                                f"{', '.join(sorted(defaults))}")
        kind = type(defaults[name])
        try:
            arguments[name] = json.loads(value) if kind in (dict, list) else \
                (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
        except ValueError as error:
            raise DiffuRecError(f"--set {pair!r}: not a {kind.__name__} ({error})") from None
    return arguments


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------- handlers

def run_pipeline(args) -> dict:
    from diffurec.lineage import read_params

    root = repo_root(args.repo)
    # Every step's Prometheus metrics carry the dataset and this run's id.
    dataset = (read_params(root / "params.yaml").get("data") or {}).get("dataset", "")
    os.environ.setdefault("DIFFUREC_DATASET", str(dataset))
    os.environ.setdefault("DIFFUREC_RUN_ID", f"dvc-{time.strftime('%Y%m%d-%H%M%S')}")
    started = time.perf_counter()
    dvc(["repro", *(["--force"] if args.force else [])], cwd=root)
    if not args.no_push:
        if dvc(["push", "--quiet"], cwd=root, check=False) != 0:
            log.warning("dvc push to the default remote failed; the run's results are complete")
    seconds = time.perf_counter() - started
    metrics = read_json(root / RUN_OUTPUTS["metrics"]) or {}
    decision = read_json(root / RUN_OUTPUTS["gate decision"]) or {}
    promotion = read_json(root / RUN_OUTPUTS["promotion"]) or {}
    print(f"\npipeline finished in {seconds:.0f} s ({root})")
    values = metrics.get("metrics") or {}
    if values:
        print("  test metrics (percent): " + "  ".join(f"{k} {v:.2f}" for k, v in values.items()))
    if decision:
        print(f"  gate: {'PASSED' if decision.get('passed') else 'REJECTED'} - "
              f"{decision.get('reason', '')}")
    if promotion:
        print(f"  promotion: {promotion.get('message', promotion)}")
    width = max(len(name) for name in RUN_OUTPUTS)
    for name, path in RUN_OUTPUTS.items():
        print(f"  {name.ljust(width)}  {path}")
    gauges = {"pipeline_seconds": seconds}
    if decision:
        gauges["gate_passed"] = 1.0 if decision.get("passed") else 0.0
    return {"gauges": gauges, "labels": {"runner": "dvc"}}


def local_arguments(root: Path, params_file: str, overrides: list[str],
                    pipeline_module) -> tuple[dict, dict]:
    """Pipeline arguments for a local run: params.yaml, the local data copy, the local registry."""
    from diffurec.lineage import read_params

    params = read_params(root / params_file if not Path(params_file).is_absolute() else params_file)
    arguments = pipeline_module.default_arguments(params)
    source = Path(params["data"].get("source") or "")
    source = source if source.is_absolute() else root / source
    arguments["source"] = str(source.resolve()) if params["data"].get("source") and \
        source.is_file() else ""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{(root / 'runs' / 'mlflow' / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    arguments["tracking_uri"] = uri
    arguments.update(parse_overrides(overrides, arguments))
    return arguments, params


def run_local(args) -> dict:
    import warnings

    import kfp.local

    # Resource requests and the cluster image mean nothing to the local runner: say it once here.
    warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    log.info("local run: resource requests, GPU and node settings apply on a cluster only")
    root = repo_root()
    module = import_pipeline(root)
    arguments, params = local_arguments(root, args.params, args.set, module)
    pipeline_root = Path(args.root) if Path(args.root).is_absolute() else root / args.root
    pipeline_root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False),
                   pipeline_root=str(pipeline_root.resolve()))
    # The steps run in subprocesses of this interpreter: make `diffurec` and its settings theirs.
    for name, value in tool_env().items():
        if name == "PATH" or name not in os.environ:
            os.environ[name] = value
    os.environ.setdefault("DIFFUREC_DATASET", str(arguments["dataset"]))
    os.environ.setdefault("DIFFUREC_RUN_ID", f"kfp-local-{time.strftime('%Y%m%d-%H%M%S')}")
    started = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(root)  # relative paths inside steps (runs/...) resolve in the repository
    try:
        module.build_pipeline(cluster=False, params=params)(**arguments)
    except RuntimeError as error:
        raise DiffuRecError(f"kfp local run failed: {str(error).splitlines()[0]}") from None
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - started
    run_dir, passed, promoted = _local_outcome(pipeline_root, module.PIPELINE_NAME)
    print(f"\nkfp local run finished in {seconds:.0f} s; artifacts under {run_dir}")
    for name, sub in (("metrics", "evaluate/metrics"), ("model", "train/model"),
                      ("gate decision", "gate/decision")):
        print(f"  {name.ljust(13)}  {run_dir / sub}")
    print(f"  gate passed: {passed}; promote step {'ran' if promoted else 'skipped'}")
    gauges = {"pipeline_seconds": seconds}
    if passed is not None:
        gauges["gate_passed"] = 1.0 if passed else 0.0
    return {"gauges": gauges, "labels": {"runner": "kfp-local"}}


def _local_outcome(pipeline_root: Path, name: str) -> tuple[Path, bool | None, bool]:
    """(run folder, the gate's `passed`, whether promote ran) of the newest local run."""
    runs = sorted(pipeline_root.glob(f"{name}-*"), key=lambda path: path.stat().st_mtime)
    if not runs:
        return pipeline_root, None, False
    run_dir = runs[-1]
    gate_output = read_json(run_dir / "gate" / "executor_output.json") or {}
    passed = (gate_output.get("parameterValues") or {}).get("Output")
    return run_dir, passed, (run_dir / "promote").is_dir()


def run_compile(args) -> dict:
    root = repo_root()
    module = import_pipeline(root)
    params = None
    if args.params:
        from diffurec.lineage import read_params

        params = read_params(args.params)
    out = module.compile_pipeline(args.out or module.COMPILED, params=params)
    print(f"compiled {module.PIPELINE_NAME} to {out}")
    return {}


def run_submit(args) -> dict:
    if not args.host:
        raise DiffuRecError("no Kubeflow endpoint: pass --host URL or set $KFP_HOST")
    token = args.token or os.environ.get("KFP_TOKEN")
    root = repo_root()
    module = import_pipeline(root)
    params = None
    if args.params:
        from diffurec.lineage import read_params

        params = read_params(args.params)
    defaults = module.default_arguments(params or module.load_params())
    arguments = parse_overrides(args.set, defaults)
    _check_reachable(args.host, args.timeout)

    import tempfile

    import kfp

    spec = Path(tempfile.mkdtemp(prefix="diffurec-kfp-")) / "pipeline.yaml"
    module.compile_pipeline(spec, params=params)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="kfp.client")
    # kfp.Client logs a traceback per failed health check; the one line below says it instead.
    logging.disable(logging.ERROR)
    try:
        client = kfp.Client(host=args.host, existing_token=token,
                            namespace=args.namespace or "kubeflow")
        logging.disable(logging.NOTSET)
        experiment = client.create_experiment(args.experiment, namespace=args.namespace)
        name = args.run_name or f"{module.PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
        if args.recurring:
            job = client.create_recurring_run(
                experiment_id=experiment.experiment_id, job_name=name, cron_expression=args.recurring,
                pipeline_package_path=str(spec), params=arguments,
                service_account=args.service_account)
            ident = getattr(job, "recurring_run_id", None) or getattr(job, "id", "?")
            print(f"created recurring run {name} ({ident}) on {args.host}: cron {args.recurring!r}")
        else:
            run = client.create_run_from_pipeline_package(
                str(spec), arguments=arguments, run_name=name,
                experiment_name=args.experiment, namespace=args.namespace,
                service_account=args.service_account)
            print(f"submitted run {name} ({run.run_id}) to {args.host}")
    except Exception as error:  # kfp raises many types (HTTP, API, connection): one line for all
        logging.disable(logging.NOTSET)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DiffuRecError(f"Kubeflow endpoint {args.host}: {first[:300]}") from None
    return {"labels": {"runner": "kubeflow"}}


def _check_reachable(host: str, timeout: float) -> None:
    """Fail fast with one line when nothing answers at `host` (kfp.Client would retry at length)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(host if "://" in host else f"http://{host}")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise DiffuRecError(f"--host {host!r}: expected an http(s) URL such as http://localhost:8080")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        raise DiffuRecError(f"Kubeflow endpoint {host} is unreachable "
                            f"({error.strerror or error}); check --host / $KFP_HOST") from None


def run_fetch_raw(args) -> dict:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    source = Path(args.source) if args.source else None
    if source is not None and source.is_file():
        shutil.copyfile(source, tmp)
        origin = str(source)
    else:
        if args.dataset not in OFFICIAL_DATASETS:
            where = f"{args.source}: not found, and " if args.source else ""
            raise DiffuRecError(f"{where}{args.dataset!r} has no official download "
                                f"({', '.join(OFFICIAL_DATASETS)} have): give --source FILE")
        if source is not None:
            log.warning("%s not found: using the official %s download", source, args.dataset)
        origin = _official_ratings(args.dataset, Path(args.download_dir), args.url, args.sha256)
        _write_inter(origin, tmp)
    tmp.replace(out)
    from diffurec.lineage import file_md5

    md5 = file_md5(out)
    print(f"raw log {out} (md5 {md5}) from {origin}")
    return {"gauges": {"raw_bytes": float(out.stat().st_size)}, "labels": {"dataset": args.dataset}}


def _official_ratings(dataset: str, download_dir: Path, url: str | None = None,
                      sha256: str | None = None) -> str:
    """The ratings file of an official archive, downloaded (and checksum-checked) once."""
    from diffurec.data.fetch import DATASETS, fetch_dataset

    spec = DATASETS[dataset]
    ratings = download_dir / spec.folder / spec.ratings
    if ratings.is_file():
        log.info("using the earlier download %s", ratings)
        return str(ratings)
    return fetch_dataset(dataset, download_dir, url=url, sha256=sha256)["ratings"]


def _write_inter(ratings: str, out: Path) -> None:
    """Rewrite an official ratings file (u.data, ratings.dat) in RecBole's .inter format, row for
    row, so the pipeline reads one format whatever the source."""
    from diffurec.data.readers import read_interactions

    frame = read_interactions(ratings)
    with open(out, "w") as handle:
        handle.write(INTER_HEADER)
        for user, item, rating, timestamp in zip(frame["user"], frame["item"], frame["rating"],
                                                 frame["timestamp"]):
            # Whole seconds stay whole: `:g` would round 881250949 to 8.8125e+08.
            stamp = int(timestamp) if float(timestamp).is_integer() else repr(float(timestamp))
            handle.write(f"{user}\t{item}\t{rating:g}\t{stamp}\n")


def run_lineage(args) -> dict:
    from diffurec.lineage import build_lineage, read_params, write_json

    params = read_params(args.params, args.sections) if args.params else {}
    lineage = build_lineage(raw=args.raw, splits=args.splits, params=params, preset=args.preset)
    write_json(args.out, lineage)
    print(f"lineage written to {args.out}: raw {lineage['raw_data_md5']}, splits "
          f"{lineage['splits_md5']}, commit {lineage['git_commit']}")
    return {}

