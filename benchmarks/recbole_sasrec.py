"""RecBole 1.2.1's SASRec on an atomic .inter file under a wall budget (issue 18's peer).

Runs INSIDE benchmarks/.recbole-venv (made by benchmarks/recbole_env.sh), not the project's venv:

    benchmarks/.recbole-venv/bin/python benchmarks/recbole_sasrec.py \
        --inter ../shared/data/ml-100k/ml-100k.inter --max-len 20 --seconds 480 --seed 1 --out run.jsonl

Settings (the issue's): hidden 64, 2 layers, 1 head, inner 256, dropout 0.5 (hidden and
attention), GELU, batch 512, Adam lr 1e-3, full-softmax CE, MAX_ITEM_LIST_LENGTH = --max-len,
leave-one-out by time, full ranking, validation metric NDCG@10; one thread.

Prints (and writes to --out) JSON lines, metrics in percent as the project's:
- `{"event": "data", "seconds"}`: loading and splitting the data, before training starts;
- one `{"event": "epoch", "epoch", "samples", "loss", "seconds", "wall_seconds", "NDCG@10",
  "HR@10"}` per epoch: `seconds` = training passes since training start (data loading and the
  validations excluded, as the project's curve.json train rows), `wall_seconds` = since training
  start with the validations; NDCG@10 and HR@10 are the validation's;
- `{"event": "final", "best_epoch", "best_valid", "test", "epochs", "stop_reason",
  "train_seconds", "samples_per_second"}`: test metrics of the best-validation epoch's weights.

RecBole holds the timestamps as 32-bit floats (min-max normalised for ml-100k), so near-ties
collapse and on ML-1M 20 % of the test items differ from the project's (4 of 943 on ML-100K). It is
therefore given a copy of the file whose timestamps are the exact time ranks in the project's
order (timestamp, then file row), under a name of its own (for "ml-100k" RecBole reads its bundled
copy instead), so both tools split the same sequences: `--check-split` counts the users whose test
item agrees, with the file as it is and with the ranks.

The budget (`--seconds`, wall time since training start, validations included, as the project's
--max-minutes) is checked before every batch: the epoch in progress stops when it is spent, is
validated, and training ends (the project's trainer does the same).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed

METRICS = ("NDCG@10", "HR@10")


def dataset_name(inter: Path) -> str:
    """The name RecBole is given: not the file's own, since for "ml-100k" RecBole 1.2.1 ignores
    data_path and reads the copy bundled with it (recbole/config/configurator.py)."""
    return inter.name.removesuffix(".inter") + "-input"


def write_time_ranks(inter: Path, out: Path) -> None:
    """`inter` with each timestamp replaced by its rank in (timestamp, file row) order: the
    project's order, and integers below 2**24, which float32 holds exactly."""
    header, *rows = inter.read_text().splitlines()
    column = header.split("\t").index("timestamp:float")
    cells = [row.split("\t") for row in rows]
    order = sorted(range(len(cells)), key=lambda row: (float(cells[row][column]), row))
    if len(order) >= 2**24:
        raise SystemExit(f"{inter}: {len(order)} rows; time ranks above 2**24 are not exact in float32")
    for rank, row in enumerate(order):
        cells[row][column] = str(rank)
    out.write_text("\n".join([header, *("\t".join(row) for row in cells)]) + "\n")


def last_items(inter: Path) -> dict[str, str]:
    """Each user's last item in the project's order (timestamp, then file row): the test item."""
    header, *rows = inter.read_text().splitlines()
    names = header.split("\t")
    user, item, stamp = (names.index(n) for n in ("user_id:token", "item_id:token", "timestamp:float"))
    last: dict[str, tuple[float, int, str]] = {}
    for number, row in enumerate(rows):
        cells = row.split("\t")
        key = (float(cells[stamp]), number, cells[item])
        if cells[user] not in last or key > last[cells[user]]:
            last[cells[user]] = key
    return {u: key[2] for u, key in last.items()}


