"""Outputs never destroy inputs, and bad flags or files are one line (issue 12, deliverable 6).

Each case runs the real command line (diffurec.cli.main, or `python -m diffurec` in a
subprocess where a traceback or a signal matters) and checks exit status 2, one line on stderr
that names the flag or file, and that every input is byte-identical afterwards. The small
interaction logs are written here, so no dataset is needed.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from diffurec.cli import main
from diffurec.files import _HOST, atomic_folder, prepare_output

REPO = Path(__file__).resolve().parents[1]
TINY_SASREC = ["--model", "sasrec", "--set", "hidden_size=8", "--batch-size", "64", "--threads", "1"]


@pytest.fixture(autouse=True)
def no_pushgateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFUREC_PUSHGATEWAY", raising=False)


def write_log(path: Path, seed: int = 0, users: int = 40, reverse: bool = False) -> Path:
    """A sequence file (`user item item ...`) over items i0..i29, every item used; `reverse`
    gives other data over the same items (same item count, other sequences)."""
    rng = random.Random(seed)
    lines = []
    for user in range(users):
        items = [f"i{(user + k) % 30}" for k in range(3)] + [f"i{rng.randrange(30)}" for _ in range(8)]
        lines.append(f"u{user} " + " ".join(reversed(items) if reverse else items))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def snapshot(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of the file), by relative path."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The one line a failed command printed on stderr (and nothing else)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"diffurec {command}: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A splits folder (preprocess) and a popularity model folder (train) of a small log."""
    root = tmp_path_factory.mktemp("outputs")
    log = write_log(root / "log.txt")
    assert main(["-q", "preprocess", "--input", str(log), "--out", str(root / "splits")]) == 0
    assert (
        main(
            [
                "-q",
                "train",
                "--model",
                "popularity",
                "--splits",
                str(root / "splits"),
                "--out",
                str(root / "model"),
            ]
        )
        == 0
    )
    return root


# ---- --out against the inputs ----------------------------------------------------------------


def test_preprocess_out_equal_to_input_is_refused_and_the_input_untouched(tmp_path: Path) -> None:
    """Before: a traceback, and the input renamed to a hidden .X.old-PID."""
    log = write_log(tmp_path / "log.txt")
    before = log.read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "diffurec", "-q", "preprocess", "--input", str(log), "--out", str(log)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"diffurec preprocess: error: --out {log}: is the input {log}; write the output elsewhere"
    ]
    assert log.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt"]  # nothing hidden beside it


def test_out_holding_the_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "data" / "log.txt")
    before = snapshot(tmp_path / "data")
    assert main(["preprocess", "--input", str(log), "--out", str(tmp_path / "data")]) == 2
    line = error_line(capsys, "preprocess")
    assert f"--out {tmp_path / 'data'}: holds the input {log}" in line
    assert snapshot(tmp_path / "data") == before


