"""Register -> gate -> promote through the command line on a real MLflow store and real models.

The three decisions of issue 5: a first model promoted on the floors, a better one replaces it,
a worse one is refused with a readable explanation. Then: stale and forged decisions, override,
two racing promotions (two processes), and re-evaluating the champion on new data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffurec import registry
from diffurec.cli import main
from diffurec.errors import DiffuRecError
from promotion_models import fit_on_first, fresh_tracking_uri, train_with_cli

REPO = Path(__file__).resolve().parents[1]
GATE = {
    "min": {"HR@10": 3.0, "NDCG@10": 1.5},
    # The gate requires a margin over popularity (issue 12); these candidates are popularity
    # models, gated with their own metrics as the baseline: a margin of 0 always holds.
    "min_margin_over_popularity": {"NDCG@10": 0.0},
    "max_drop_vs_champion": {"NDCG@10": {"relative": 0.02}},
}


@pytest.fixture(scope="module")
def candidates(ml100k_splits, tmp_path_factory):
    """Real popularity models on ML-100K, from worst to best: 2k samples, 20k samples, all."""
    folder = tmp_path_factory.mktemp("candidates")
    return {
        "worse": fit_on_first(ml100k_splits, 2_000, folder / "worse"),
        "first": fit_on_first(ml100k_splits, 20_000, folder / "first"),
        "better": train_with_cli(ml100k_splits.path, folder / "better"),
    }


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty registry (the env var, as the pipeline sets it) and the gate's params.yaml."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_tracking_uri(tmp_path))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"gate": GATE}))
    return tmp_path


def register(candidate) -> str:
    model_dir, metrics = candidate
    return registry.register_model_folder(model_dir, metrics, "rec")["version"]


def gate(candidate, version: str, store: Path) -> dict:
    out = store / f"decision-v{version}.json"
    assert (
        main(
            [
                "gate",
                "--candidate",
                str(candidate[1]),
                "--baseline",
                str(candidate[1]),
                "--params",
                str(store / "params.yaml"),
                "--model-name",
                "rec",
                "--version",
                version,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return json.loads(out.read_text())


def promote(version: str, store: Path, *extra: str) -> int:
    return main(
        [
            "promote",
            "--model-name",
            "rec",
            "--version",
            version,
            "--decision",
            str(store / f"decision-v{version}.json"),
            *extra,
        ]
    )


def alias(name: str) -> str | None:
    found = registry.get_version("rec", alias=name)
    return found["version"] if found else None


def test_first_promoted_on_floors_better_replaces_worse_refused(candidates, store, capsys):
    v1 = register(candidates["first"])
    first = gate(candidates["first"], v1, store)
    assert first["passed"] is True and first["champion"] is None
    assert [check["name"] for check in first["checks"]] == [
        "floor HR@10",
        "floor NDCG@10",
        "margin over popularity NDCG@10",
    ]
    assert promote(v1, store) == 0
    assert (alias("champion"), alias("previous")) == ("1", None)
    printed = capsys.readouterr().out
    assert (
        "no champion yet: floors decide" in printed
        and "promoted rec v1 to champion (first champion)" in printed
    )

    v2 = register(candidates["better"])
    better = gate(candidates["better"], v2, store)
    assert better["passed"] is True and better["champion"]["version"] == "1"
    change = better["checks"][-1]
    assert change["name"] == "change vs champion v1 NDCG@10 (relative)" and change["value"] > 0
    assert promote(v2, store) == 0
    assert (alias("champion"), alias("previous"), alias("challenger")) == ("2", "1", None)
    assert "promoted rec v2 to champion (previous: v1)" in capsys.readouterr().out

    v3 = register(candidates["worse"])
    worse = gate(candidates["worse"], v3, store)
    assert worse["passed"] is False
    assert worse["failed"] == ["floor HR@10", "floor NDCG@10", "change vs champion v2 NDCG@10 (relative)"]
    printed = capsys.readouterr().out
    assert "decision: REJECTED - rejected: 3 of 4 checks failed" in printed
    assert registry.get_version("rec", version="3")["tags"]["gate_passed"] == "false"

    assert promote(v3, store) == 2
    assert "refusing to promote rec v3: the gate rejected it" in capsys.readouterr().err
    assert (alias("champion"), alias("previous"), alias("challenger")) == ("2", "1", "3")

    # A pipeline that always runs the promote step: says why, exits 0, moves nothing.
    assert promote(v3, store, "--if-passed", "--out", str(store / "promotion.json")) == 0
    assert capsys.readouterr().out.startswith("not promoted: gate rejected rec v3")
    assert json.loads((store / "promotion.json").read_text())["promoted"] is False
    assert alias("champion") == "2"


def test_stale_and_unrecorded_decisions_are_refused(candidates, store, capsys):
    v1 = register(candidates["first"])
    gate(candidates["first"], v1, store)
    assert promote(v1, store) == 0
    v2, v3 = register(candidates["better"]), register(candidates["better"])
    gate(candidates["better"], v2, store)
    gate(candidates["better"], v3, store)
    assert promote(v2, store) == 0
    capsys.readouterr()
    # v3's decision compared against v1, but the champion moved to v2 since.
    assert promote(v3, store) == 2
    assert "the champion is now v2, but the gate compared against v1" in capsys.readouterr().err

    # A passing decision that the registry does not hold (a gate interrupted before it tagged
    # the version, or a hand-edited file) promotes nothing.
    forged = json.loads((store / f"decision-v{v3}.json").read_text())
    forged.update(decision_id="0" * 32, champion={"version": "2"})
    (store / f"decision-v{v3}.json").write_text(json.dumps(forged))
    assert promote(v3, store) == 2
    assert "not the one recorded" in capsys.readouterr().err
    assert alias("champion") == "2"


def test_override_needs_a_reason_and_is_recorded(candidates, store, capsys):
    v1 = register(candidates["better"])
    gate(candidates["better"], v1, store)
    assert promote(v1, store) == 0
    v2 = register(candidates["worse"])
    assert gate(candidates["worse"], v2, store)["passed"] is False
    assert promote(v2, store, "--override") == 2
    assert "--override needs --reason" in capsys.readouterr().err
    assert promote(v2, store, "--override", "--reason", "rollback drill INC-42") == 0
    assert (alias("champion"), alias("previous")) == ("2", "1")
    tags = registry.get_version("rec", version="2")["tags"]
    assert tags["promotion_override"] == "true" and tags["promotion_reason"] == "rollback drill INC-42"
    assert tags["promoted_from"] == "1"


def test_two_racing_promotions_end_with_one_consistent_champion(candidates, store):
    v1 = register(candidates["first"])
    gate(candidates["first"], v1, store)
    assert promote(v1, store) == 0
    contenders = [register(candidates["better"]) for _ in range(2)]
    for version in contenders:
        assert gate(candidates["better"], version, store)["passed"] is True

    # Each process runs the library's promote (the CLI's handler calls just this) and prints
    # the one-line refusal the CLI would print; importing only mlflow keeps the start short.
    script = (
        "import sys\n"
        "from diffurec.errors import DiffuRecError\n"
        "from diffurec.promote import promote\n"
        "try:\n"
        "    print(promote('rec', sys.argv[1], sys.argv[2])['message'])\n"
        "except DiffuRecError as error:\n"
        "    print(error, file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, version, str(store / f"decision-v{version}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version in contenders
    ]
    results = [(process.wait(timeout=120), *process.communicate()) for process in processes]
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [0, 2], results
    winner = contenders[[status for status, _, _ in results].index(0)]
    loser_err = next(err for status, _, err in results if status == 2)
    assert f"the champion is now v{winner}, but the gate compared against v1" in loser_err
    assert (alias("champion"), alias("previous")) == (winner, "1")
    assert registry.get_version("rec", version=winner)["tags"]["promoted_from"] == "1"


def test_champion_is_re_evaluated_on_the_candidates_new_data(
    candidates, store, shared_data, tmp_path, ml100k_splits, capsys
):
    """A candidate evaluated on other splits (max_len 20): the champion is scored on them first."""
    from diffurec.data.preprocess import preprocess_file
    from diffurec.data.splits import load_splits
    from diffurec.evaluate import evaluate
    from diffurec.model_folder import load_model_folder

    v1 = register(candidates["first"])
    gate(candidates["first"], v1, store)
    assert promote(v1, store) == 0
    new_splits = tmp_path / "splits-len20"
    preprocess_file(shared_data / "ml-100k" / "ml-100k.inter", new_splits, max_len=20)
    candidate = fit_on_first(load_splits(new_splits), 200_000, tmp_path / "new")
    v2 = register(candidate)
    out = store / "decision-v2.json"
    args = [
        "gate",
        "--candidate",
        str(candidate[1]),
        "--baseline",
        str(candidate[1]),
        "--params",
        str(store / "params.yaml"),
        "--model-name",
        "rec",
        "--version",
        v2,
        "--out",
        str(out),
    ]
    assert main(args) == 2
    assert "pass --splits DIR" in capsys.readouterr().err and not out.exists()

    assert main(args + ["--splits", str(new_splits)]) == 0
    decision = json.loads(out.read_text())
    champion = decision["champion"]
    assert champion["version"] == "1" and champion["re_evaluated"] is True
    expected = evaluate(
        load_model_folder(candidates["first"][0]), load_splits(new_splits), split="test", progress=False
    )["metrics"]
    assert champion["metrics"] == expected
    assert champion["registered_metrics"] == json.loads(candidates["first"][1].read_text())["metrics"]
    assert "re-evaluated on the candidate's split" in capsys.readouterr().out

    # The wrong splits folder (the champion's own, max_len 50) is caught by its data version.
    assert main(args + ["--splits", str(ml100k_splits.path)]) == 2
    assert "not the candidate's splits" in capsys.readouterr().err


def test_the_gate_stamps_the_decision_and_records_it_on_the_version(candidates, store):
    v1 = register(candidates["first"])
    decision = gate(candidates["first"], v1, store)
    assert (decision["name"], decision["version"]) == ("rec", v1)
    assert decision["params"] == str(store / "params.yaml")
    tags = registry.get_version("rec", version=v1)["tags"]
    assert tags["gate_decision_id"] == decision["decision_id"]
    assert tags["gate_decided_at"] == decision["decided_at"]
    assert tags["gate_passed"] == "true" and tags["gate_reason"] == decision["reason"]

    # The metrics of another model are refused for this version, and nothing is written.
    out = store / "wrong.json"
    assert (
        main(
            [
                "gate",
                "--candidate",
                str(candidates["worse"][1]),
                "--baseline",
                str(candidates["worse"][1]),
                "--params",
                str(store / "params.yaml"),
                "--model-name",
                "rec",
                "--version",
                v1,
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert not out.exists()
    assert registry.get_version("rec", version=v1)["tags"]["gate_decision_id"] == decision["decision_id"]


def test_if_passed_returns_a_rejection_without_touching_the_registry(tmp_path):
    from diffurec import promote as promotion

    rejected = tmp_path / "decision.json"
    rejected.write_text(
        json.dumps(
            {"passed": False, "name": "rec", "version": "4", "reason": "rejected: 1 of 1 checks failed"}
        )
    )
    # Nothing answers at this registry: any registry call would fail the promotion.
    unreachable = "http://127.0.0.1:9"
    result = promotion.promote("rec", None, rejected, unreachable, if_passed=True)
    assert result == {
        "name": "rec",
        "version": "4",
        "promoted": False,
        "message": "not promoted: gate rejected rec v4 (rejected: 1 of 1 checks failed)",
    }
    assert promotion.promotion_gauges(result, override=False) == {"promoted": 0.0}
    with pytest.raises(DiffuRecError, match="--if-passed needs --decision"):
        promotion.promote("rec", "4", None, unreachable, if_passed=True)
    with pytest.raises(DiffuRecError, match="which version"):
        promotion.promote("rec", None, None, unreachable)
    promoted = {"promoted": True, "champion": "5", "version": "5"}
    assert promotion.promotion_gauges(promoted, override=True) == {
        "promoted": 1.0,
        "champion_version": 5.0,
        "promotion_override": 1.0,
    }


def test_same_metrics_compares_the_keys_both_hold():
    from diffurec.champion import same_metrics

    registered = {"HR@10": 5.0, "NDCG@10": 2.0}
    assert same_metrics(registered, {"HR@10": 5.0 + 1e-12, "NDCG@10": 2.0, "HR@5": 1.0})
    assert not same_metrics(registered, {"HR@10": 5.0, "NDCG@10": 2.001})