def recbole_test_items(config: Config) -> dict[str, str]:
    """The item RecBole tests each user on (its full-sort test loader's targets), as tokens."""
    _, _, test_data = data_preparation(config, create_dataset(config))
    dataset = test_data._dataset
    out: dict[str, str] = {}
    for batch in test_data:
        interaction = batch[0]
        users = dataset.id2token(dataset.uid_field, interaction[dataset.uid_field].numpy())
        items = dataset.id2token(dataset.iid_field, interaction[dataset.iid_field].numpy())
        out.update(zip(users.tolist(), items.tolist(), strict=True))
    return out


def check_split(args: argparse.Namespace) -> dict[str, Any]:
    """How many of RecBole's test items are the project's, reading the file as it is and reading
    it with exact time ranks (what `run` gives RecBole)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    inter = args.inter.resolve()
    expected = last_items(inter)
    result: dict[str, Any] = {"inter": str(inter), "users_in_file": len(expected)}
    with tempfile.TemporaryDirectory(prefix="recbole-split-") as work_dir:
        for variant in ("as_is", "time_ranks"):
            work = Path(work_dir) / variant
            dataset = dataset_name(inter)
            (work / dataset).mkdir(parents=True)
            if variant == "as_is":
                (work / dataset / f"{dataset}.inter").symlink_to(inter)
            else:
                write_time_ranks(inter, work / dataset / f"{dataset}.inter")
            config = Config(
                model="SASRec",
                dataset=dataset,
                config_dict=recbole_config(dataset, work, args.max_len, args.seed, 1),
            )
            tested = recbole_test_items(config)
            same = sum(expected.get(user) == item for user, item in tested.items())
            result[variant] = {"test_users": len(tested), "same_test_item": same}
    return result


def recbole_config(dataset: str, data_path: Path, max_len: int, seed: int, epochs: int) -> dict[str, Any]:
    """The issue's settings as a RecBole config dict."""
    return {
        "data_path": str(data_path),
        "checkpoint_dir": str(data_path / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": max_len,
        "hidden_size": 64,
        "n_layers": 2,
        "n_heads": 1,
        "inner_size": 256,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "hidden_act": "gelu",
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "train_batch_size": 512,
        "learning_rate": 1e-3,
        "epochs": epochs,
        "eval_step": 1,
        "stopping_step": epochs,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["NDCG", "Hit"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "metric_decimal_place": 8,  # RecBole rounds to 4 places by default
        "eval_batch_size": 4096,
        "seed": seed,
        "reproducibility": True,
        "use_gpu": False,
        "device": "cpu",
        "worker": 0,
        "show_progress": False,
        "dataset": dataset,
    }


def percent(result: dict[str, float]) -> dict[str, float]:
    """RecBole's {'ndcg@10': 0.05, 'hit@10': 0.1} -> {'NDCG@10': 5.0, 'HR@10': 10.0}."""
    return {"NDCG@10": 100.0 * float(result["ndcg@10"]), "HR@10": 100.0 * float(result["hit@10"])}


class UntilDeadline:
    """The training batches of one epoch, ending early when the wall deadline passes; counts the
    batches and samples it yielded."""

    def __init__(self, loader: Any, deadline: float) -> None:
        self.loader, self.deadline = loader, deadline
        self.batches, self.samples, self.cut_short = 0, 0, False
        self.shuffle = getattr(loader, "shuffle", False)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for interaction in self.loader:
            if time.perf_counter() >= self.deadline:
                self.cut_short = True
                return
            self.batches += 1
            self.samples += len(interaction)
            yield interaction


def emit(record: dict[str, Any], out: TextIO | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def run(args: argparse.Namespace, out: TextIO | None) -> None:
    torch.set_num_threads(1)
    # RecBole 1.2.1 on pandas 2.2 / torch 2.13 warns about deprecated calls on every run.
    warnings.filterwarnings("ignore", category=FutureWarning)
    inter = args.inter.resolve()
    with tempfile.TemporaryDirectory(prefix="recbole-sasrec-") as work_dir:
        work = Path(work_dir)
        dataset = dataset_name(inter)
        (work / dataset).mkdir()
        write_time_ranks(
            inter, work / dataset / f"{dataset}.inter"
        )  # RecBole reads DATA_PATH/NAME/NAME.inter
        os.chdir(work)  # RecBole's Trainer writes log_tensorboard/ into the working directory
        started = time.perf_counter()
        config = Config(
            model="SASRec",
            dataset=dataset,
            config_dict=recbole_config(dataset, work, args.max_len, args.seed, args.epochs),
        )
        init_seed(config["seed"], config["reproducibility"])
        train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
        init_seed(config["seed"], config["reproducibility"])
        model = SASRec(config, train_data._dataset).to(config["device"])
        trainer = Trainer(config, model)
        emit({"event": "data", "seconds": round(time.perf_counter() - started, 3)}, out)

        training_started = time.perf_counter()
        deadline = training_started + args.seconds
        train_seconds, samples, best, best_state = 0.0, 0, None, None
        stop_reason = "epochs"
        for epoch in range(1, args.epochs + 1):
            epoch_started = time.perf_counter()
            batches = UntilDeadline(train_data, deadline)
            loss_sum = trainer._train_epoch(batches, epoch - 1)
            train_seconds += time.perf_counter() - epoch_started
            samples += batches.samples
            _, valid_result = trainer._valid_epoch(valid_data)
            valid = percent(valid_result)
            emit(
                {
                    "event": "epoch",
                    "epoch": epoch,
                    "samples": batches.samples,
                    "loss": None if loss_sum is None else float(loss_sum) / max(batches.batches, 1),
                    "seconds": round(train_seconds, 3),
                    "wall_seconds": round(time.perf_counter() - training_started, 3),
                    **{k: round(v, 4) for k, v in valid.items()},
                },
                out,
            )
            if best is None or valid["NDCG@10"] > best["valid"]["NDCG@10"]:
                best = {"epoch": epoch, "valid": valid}
                best_state = copy.deepcopy(model.state_dict())
            if batches.cut_short or time.perf_counter() >= deadline:
                stop_reason = "time budget"
                break
        assert best is not None and best_state is not None
        model.load_state_dict(best_state)
        test = percent(trainer.evaluate(test_data, load_best_model=False))
        emit(
            {
                "event": "final",
                "best_epoch": best["epoch"],
                "best_valid": {k: round(v, 4) for k, v in best["valid"].items()},
                "test": {k: round(v, 4) for k, v in test.items()},
                "epochs": epoch,
                "stop_reason": stop_reason,
                "train_seconds": round(train_seconds, 3),
                "samples_per_second": round(samples / max(train_seconds, 1e-9), 1),
                "recbole_train_samples": len(train_data._dataset),
            },
            out,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inter", type=Path, required=True, help="atomic .inter file (RecBole's format)")
    parser.add_argument("--max-len", type=int, default=20, help="MAX_ITEM_LIST_LENGTH (the window)")
    parser.add_argument("--seconds", type=float, default=None, help="wall budget of training, seconds")
    parser.add_argument(
        "--check-split",
        action="store_true",
        help="train nothing: count the users whose RecBole test item is the project's (file as is,"
        " and with exact time ranks), one JSON line",
    )
    parser.add_argument("--seed", type=int, default=1997)
    parser.add_argument("--epochs", type=int, default=1000, help="at most this many epochs")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    args = parser.parse_args()
    if not args.inter.is_file():
        sys.exit(f"--inter {args.inter}: no such file")
    if args.check_split:
        record = {"event": "split_check", "command": sys.argv, **check_split(args)}
        if args.out is not None:
            args.out.write_text(json.dumps(record, indent=2) + "\n")
        emit(record, None)
        return
    if args.seconds is None:
        parser.error("--seconds is required (unless --check-split)")
    if args.out is None:
        run(args, None)
        return
    args.out = args.out.resolve()
    with args.out.open("w") as out:
        run(args, out)


if __name__ == "__main__":
    main()