def test_train_out_equal_to_its_splits_is_refused(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the splits folder was replaced by a model folder."""
    splits = work / "splits"
    before = snapshot(splits)
    argv = ["train", "--model", "popularity", "--splits", str(splits), "--out", str(splits)]
    assert main(argv) == 2
    assert f"--out {splits}: is the input {splits}" in error_line(capsys, "train")
    # --force never lets an output replace an input
    assert main([*argv, "--force"]) == 2
    assert f"--out {splits}: is the input {splits}" in error_line(capsys, "train")
    assert snapshot(splits) == before


def test_evaluate_out_inside_the_model_or_a_folder_is_refused(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `--out MODEL/config.json` overwrote the model's config; `--out DIR` a traceback."""
    model, splits = work / "model", work / "splits"
    before = snapshot(model), snapshot(splits)
    base = ["evaluate", "--model", str(model), "--splits", str(splits)]
    assert main([*base, "--out", str(model / "config.json")]) == 2
    assert f"--out {model / 'config.json'}: lies inside the input {model}" in error_line(capsys, "evaluate")
    folder = work / "a-folder"
    folder.mkdir(exist_ok=True)
    assert main([*base, "--out", str(folder)]) == 2
    assert f"--out {folder}: is a folder, but a file is expected" in error_line(capsys, "evaluate")
    assert list(folder.iterdir()) == []
    assert (snapshot(model), snapshot(splits)) == before


def test_json_outputs_never_replace_their_inputs(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """gate, register and promote check --out before they reach any registry."""
    metrics = work / "metrics.json"
    metrics.write_text('{"metrics": {}}\n')
    before = metrics.read_bytes()
    commands = {
        "gate": ["gate", "--candidate", str(metrics), "--thresholds", "{}", "--out", str(metrics)],
        "register": [
            "register",
            "--model",
            str(work / "model"),
            "--metrics",
            str(metrics),
            "--out",
            str(metrics),
        ],
        "promote": ["promote", "--decision", str(metrics), "--out", str(metrics)],
    }
    for command, argv in commands.items():
        assert main(argv) == 2, command
        assert f"--out {metrics}: is the input {metrics}" in error_line(capsys, command)
    argv = ["pipeline", "lineage", "--raw", str(metrics), "--out", str(metrics)]
    assert main(argv) == 2
    assert f"--out {metrics}: is the input {metrics}" in error_line(capsys, "pipeline")
    assert metrics.read_bytes() == before


def test_validate_out_over_its_splits_is_refused(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    splits = work / "splits"
    before = snapshot(splits)
    assert main(["validate", "--splits", str(splits), "--out", str(splits / "report")]) == 2
    assert f"--out {splits / 'report'}: lies inside the input {splits}" in error_line(capsys, "validate")
    assert snapshot(splits) == before


# ---- --out over something else -------------------------------------------------------------


def test_preprocess_keeps_a_folder_it_did_not_write_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `preprocess --out EXISTING_FOLDER` deleted its contents."""
    log = write_log(tmp_path / "log.txt")
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious\n")
    argv = ["-q", "preprocess", "--input", str(log), "--out", str(mine)]
    assert main(argv) == 2
    line = error_line(capsys, "preprocess")
    assert f"--out {mine}: a non-empty folder that is not a diffurec-splits folder" in line
    assert "--force" in line
    assert (mine / "notes.txt").read_text() == "precious\n"
    assert main([*argv, "--force"]) == 0
    assert (mine / "format.json").is_file() and not (mine / "notes.txt").exists()
    # a splits folder it wrote is replaced without --force (DVC and re-runs rely on it)
    assert main(argv) == 0


def test_json_output_does_not_replace_another_kind_of_file_unless_forced(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = work / "params.yaml"
    params.write_text("train:\n  epochs: 3\n")
    base = ["-q", "evaluate", "--model", str(work / "model"), "--splits", str(work / "splits")]
    assert main([*base, "--out", str(params)]) == 2
    assert f"--out {params}: an existing file that is not a JSON object" in error_line(capsys, "evaluate")
    assert params.read_text() == "train:\n  epochs: 3\n"
    assert main([*base, "--out", str(params), "--force"]) == 0
    assert params.read_text().startswith("{")


def test_a_file_where_a_folder_is_expected_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "log.txt")
    taken = tmp_path / "taken"
    taken.write_text("a file\n")
    assert main(["preprocess", "--input", str(log), "--out", str(taken)]) == 2
    assert f"--out {taken}: is a file, but a folder is expected" in error_line(capsys, "preprocess")
    assert taken.read_text() == "a file\n"


def test_read_only_output_store_is_one_line(tmp_path: Path) -> None:
    """The output's folder is a read-only bind mount, in a mount namespace of the command's own
    (unshare): the real EROFS a read-only volume gives, even to root."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount --bind -o ro {tmp_path} {tmp_path}",
        ],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only here: {probe.stderr.decode().strip()}")
    log = write_log(tmp_path / "in" / "log.txt")
    store = tmp_path / "store"
    store.mkdir()
    command = (
        f"mount --bind -o ro {store} {store} && exec {sys.executable} -m diffurec -q "
        f"preprocess --input {log} --out {store / 'splits'}"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"diffurec preprocess: error: --out {store / 'splits'}: {store} is not writable (a read-only store?)"
    ]
    assert list(store.iterdir()) == []


# ---- numbers and files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
        (["train", "--set", "hidden_size=-8"], "--set hidden_size must be at least 1, got -8"),
        (["train", "--set", "dropout=1.5"], "--set dropout must be in [0, 1), got 1.5"),
        (["train", "--lr", "0"], "--lr must be positive, got 0.0"),
        (["train", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["train", "--max-minutes", "nan"], "--max-minutes must be a finite number, got nan"),
        (["evaluate", "--batch-size", "-5"], "--batch-size must be at least 1, got -5"),
        (["evaluate", "--reverse-steps", "0"], "--reverse-steps must be at least 1, got 0"),
        (["evaluate", "--threads", "0"], "--threads must be at least 1, got 0"),
        (["recommend", "--top-k", "0"], "--top-k must be at least 1, got 0"),
        (["preprocess", "--max-len", "1000000"], "--max-len must be in [1, 4096], got 1000000"),
        (["preprocess", "--kcore", "-2"], "--kcore must be at least 0, got -2"),
    ],
)
def test_numeric_flags_out_of_range_are_one_line(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Before: `--seed -1`, `--set hidden_size=-8`, `--max-len 1000000` ended in tracebacks and
    `evaluate --batch-size -5` reported every metric as 0.0 with exit 0."""
    command, *flags = argv
    out = tmp_path / "out"
    if command == "preprocess":
        base = ["preprocess", "--input", str(work / "log.txt"), "--out", str(out)]
    elif command == "train":
        base = ["train", "--splits", str(work / "splits"), "--out", str(out)]
    else:
        base = [command, "--model", str(work / "model"), "--splits", str(work / "splits"), "--out", str(out)]
    assert main([*base, *flags]) == 2
    assert error_line(capsys, command).endswith(message)
    assert not out.exists()


def test_params_and_pipeline_settings_out_of_range_name_their_key(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  seed: -1\n")
    argv = ["train", "--splits", str(work / "splits"), "--out", str(tmp_path / "m"), "--params", str(params)]
    assert main(argv) == 2
    assert error_line(capsys, "train").endswith(f"{params}: train: seed must be in [0, 4294967295], got -1")
    local = ["pipeline", "local", "--no-monitoring", "--root", str(tmp_path / "kfp")]
    assert main([*local, "--set", 'train.hyper={"hidden_size": -8}']) == 2
    assert error_line(capsys, "pipeline").endswith(
        "--set train: hyper.hidden_size must be at least 1, got -8"
    )
    assert main([*local, "--set", "max_len=1000000"]) == 2
    assert error_line(capsys, "pipeline").endswith("--set max_len must be in [1, 4096], got 1000000")
    assert not (tmp_path / "kfp").exists() and not (tmp_path / "m").exists()


def test_truncated_format_json_and_config_json_are_one_line(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    splits, model = tmp_path / "splits", tmp_path / "model"
    shutil.copytree(work / "splits", splits)
    shutil.copytree(work / "model", model)
    header = (splits / "format.json").read_bytes()
    (splits / "format.json").write_bytes(header[: len(header) // 2])
    assert (
        main(["train", "--model", "popularity", "--splits", str(splits), "--out", str(tmp_path / "m")]) == 2
    )
    assert f"{splits / 'format.json'}, row " in error_line(capsys, "train")
    assert main(["validate", "--splits", str(splits), "--out", str(tmp_path / "report")]) == 2
    assert f"{splits / 'format.json'}, row " in error_line(capsys, "validate")
    config = (model / "config.json").read_bytes()
    (model / "config.json").write_bytes(config[: len(config) // 2])
    argv = [
        "evaluate",
        "--model",
        str(model),
        "--splits",
        str(work / "splits"),
        "--out",
        str(tmp_path / "m.json"),
    ]
    assert main(argv) == 2
    assert str(model / "config.json") in error_line(capsys, "evaluate")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.json").exists()


# ---- --resume ------------------------------------------------------------------------------


def test_resume_refuses_a_checkpoint_of_other_data_or_an_old_one(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: --resume accepted a checkpoint made on other data (same item count) and
    reported its best epoch."""
    import torch

    other = tmp_path / "other"
    log = write_log(tmp_path / "other.txt", reverse=True)
    assert main(["-q", "preprocess", "--input", str(log), "--out", str(other)]) == 0
    checkpoints = tmp_path / "ck"
    first = ["-q", "train", *TINY_SASREC, "--epochs", "1", "--eval-every", "1", "--no-progress"]
    first += [
        "--checkpoint-dir",
        str(checkpoints),
        "--splits",
        str(work / "splits"),
        "--out",
        str(tmp_path / "a"),
    ]
    assert main(first) == 0
    checkpoint = checkpoints / "checkpoint.pt"
    saved = checkpoint.read_bytes()
    again = ["train", *TINY_SASREC, "--epochs", "2", "--eval-every", "1", "--no-progress", "--resume"]
    again += ["--checkpoint-dir", str(checkpoints), "--out", str(tmp_path / "b")]
    assert main([*again, "--splits", str(other)]) == 2
    line = error_line(capsys, "train")
    assert f"{checkpoint}: written by a run with other data" in line
    assert checkpoint.read_bytes() == saved and not (tmp_path / "b").exists()

    contents = torch.load(checkpoint, weights_only=True)
    del contents["splits_md5"]
    torch.save(contents, checkpoint)
    assert main([*again, "--splits", str(work / "splits")]) == 2
    assert f"{checkpoint}: a checkpoint without its splits_md5" in error_line(capsys, "train")
    assert not (tmp_path / "b").exists()


# ---- interrupted writers -------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from diffurec.files import atomic_folder
    with atomic_folder(sys.argv[1]) as tmp:
        (tmp / "half.bin").write_bytes(b"0" * 100_000)
        print(tmp, flush=True)
        time.sleep(120)
    """
)


def _start_writer(out: Path) -> tuple[subprocess.Popen[str], Path]:
    """A process halfway through writing folder `out` (its temporary sibling exists)."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert writer.stdout is not None
    tmp = Path(writer.stdout.readline().strip())
    assert tmp.is_dir() and tmp.parent == out.parent
    return writer, tmp


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_writer_removes_its_temporary_folder(tmp_path: Path, sig: signal.Signals) -> None:
    """Kubeflow and DVC stop a step with SIGTERM; Ctrl-C is SIGINT."""
    out = tmp_path / "splits"
    writer, tmp = _start_writer(out)
    writer.send_signal(sig)
    assert writer.wait(timeout=30) != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert not tmp.exists()


def test_the_next_run_removes_what_a_killed_writer_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 leaves the temporary folder; the next preprocess into the same place removes it.
    Before: an interrupted preprocess left its (200 MB) temporary folder for good."""
    log = write_log(tmp_path / "log.txt")
    out = tmp_path / "splits"
    writer, tmp = _start_writer(out)
    writer.kill()
    writer.wait(timeout=30)
    assert tmp.is_dir()  # nothing can clean up after SIGKILL ...
    assert main(["-q", "preprocess", "--input", str(log), "--out", str(out)]) == 0
    assert not tmp.exists()  # ... but the next run does
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "splits"]


def test_a_preprocess_killed_mid_run_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    """The real command, killed with SIGKILL while its temporary folder (DuckDB's work files,
    then the splits being written) exists beside the output; the next run removes it."""
    log = tmp_path / "log.csv"
    rng = random.Random(1)
    rows = "".join(f"{rng.randrange(5000)},{rng.randrange(2000)},{10**9 + i}\n" for i in range(100_000))
    log.write_text("user_id,item_id,timestamp\n" + rows)
    out = tmp_path / "splits"
    argv = [sys.executable, "-m", "diffurec", "-q", "preprocess", "--input", str(log), "--out", str(out)]
    run = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 120
    while not (left := list(tmp_path.glob(".splits.tmp-*"))) and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert left, "preprocess ended before its temporary folder was seen"
    run.kill()
    run.wait(timeout=30)
    assert all(path.exists() for path in left) and not out.exists()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "splits"]


def test_a_live_writers_temporary_folder_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "splits"
    writer, tmp = _start_writer(out)
    try:
        prepare_output(out, kind="folder", inputs=[], force=False)
        with atomic_folder(out) as mine:
            (mine / "x").write_text("x")
        assert tmp.is_dir() and (out / "x").is_file()
    finally:
        writer.kill()
        writer.wait(timeout=30)


def test_a_folder_moved_aside_by_a_killed_writer_is_restored(tmp_path: Path) -> None:
    """Killed between moving the old folder aside and renaming the new one in: the old one
    comes back (no half state where the output is missing)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    out = tmp_path / "splits"
    with atomic_folder(out) as tmp:
        (tmp / "format.json").write_text('{"format": "diffurec-splits"}\n')
    aside = tmp_path / f".splits.old-{dead.pid}@{_HOST}"
    out.rename(aside)
    prepare_output(out, kind="folder", inputs=[], force=False, written_by="diffurec-splits")
    assert (out / "format.json").is_file() and not aside.exists()
    assert os.listdir(tmp_path) == ["splits"]
