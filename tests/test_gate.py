"""The promotion gate: every rule on metrics JSON, thresholds from params.yaml, the command line.

The decision logic needs no model; the command-line tests gate real popularity metrics on
ML-100K (the evaluator's output), without a registry (floors and margins only).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffurec import gate
from diffurec.cli import main
from diffurec.errors import DiffuRecError

THRESHOLDS = {
    "min": {"HR@10": 3.0, "NDCG@10": 1.5},
    "min_margin_over_popularity": {"NDCG@10": 0.2},
    "max_drop_vs_champion": {"NDCG@10": {"relative": 0.02}, "HR@10": {"absolute": 0.5}},
}


def metrics_json(hr10: float, ndcg10: float, split="test", users=943, splits_md5="abc.dir") -> dict:
    values = {
        "HR@5": hr10 / 2,
        "HR@10": hr10,
        "HR@20": hr10 * 1.5,
        "NDCG@5": ndcg10 / 2,
        "NDCG@10": ndcg10,
        "NDCG@20": ndcg10 * 1.2,
    }
    return {
        "metrics": values,
        "unit": "percent",
        "split": split,
        "users": users,
        "model": {"name": "diffurec", "preset": "fast"},
        "lineage": {"splits_md5": splits_md5},
    }


def champion(hr10: float, ndcg10: float, version="1") -> dict:
    return {
        "version": version,
        "metrics": metrics_json(hr10, ndcg10)["metrics"],
        "split": "test",
        "users": 943,
        "data_version": "abc.dir",
        "re_evaluated": False,
    }


def by_name(decision: dict) -> dict:
    return {check["name"]: check for check in decision["checks"]}


def test_no_champion_floors_decide():
    baseline = metrics_json(5.0, 2.0)
    decision = gate.decide(metrics_json(6.0, 2.5), THRESHOLDS, baseline=baseline)
    assert decision["passed"] is True
    assert decision["champion"] is None
    names = [check["name"] for check in decision["checks"]]
    assert names == ["floor HR@10", "floor NDCG@10", "margin over popularity NDCG@10"]
    assert "floors only" in decision["reason"]

    failing = gate.decide(metrics_json(2.9, 2.5), THRESHOLDS, baseline=baseline)
    assert failing["passed"] is False
    assert failing["failed"] == ["floor HR@10"]
    check = by_name(failing)["floor HR@10"]
    assert (check["value"], check["threshold"], check["passed"]) == (2.9, 3.0, False)


def test_a_value_exactly_at_the_threshold_passes():
    decision = gate.decide(metrics_json(3.0, 1.5), {"min": {"HR@10": 3.0, "NDCG@10": 1.5}})
    assert decision["passed"] is True


def test_margin_over_popularity_is_a_difference_in_points():
    decision = gate.decide(metrics_json(6.0, 2.1), THRESHOLDS, baseline=metrics_json(5.0, 2.0))
    check = by_name(decision)["margin over popularity NDCG@10"]
    assert check["value"] == pytest.approx(0.1)
    assert check["threshold"] == 0.2 and check["reference"] == 2.0
    assert decision["passed"] is False and decision["failed"] == ["margin over popularity NDCG@10"]


def test_margin_needs_a_baseline_on_the_same_users():
    with pytest.raises(DiffuRecError, match="--baseline"):
        gate.decide(metrics_json(6.0, 2.5), THRESHOLDS)
    with pytest.raises(DiffuRecError, match="other users"):
        gate.decide(metrics_json(6.0, 2.5), THRESHOLDS, baseline=metrics_json(5.0, 2.0, split="valid"))
    with pytest.raises(DiffuRecError, match="other users"):
        gate.decide(
            metrics_json(6.0, 2.5), THRESHOLDS, baseline=metrics_json(5.0, 2.0, splits_md5="other.dir")
        )


def test_relative_and_absolute_change_against_the_champion():
    baseline = metrics_json(5.0, 2.0)
    # NDCG@10 -1.5 % (allowed 2 %), HR@10 -0.4 points (allowed 0.5): passes.
    kept = gate.decide(metrics_json(7.6, 2.955), THRESHOLDS, baseline=baseline, champion=champion(8.0, 3.0))
    assert kept["passed"] is True, kept["reason"]
    relative = by_name(kept)["change vs champion v1 NDCG@10 (relative)"]
    assert relative["value"] == pytest.approx(-0.015) and relative["threshold"] == -0.02
    absolute = by_name(kept)["change vs champion v1 HR@10 (absolute)"]
    assert absolute["value"] == pytest.approx(-0.4) and absolute["threshold"] == -0.5
    # NDCG@10 -3 %: rejected even though every floor passes.
    worse = gate.decide(metrics_json(8.0, 2.91), THRESHOLDS, baseline=baseline, champion=champion(8.0, 3.0))
    assert worse["passed"] is False
    assert worse["failed"] == ["change vs champion v1 NDCG@10 (relative)"]
    assert "against champion v1" in worse["reason"]


def test_a_negative_allowed_drop_demands_an_improvement():
    rule = {"max_drop_vs_champion": {"NDCG@10": {"relative": -0.05}}}
    assert gate.decide(metrics_json(8, 3.1), rule, champion=champion(8, 3.0))["passed"] is False
    assert gate.decide(metrics_json(8, 3.2), rule, champion=champion(8, 3.0))["passed"] is True


def test_zero_champion_never_divides_by_zero():
    decision = gate.decide(
        metrics_json(1.0, 0.0),
        THRESHOLDS | {"min": {}, "min_margin_over_popularity": {}},
        champion=champion(0.0, 0.0),
    )
    assert decision["passed"] is True
    json.dumps(decision, allow_nan=False)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"min": {"HR@11": 1.0}}, "unknown metric"),
        ({"min": {"HR@10": "high"}}, "finite number"),
        ({"max_drop_vs_champion": {"NDCG@10": 0.02}}, "relative"),
        ({"max_drop_vs_champion": {"NDCG@10": {"percent": 2}}}, "relative"),
        ({"floors": {"HR@10": 1.0}}, "unknown key 'floors'"),
    ],
)
def test_bad_thresholds_name_the_key(tmp_path, section, message):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"gate": section}))
    with pytest.raises(DiffuRecError, match=message) as error:
        gate.load_thresholds(params)
    assert str(params) in str(error.value)


def test_params_file_errors(tmp_path):
    params = tmp_path / "params.yaml"
    with pytest.raises(DiffuRecError, match="not found"):
        gate.load_thresholds(params)
    params.write_text("train:\n  epochs: 3\n")
    with pytest.raises(DiffuRecError, match="no `gate:` section"):
        gate.load_thresholds(params)
    params.write_text("gate:\n  min: {HR@10: 3.0\n  other: 1\n")
    with pytest.raises(DiffuRecError, match=r"row \d+: not valid YAML"):
        gate.load_thresholds(params)


def test_the_repository_params_yaml_has_valid_gate_thresholds(repo_root):
    thresholds = gate.load_thresholds(repo_root / "params.yaml")
    assert thresholds["min"], "params.yaml should set absolute floors"


def test_metrics_file_errors(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"metrics": {"HR@10": 1.0}}')
    with pytest.raises(DiffuRecError, match="has no 'HR@5'"):
        gate.read_metrics(path)
    path.write_text('{"metrics": ')
    with pytest.raises(DiffuRecError, match=r"row 1, column \d+: not valid JSON"):
        gate.read_metrics(path)


# --- the command line on real metrics ------------------------------------------------------------


@pytest.fixture(scope="module")
def popularity_metrics(ml100k_splits, tmp_path_factory):
    """Test metrics of popularity fitted on all / on the first 2,000 training samples."""
    from diffurec.evaluate import evaluate
    from diffurec.lineage import data_md5
    from diffurec.models import build_model

    folder = tmp_path_factory.mktemp("gate-metrics")
    paths = {}
    for label, samples in (("full", None), ("tiny", 2000)):
        model = build_model("popularity", ml100k_splits.num_items, ml100k_splits.max_len)
        model.fit(np.asarray(ml100k_splits.train_targets)[:samples])
        result = evaluate(model, ml100k_splits, split="test", progress=False)
        result["lineage"] = {"splits_md5": data_md5(ml100k_splits.path)}
        paths[label] = folder / f"{label}.json"
        paths[label].write_text(json.dumps(result))
    return paths


def write_params(tmp_path, thresholds) -> str:
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"gate": thresholds}))
    return str(path)


def test_cli_gate_writes_the_decision_and_prints_the_table(popularity_metrics, tmp_path, capsys):
    params = write_params(
        tmp_path, {"min": {"HR@10": 3.0, "NDCG@10": 1.5}, "min_margin_over_popularity": {"NDCG@10": 0.0}}
    )
    out = tmp_path / "decision.json"
    status = main(
        [
            "gate",
            "--candidate",
            str(popularity_metrics["full"]),
            "--baseline",
            str(popularity_metrics["full"]),
            "--params",
            params,
            "--out",
            str(out),
        ]
    )
    assert status == 0
    decision = json.loads(out.read_text())
    assert decision["passed"] is True and decision["version"] is None
    assert {"name", "value", "threshold", "passed"} <= set(decision["checks"][0])
    printed = capsys.readouterr().out
    assert "floor HR@10" in printed and "decision: PASSED" in printed

    # The 2,000-sample popularity misses both floors and the margin: rejected, still exit 0.
    status = main(
        [
            "gate",
            "--candidate",
            str(popularity_metrics["tiny"]),
            "--baseline",
            str(popularity_metrics["full"]),
            "--params",
            params,
            "--out",
            str(out),
        ]
    )
    assert status == 0
    decision = json.loads(out.read_text())
    assert decision["passed"] is False
    assert decision["failed"] == ["floor HR@10", "floor NDCG@10", "margin over popularity NDCG@10"]
    printed = capsys.readouterr().out
    assert "decision: REJECTED" in printed and printed.count("FAIL") == 3


def test_cli_fail_on_reject_exits_2_after_writing(popularity_metrics, tmp_path, capsys):
    params = write_params(tmp_path, {"min": {"HR@10": 3.0}})
    out = tmp_path / "decision.json"
    status = main(
        [
            "gate",
            "--candidate",
            str(popularity_metrics["tiny"]),
            "--params",
            params,
            "--out",
            str(out),
            "--fail-on-reject",
        ]
    )
    assert status == 2
    assert json.loads(out.read_text())["passed"] is False
    assert "gate rejected" in capsys.readouterr().err


def test_cli_bad_input_is_one_line_and_writes_nothing(popularity_metrics, tmp_path, capsys):
    params = write_params(tmp_path, {"min": {"HR@10": 3.0}})
    broken = tmp_path / "broken.json"
    broken.write_text('{"metrics": {"HR@10": 1}}')
    out = tmp_path / "decision.json"
    status = main(["gate", "--candidate", str(broken), "--params", params, "--out", str(out)])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(broken) in err
    assert not out.exists()


# --- thresholds as JSON, decision stamping, tags and gauges ------------------------------------


def test_the_metric_names_are_docs_formats_six():
    from diffurec.metrics import KS, METRIC_KEYS

    assert KS == (5, 10, 20)
    assert METRIC_KEYS == ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")


def test_thresholds_json_is_checked_like_params_yaml(tmp_path):
    assert gate.parse_thresholds(json.dumps(THRESHOLDS)) == gate.load_thresholds(
        write_params(tmp_path, THRESHOLDS)
    )
    with pytest.raises(DiffuRecError, match=r"^--thresholds: not valid JSON"):
        gate.parse_thresholds("{min: 3}")
    with pytest.raises(DiffuRecError, match=r"^--thresholds\.min\.HR@11: unknown metric"):
        gate.parse_thresholds('{"min": {"HR@11": 1.0}}')
    with pytest.raises(DiffuRecError, match=r"^--thresholds: expected a mapping"):
        gate.parse_thresholds("[1, 2]")


def test_cli_gate_takes_thresholds_as_json_instead_of_a_params_file(popularity_metrics, tmp_path):
    thresholds = {"min": {"HR@10": 3.0, "NDCG@10": 1.5}, "min_margin_over_popularity": {"NDCG@10": 0.0}}
    common = [
        "gate",
        "--candidate",
        str(popularity_metrics["tiny"]),
        "--baseline",
        str(popularity_metrics["full"]),
    ]
    params = write_params(tmp_path, thresholds)
    assert main(common + ["--params", params, "--out", str(tmp_path / "from-yaml.json")]) == 0
    assert (
        main(common + ["--thresholds", json.dumps(thresholds), "--out", str(tmp_path / "from-json.json")])
        == 0
    )
    from_yaml = json.loads((tmp_path / "from-yaml.json").read_text())
    from_json = json.loads((tmp_path / "from-json.json").read_text())
    assert from_yaml["params"] == params and from_json["params"] is None
    for key in ("passed", "checks", "failed", "reason", "thresholds"):
        assert from_json[key] == from_yaml[key]
    assert from_json["failed"] == ["floor HR@10", "floor NDCG@10", "margin over popularity NDCG@10"]
    with pytest.raises(SystemExit):  # one source of thresholds only
        main(common + ["--params", params, "--thresholds", "{}", "--out", str(tmp_path / "x.json")])


def test_stamp_decision_puts_passed_first_and_records_version_id_time_params():
    from datetime import UTC, datetime, timedelta

    decided = gate.decide(metrics_json(6.0, 2.5), THRESHOLDS, baseline=metrics_json(5.0, 2.0))
    before = datetime.now(UTC).replace(microsecond=0)
    stamped = gate.stamp_decision(decided, "rec", "3", "params.yaml")
    assert list(stamped)[:6] == ["passed", "name", "version", "decision_id", "decided_at", "params"]
    assert (stamped["passed"], stamped["name"], stamped["version"], stamped["params"]) == (
        True,
        "rec",
        "3",
        "params.yaml",
    )
    assert len(stamped["decision_id"]) == 32 and int(stamped["decision_id"], 16) >= 0
    decided_at = datetime.fromisoformat(stamped["decided_at"])
    assert decided_at.utcoffset() == timedelta(0)
    assert before <= decided_at <= datetime.now(UTC)
    for key in ("checks", "failed", "reason", "candidate", "baseline", "champion", "thresholds"):
        assert stamped[key] == decided[key]
    assert gate.stamp_decision(decided, None, None, None)["decision_id"] != stamped["decision_id"]


def test_decision_tags_are_strings_promote_can_check():
    decided = gate.decide(metrics_json(2.9, 2.5), THRESHOLDS, baseline=metrics_json(5.0, 2.0))
    stamped = gate.stamp_decision(decided, "rec", "3", None)
    tags = gate.decision_tags(stamped)
    assert tags["gate_passed"] == "false"
    assert tags["gate_decision_id"] == stamped["decision_id"]
    assert tags["gate_decided_at"] == stamped["decided_at"]
    assert tags["gate_reason"].startswith("rejected: 1 of 3 checks failed (floor HR@10)")
    checks = json.loads(tags["gate_checks"])
    assert checks[0] == {"name": "floor HR@10", "value": 2.9, "threshold": 3.0, "passed": False}
    assert all(set(check) == {"name", "value", "threshold", "passed"} for check in checks)
    stamped["reason"] = "x" * 5000
    assert len(gate.decision_tags(stamped)["gate_reason"]) == 4000


def test_decision_gauges_against_a_champion():
    decided = gate.decide(
        metrics_json(7.6, 2.955), THRESHOLDS, baseline=metrics_json(5.0, 2.0), champion=champion(8.0, 3.0)
    )
    gauges = gate.decision_gauges(gate.stamp_decision(decided, "rec", "2", None))
    assert gauges == pytest.approx(
        {
            "gate_passed": 1.0,
            "gate_checks_failed": 0.0,
            "gate_checks": 5.0,
            "candidate_HR@10": 7.6,
            "candidate_NDCG@10": 2.955,
            "champion_NDCG@10": 3.0,
            "relative_change_vs_champion_NDCG@10": -0.015,
            "champion_HR@10": 8.0,
            "relative_change_vs_champion_HR@10": -0.05,
        }
    )
