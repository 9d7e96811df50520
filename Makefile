# The two commands of the README: `make run` (the whole pipeline on the default dataset)
# and `make test` (the test suite). Both install what they need first.
PY := .venv/bin/python

.PHONY: setup run test lint clean

setup:
	bash scripts/setup.sh

# `make run KEEP_MONITORING=1` leaves the run's Prometheus and Pushgateway running afterwards.
run: setup
	.venv/bin/diffurec pipeline run $(if $(filter-out 0 no false,$(KEEP_MONITORING)),--keep-monitoring)

test: setup
	bash scripts/test.sh

# The linters alone (scripts/test.sh runs them before pytest): deployment files, ruff, mypy.
lint: setup
	bash scripts/lint.sh

clean:
	rm -rf runs .pytest_cache
