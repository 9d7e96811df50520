#!/usr/bin/env bash
# A pull request's report for the job summary: `dvc params diff --md` and `dvc metrics diff --md`
# against BASE (default origin/main), after the CI job ran the pipeline (runs/*metrics.json).
#
#   bash scripts/pr_report.sh [BASE] >> "$GITHUB_STEP_SUMMARY"
#
# BASE needs the history (actions/checkout with fetch-depth: 0). The metrics files are outputs
# with `cache: false` under runs/, which git ignores: a BASE without recorded metrics is said
# in one line and the table shows this change's values alone. Never fails the job for a
# missing BASE or missing metrics (exit 0); a broken dvc.yaml fails it.
set -euo pipefail
cd "$(dirname "$0")/.."

base=${1:-origin/main}
dvc=${DVC:-.venv/bin/dvc}
python=${PYTHON:-.venv/bin/python}

rows() {  # the number of rows of a markdown table, its header left out
  awk '/^\| / {n++} END {print (n > 1 ? n - 1 : 0)}' <<<"$1"
}

echo "## Parameters and metrics against \`$base\`"
echo
if ! git rev-parse --verify --quiet "${base}^{commit}" >/dev/null; then
  echo "_\`$base\` is not in this checkout (fetch-depth: 0 is needed): no diff._"
  exit 0
fi

echo "### Parameters (params.yaml)"
echo
params=$("$dvc" params diff "$base" --md)
if [ "$(rows "$params")" -eq 0 ]; then
  echo "No parameter changed."
else
  echo "$params"
fi
echo

echo "### Metrics"
echo
diff_json=$("$dvc" metrics diff "$base" --json 2>/dev/null || echo "{}")
# Does BASE have any metric value DVC could read? (old values are null otherwise)
base_has=$("$python" -c '
import json, sys
diff = json.loads(sys.stdin.read() or "{}")
print(any(v.get("old") is not None for m in diff.values() for v in m.values() if isinstance(v, dict)))
' <<<"$diff_json")
if [ "$base_has" = "True" ]; then
  "$dvc" metrics diff "$base" --md 2>/dev/null
else
  echo "_\`$base\` has no recorded metrics (runs/ is not in git): this change's values only._"
  echo
  show=$("$dvc" metrics show --md 2>/dev/null || true)
  if [ "$(rows "$show")" -eq 0 ]; then
    echo "No metrics in this run (did the pipeline run?)."
  else
    echo "$show"
  fi
fi
