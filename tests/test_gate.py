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

# The least a gate holds: a floor and the margin over popularity.
COMPLETE = {"min": {"HR@10": 3.0}, "min_margin_over_popularity": {"NDCG@10": 0.0}}
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
    floors = {"min": {"HR@10": 3.0, "NDCG@10": 1.5}, "min_margin_over_popularity": {"NDCG@10": 0.5}}
    decision = gate.decide(metrics_json(3.0, 1.5), floors, baseline=metrics_json(2.0, 1.0))
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


def test_a_negative_absolute_drop_demands_an_improvement():
    rule = {
        "min": {"HR@10": 0.0},
        "min_margin_over_popularity": {"NDCG@10": -100.0},
        "max_drop_vs_champion": {"NDCG@10": {"absolute": -0.15}},
    }
    baseline = metrics_json(1.0, 1.0)
    assert gate.decide(metrics_json(8, 3.1), rule, baseline, champion(8, 3.0))["passed"] is False
    assert gate.decide(metrics_json(8, 3.2), rule, baseline, champion(8, 3.0))["passed"] is True


def test_zero_champion_never_divides_by_zero():
    decision = gate.decide(
        metrics_json(1.0, 0.0),
        THRESHOLDS | {"min": {"HR@10": 0.0}, "min_margin_over_popularity": {"NDCG@10": -100.0}},
        baseline=metrics_json(1.0, 0.0),
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
        # Values that make a check meaningless (issue 12): floors outside 0..100, drops of 100 %+.
        ({"min": {"HR@10": -1.0}}, r"gate\.min\.HR@10: expected a value in 0\.\.100, got -1\.0"),
        ({"min": {"NDCG@10": 100.5}}, r"gate\.min\.NDCG@10: expected a value in 0\.\.100"),
        (
            {"max_drop_vs_champion": {"NDCG@10": {"relative": 5.0}}},
            r"relative: expected a fraction in \[0, 1\)",
        ),
        (
            {"max_drop_vs_champion": {"NDCG@10": {"relative": 1.0}}},
            r"relative: expected a fraction in \[0, 1\)",
        ),
        ({"max_drop_vs_champion": {"NDCG@10": {"relative": -0.05}}}, r"expected a fraction in \[0, 1\)"),
        (
            {"max_drop_vs_champion": {"NDCG@10": {"absolute": 150}}},
            r"absolute: expected a value in -100\.\.100",
        ),
        (
            {"max_drop_vs_champion": {"NDCG@10": {"relative": 0.02, "confidence": 1.5}}},
            r"confidence: expected",
        ),
        (
            {"max_drop_vs_champion": {"NDCG@10": {"relative": 0.02, "level": 0.9}}},
            "optionally with confidence",
        ),
        ({"min_margin_over_popularity": {"NDCG@10": -101}}, r"expected a value in -100\.\.100"),
    ],
)
def test_bad_thresholds_name_the_key(tmp_path, section, message):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"gate": COMPLETE | section}))
    with pytest.raises(DiffuRecError, match=message) as error:
        gate.load_thresholds(params)
    assert str(params) in str(error.value)
    assert len(str(error.value).splitlines()) == 1


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
    params = write_params(tmp_path, COMPLETE)
    out = tmp_path / "decision.json"
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
            "--fail-on-reject",
        ]
    )
    assert status == 2
    assert json.loads(out.read_text())["passed"] is False
    assert "gate rejected" in capsys.readouterr().err


def test_cli_bad_input_is_one_line_and_writes_nothing(popularity_metrics, tmp_path, capsys):
    params = write_params(tmp_path, COMPLETE)
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


def test_cli_thresholds_json_is_an_override_recorded_with_who_and_why(popularity_metrics, tmp_path):
    configured = {"min": {"HR@10": 3.0, "NDCG@10": 1.5}, "min_margin_over_popularity": {"NDCG@10": 0.0}}
    lenient = {"min": {"HR@10": 1.0}, "min_margin_over_popularity": {"NDCG@10": -5.0}}
    common = [
        "gate",
        "--candidate",
        str(popularity_metrics["tiny"]),
        "--baseline",
        str(popularity_metrics["full"]),
        "--params",
        write_params(tmp_path, configured),
    ]
    assert main(common + ["--out", str(tmp_path / "configured.json")]) == 0
    by_yaml = json.loads((tmp_path / "configured.json").read_text())
    assert by_yaml["passed"] is False and by_yaml["override"] is None

    out = tmp_path / "overridden.json"
    override = [
        "--thresholds",
        json.dumps(lenient),
        "--override-reason",
        "cold start",
        "--override-by",
        "ana",
    ]
    assert main(common + override + ["--out", str(out)]) == 0
    decision = json.loads(out.read_text())
    assert decision["passed"] is True and decision["thresholds"] == gate.check_thresholds(lenient)
    assert decision["override"] == {
        "reason": "cold start",
        "by": "ana",
        "configured": gate.check_thresholds(configured),
    }
    assert decision["params"] == common[-1]
    assert gate.decision_tags(decision)["gate_override"] == "true"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--thresholds", json.dumps(COMPLETE)], "say why with --override-reason"),
        (["--thresholds", json.dumps(COMPLETE), "--override-reason", "  "], "say why with --override-reason"),
        (["--thresholds", json.dumps(COMPLETE), "--override-reason", "x"], "say who with --override-by"),
        (["--override-reason", "why", "--override-by", "me"], "only with --thresholds"),
    ],
)
def test_cli_an_override_without_reason_or_name_is_refused(
    popularity_metrics, tmp_path, capsys, flags, message
):
    out = tmp_path / "decision.json"
    command = [
        "gate",
        "--candidate",
        str(popularity_metrics["full"]),
        "--params",
        write_params(tmp_path, COMPLETE),
    ]
    assert main(command + ["--baseline", str(popularity_metrics["full"]), *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


@pytest.mark.parametrize(
    "section, message",
    [
        ({}, r"gate\.min: required"),
        ({"min": None, "min_margin_over_popularity": {"NDCG@10": 0.0}}, r"gate\.min: required"),
        ({"min": {}, "min_margin_over_popularity": {"NDCG@10": 0.0}}, r"gate\.min: required"),
        ({"min": {"HR@10": 3.0}}, r"gate\.min_margin_over_popularity: required"),
        (
            {"min": {"HR@10": 3.0}, "min_margin_over_popularity": None},
            r"min_margin_over_popularity: required",
        ),
        (
            {"min": {"HR@10": 3.0}, "max_drop_vs_champion": {"NDCG@10": {"relative": 0.02}}},
            r"gate\.min_margin_over_popularity: required",
        ),
    ],
)
def test_an_empty_gate_is_refused_one_line_exit_2_nothing_written(
    popularity_metrics, tmp_path, capsys, section, message
):
    """Issue 12: `gate: {}` or `min: null` passed everything "by default"; now refused."""
    import re

    params = write_params(tmp_path, section)
    out = tmp_path / "decision.json"
    metrics = str(popularity_metrics["full"])
    status = main(
        ["gate", "--candidate", metrics, "--baseline", metrics, "--params", params, "--out", str(out)]
    )
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err) and params in err
    assert not out.exists()
    with pytest.raises(DiffuRecError, match=message):
        gate.decide(metrics_json(6.0, 2.5), section, baseline=metrics_json(5.0, 2.0))


def test_the_compiled_pipeline_has_no_editable_thresholds_but_the_override_parameters(repo_root):
    """The thresholds a run uses are params.yaml's, a constant of the committed spec."""
    import yaml

    spec = next(yaml.safe_load_all((repo_root / "pipelines" / "diffurec_pipeline.yaml").read_text()))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert not any("threshold" in name for name in inputs), sorted(inputs)
    assert {"gate_override", "override_reason", "override_by"} <= set(inputs)
    assert all(
        inputs[name]["defaultValue"] == "" for name in ("gate_override", "override_reason", "override_by")
    )
    gate_inputs = spec["root"]["dag"]["tasks"]["gate"]["inputs"]["parameters"]
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert gate_inputs["thresholds"] == {"runtimeValue": {"constant": params["gate"]}}
    assert gate_inputs["override"] == {"componentInputParameter": "gate_override"}
    assert gate_inputs["override_reason"] == {"componentInputParameter": "override_reason"}
    assert gate_inputs["override_by"] == {"componentInputParameter": "override_by"}


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


# --- against a registry: the paired comparison and the override's tags --------------------------


def test_registry_gate_compares_on_the_same_users_and_tags_the_override(ml100k_splits, tmp_path, monkeypatch):
    """A real MLflow store (sqlite) and real popularity models on ML-100K: the champion is
    re-evaluated on the candidate's splits for its per-user ranks; a 2,000-sample popularity is
    worse beyond the noise of 943 users, the same model again is tied; an override is tagged."""
    from promotion_models import fit_on_first, fresh_tracking_uri, train_with_cli

    from diffurec import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_tracking_uri(tmp_path))
    splits = str(ml100k_splits.path)
    thresholds = {
        "min": {"HR@10": 0.0},
        "min_margin_over_popularity": {"NDCG@10": -100.0},
        "max_drop_vs_champion": {"NDCG@10": {"relative": 0.02, "confidence": 0.95}},
    }
    params = write_params(tmp_path, thresholds)
    full = train_with_cli(ml100k_splits.path, tmp_path / "full")
    tiny_model = fit_on_first(ml100k_splits, 2000, tmp_path / "tiny")[0]
    tiny_metrics = tmp_path / "tiny" / "evaluated.json"  # the command's output: with per-user ranks
    assert main(["evaluate", "--model", str(tiny_model), "--splits", splits, "--out", str(tiny_metrics)]) == 0

    def gate_version(candidate: tuple, *extra: str) -> dict:
        version = registry.register_model_folder(*candidate, "rec")["version"]
        out = tmp_path / f"decision-v{version}.json"
        command = ["gate", "--candidate", str(candidate[1]), "--baseline", str(candidate[1])]
        command += ["--params", params, "--name", "rec", "--version", version, "--splits", splits]
        assert main([*command, "--out", str(out), *extra]) == 0
        return json.loads(out.read_text())

    first = gate_version(full)
    assert first["champion"] is None and first["passed"] is True
    assert main(["promote", "--name", "rec", "--decision", str(tmp_path / "decision-v1.json")]) == 0

    tied = gate_version(full)
    (check,) = [check for check in tied["checks"] if check["kind"] == "change_vs_champion"]
    assert tied["champion"]["re_evaluated"] is True and tied["passed"] is True
    assert check["paired"]["users"] == 943 and check["paired"]["interval"] == [0.0, 0.0]
    tags = registry.get_version("rec", version=tied["version"])["tags"]
    assert (tags["gate_override"], tags["gate_override_reason"], tags["gate_override_by"]) == (
        "false",
        "",
        "",
    )

    worse = gate_version((tiny_model, tiny_metrics))
    (check,) = [check for check in worse["checks"] if check["kind"] == "change_vs_champion"]
    assert worse["passed"] is False and check["passed"] is False
    assert check["paired"]["users"] == 943 and check["paired"]["relative_interval"][1] < -0.02
    assert check["paired"]["mean_difference"] == pytest.approx(
        worse["candidate"]["metrics"]["NDCG@10"] - worse["champion"]["metrics"]["NDCG@10"]
    )

    # The same version again under an override: recorded in the decision and on the version.
    lenient = thresholds | {"max_drop_vs_champion": {"NDCG@10": {"relative": 0.9}}}
    override = [
        "--thresholds",
        json.dumps(lenient),
        "--override-reason",
        "hotfix INC-7",
        "--override-by",
        "ana",
    ]
    out = tmp_path / "override.json"
    command = ["gate", "--candidate", str(tiny_metrics), "--baseline", str(tiny_metrics), "--params", params]
    command += ["--name", "rec", "--version", worse["version"], "--splits", splits, "--out", str(out)]
    assert main(command + override) == 0
    decision = json.loads(out.read_text())
    assert decision["passed"] is True
    assert (decision["override"]["reason"], decision["override"]["by"]) == ("hotfix INC-7", "ana")
    assert decision["override"]["configured"] == gate.check_thresholds(thresholds)
    tags = registry.get_version("rec", version=worse["version"])["tags"]
    assert (tags["gate_override"], tags["gate_override_reason"], tags["gate_override_by"]) == (
        "true",
        "hotfix INC-7",
        "ana",
    )
    assert tags["gate_decision_id"] == decision["decision_id"]
