"""Great Expectations suites for raw interaction logs and for processed splits folders.

Each run builds an ephemeral GX context, validates, and writes to an output folder:
`report.json` (every expectation, its result, a few offending file rows) and `data_docs/`
(GX's HTML Data Docs). A run that evaluated a different number of expectations than the suite
holds fails: a suite that silently ran nothing must not pass.

Severity: "critical" expectations decide success; "warning" ones (exact duplicate rows, users
too short for leave-one-out) describe dirty but usable data that `diffurec preprocess` cleans
and counts, so they are reported without failing the run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffurec.data.splits import MIN_SEQUENCE_LENGTH, load_splits
from diffurec.files import temporary_sibling

log = logging.getLogger(__name__)

REPORT_FORMAT = "diffurec-validation"
REPORT_VERSION = 1
# Plausible unix-second timestamps: 1990-01-01 .. 2100-01-01. Milliseconds fall outside.
TIMESTAMP_MIN = 631_152_000
TIMESTAMP_MAX = 4_102_444_800
EXAMPLE_ROWS = 5


def _gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # GX logs its own set-up at INFO (hundreds of lines); keep its warnings only.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    import great_expectations.expectations as gxe

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return gx, gxe


# --------------------------------------------------------------------------------------------
# Suites: each is a list of (table, expectation) so the count is known before anything runs.
# --------------------------------------------------------------------------------------------


def raw_expectations(columns: set[str]) -> list[tuple[str, object]]:
    """The raw-interactions suite for a table with `columns` (validate_file's)."""
    _, gxe = _gx()
    has_time = "timestamp" in columns or "timestamp_numeric" in columns
    has_rating = "rating" in columns
    table = "interactions"
    items = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnToExist(column="user"),
        gxe.ExpectColumnToExist(column="item"),
        gxe.ExpectColumnValuesToNotBeNull(column="user"),
        gxe.ExpectColumnValuesToNotBeNull(column="item"),
        # At least one user can be split leave-one-out (train, validation, test).
        gxe.ExpectColumnMaxToBeBetween(column="user_interactions", min_value=MIN_SEQUENCE_LENGTH),
        # Users below that are dropped (and counted) by preprocess: a warning, not a failure.
        gxe.ExpectColumnValuesToBeBetween(
            column="user_interactions", min_value=MIN_SEQUENCE_LENGTH, severity="warning"
        ),
    ]
    if has_time:
        items += [
            gxe.ExpectColumnValuesToNotBeNull(column="timestamp"),
            # A timestamp that is present but does not parse as a number is null here.
            gxe.ExpectColumnValuesToNotBeNull(column="timestamp_numeric"),
            gxe.ExpectColumnValuesToBeBetween(
                column="timestamp_numeric", min_value=TIMESTAMP_MIN, max_value=TIMESTAMP_MAX
            ),
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=["user", "item", "timestamp_numeric"] + (["rating"] if has_rating else []),
                severity="warning",
            ),
        ]
    if has_rating:
        items += [gxe.ExpectColumnValuesToNotBeNull(column="rating_numeric")]
    return [(table, e) for e in items]


def splits_expectations(
    num_users: int, num_items: int, num_samples: int, num_sequence_items: int
) -> list[tuple[str, object]]:
    """The processed-splits suite over what a version 2 folder stores (splits_tables): the
    item map, the sequences and their offsets; sizes are format.json's, so arrays that
    disagree with the header fail. Windows and targets are functions of these, not checked."""
    _, gxe = _gx()
    return [
        ("item_map", gxe.ExpectTableRowCountToEqual(value=num_items)),
        ("item_map", gxe.ExpectColumnValuesToBeUnique(column="index")),
        ("item_map", gxe.ExpectColumnValuesToBeBetween(column="index", min_value=1, max_value=num_items)),
        # With the range above: every index 1..N occurs, so ids are contiguous; 0 stays padding.
        (
            "sequence_items",
            gxe.ExpectColumnValuesToBeBetween(column="item", min_value=1, max_value=num_items),
        ),
        (
            "sequence_items",
            gxe.ExpectColumnUniqueValueCountToBeBetween(
                column="item", min_value=num_items, max_value=num_items
            ),
        ),
        # Offsets run from 0 to len(seq_items) without going back: users tile seq_items.
        ("seq_offsets", gxe.ExpectColumnMinToBeBetween(column="offset", min_value=0, max_value=0)),
        (
            "seq_offsets",
            gxe.ExpectColumnMaxToBeBetween(
                column="offset", min_value=num_sequence_items, max_value=num_sequence_items
            ),
        ),
        ("seq_offsets", gxe.ExpectColumnValuesToBeIncreasing(column="offset")),
        ("users", gxe.ExpectTableRowCountToEqual(value=num_users)),
        ("users", gxe.ExpectColumnValuesToBeBetween(column="length", min_value=MIN_SEQUENCE_LENGTH)),
        (
            "users",
            gxe.ExpectColumnSumToBeBetween(
                column="train_samples", min_value=num_samples, max_value=num_samples
            ),
        ),
    ]


# --------------------------------------------------------------------------------------------
# Tables the suites run on
# --------------------------------------------------------------------------------------------


# GX (pandas) sees every row of a log up to FULL_ROWS rows; a larger log is checked by DuckDB
# over every row, expectation by expectation (ALL_ROWS_CHECKS), and GX runs on a systematic
# sample of about SAMPLE_ROWS rows (every k-th row) for its Data Docs and any other expectation.
FULL_ROWS = 250_000
SAMPLE_ROWS = 100_000


class EveryRowChecks:
    """The raw suite's columns over every row of the view `interactions` (load_interactions,
    strict=False) and each expectation's outcome over all of them, computed by DuckDB.

    Suite columns: user, item, rating and timestamp as found (numbers when every value is one,
    as pandas types a column), rating_numeric/timestamp_numeric (their parses) and
    user_interactions (the row's user's number of rows, from the small table `user_counts`).
    The simple expectations are answered by one aggregate pass, computed on first use."""

    def __init__(self, con, loaded) -> None:
        self.con, self.loaded = con, loaded
        found = {str(r[0]) for r in con.execute("DESCRIBE interactions").fetchall()}
        self.sql: dict[str, str] = {c: f't."{c}"' for c in ("user", "item") if c in found}
        for role in loaded.roles:
            present, numbers = con.execute(
                f"SELECT count({role}_text), count({role}) FROM interactions"
            ).fetchone()
            self.sql[role] = f"t.{role}" if present == numbers else f"t.{role}_text"
            self.sql[f"{role}_numeric"] = f"t.{role}"
        if "user" in self.sql:
            con.execute(
                'CREATE OR REPLACE TABLE user_counts AS SELECT "user", count(*) AS n FROM interactions '
                'GROUP BY "user"'
            )
            self.sql["user_interactions"] = "c.n"
        else:
            self.sql["user_interactions"] = "CAST(0 AS BIGINT)"
        self.columns = list(self.sql)
        self.total = loaded.rows
        self._counts: dict[str, int] | None = None

    def _from(self, uses_counts: bool) -> str:
        if uses_counts and "user" in self.sql:
            return 'interactions t JOIN user_counts c ON t."user" IS NOT DISTINCT FROM c."user"'
        return "interactions t"

    def frame(self, every: int) -> pd.DataFrame:
        """The GX table: every `every`-th row in file order, `row` as file rows."""
        listed = ", ".join(f'{sql} AS "{column}"' for column, sql in self.sql.items())
        where = f"WHERE t.pos % {every} = 0" if every > 1 else ""
        frame = self.con.execute(
            f"SELECT {listed}, t.row FROM {self._from(True)} {where} ORDER BY t.pos"
        ).df()
        frame["row"] = self.loaded.line_numbers(frame["row"].to_numpy())
        return frame

    def _conditions(self, entry: dict) -> tuple[str, str] | None:
        """(unexpected row condition, the base rows' condition) of a column-map expectation."""
        kwargs, kind = entry["kwargs"], entry["expectation"]
        column = kwargs.get("column")
        if kind == "expect_column_values_to_not_be_null":
            return f"{self.sql[column]} IS NULL", "true"
        if kind == "expect_column_values_to_be_between":
            low, high = kwargs.get("min_value"), kwargs.get("max_value")
            value = self.sql[column]
            parts = ([f"{value} < {low!r}"] if low is not None else []) + (
                [f"{value} > {high!r}"] if high is not None else []
            )
            return " OR ".join(parts) or "false", f"{value} IS NOT NULL"
        return None

    def _count_all(self, entries: list[dict]) -> dict[str, int]:
        """Every column-map expectation's unexpected and base counts in one pass."""
        parts, keys = [], []
        for entry in entries:
            conditions = self._conditions(entry)
            if conditions is None or entry["kwargs"]["column"] == "user_interactions":
                continue
            key = json.dumps([entry["expectation"], entry["kwargs"]], sort_keys=True, default=str)
            parts += [f"count(*) FILTER (WHERE {conditions[0]})", f"count(*) FILTER (WHERE {conditions[1]})"]
            keys += [f"{key} bad", f"{key} base"]
        if not parts:
            return {}
        values = self.con.execute(f"SELECT {', '.join(parts)} FROM interactions t").fetchone()
        return dict(zip(keys, (int(v) for v in values), strict=True))

    def check(self, entry: dict, entries: list[dict]) -> dict | None:
        """One result over every row, in GX's terms (success, observed_value, unexpected_count and
        percent, element_count, example_file_rows); None for an expectation without a DuckDB form
        or on a missing column (GX's own error result stands)."""
        kwargs, kind = entry["kwargs"], entry["expectation"]
        column = kwargs.get("column")
        if column is not None and column not in self.sql:
            return None
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        if kind == "expect_table_row_count_to_be_between":
            ok = (low is None or self.total >= low) and (high is None or self.total <= high)
            return {"success": ok, "observed_value": self.total}
        if kind == "expect_column_to_exist":
            return {"success": True}
        if kind == "expect_column_max_to_be_between":
            value = self.con.execute(f"SELECT max({self.sql[column]}) FROM {self._from(True)}").fetchone()[0]
            ok = value is not None and (low is None or value >= low) and (high is None or value <= high)
            return {"success": bool(ok), "observed_value": value}
        uses_counts = column == "user_interactions"
        if kind == "expect_compound_columns_to_be_unique":
            listed = [self.sql[c] for c in kwargs["column_list"] if c in self.sql]
            if len(listed) < len(kwargs["column_list"]):
                return None
            # Every row of a repeated combination is unexpected (GX's rule); all-missing rows aside.
            present = " OR ".join(f"{c} IS NOT NULL" for c in listed)
            names = [f"k{i}" for i in range(len(listed))]
            selected = ", ".join(f"{c} AS {n}" for c, n in zip(listed, names, strict=True))
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE repeated AS SELECT {selected}, count(*) AS n "
                f"FROM interactions t WHERE {present} GROUP BY ALL HAVING count(*) > 1"
            )
            count = int(self.con.execute("SELECT coalesce(sum(n), 0) FROM repeated").fetchone()[0])
            base = int(self.con.execute(f"SELECT count(*) FROM interactions t WHERE {present}").fetchone()[0])
            matches = " AND ".join(
                f"r.{n} IS NOT DISTINCT FROM {c}" for c, n in zip(listed, names, strict=True)
            )
            bad = f"EXISTS (SELECT 1 FROM repeated r WHERE {matches})"
        elif uses_counts and kind == "expect_column_values_to_be_between":
            conditions = self._conditions(entry)
            assert conditions is not None
            bad = conditions[0]
            count = int(
                self.con.execute(f"SELECT count(*) FROM {self._from(True)} WHERE {bad}").fetchone()[0]
            )
            base = self.total
        elif self._conditions(entry) is not None:
            if self._counts is None:
                self._counts = self._count_all(entries)
            key = json.dumps([kind, kwargs], sort_keys=True, default=str)
            count, base = self._counts[f"{key} bad"], self._counts[f"{key} base"]
            bad = self._conditions(entry)[0]  # type: ignore[index]
        else:
            return None
        result: dict[str, Any] = {
            "success": count == 0,
            "unexpected_count": count,
            "unexpected_percent": 100.0 * count / base if base else None,
            "element_count": self.total,
        }
        if count:
            examples = self.con.execute(
                f"SELECT t.row FROM {self._from(uses_counts)} WHERE {bad} ORDER BY t.pos LIMIT {EXAMPLE_ROWS}"
            ).fetchnumpy()["row"]
            result["example_file_rows"] = [int(r) for r in self.loaded.line_numbers(np.asarray(examples))]
        return {k: v for k, v in result.items() if v is not None}


def splits_columns(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every column of the splits suite's tables over all rows, memory-mapped where stored:
    item_map.index, sequence_items.item (seq_items), seq_offsets.offset, users.length and
    users.train_samples (length - 3, the user's number of training samples)."""
    seq_items = np.load(folder / "seq_items.npy", mmap_mode="r")
    offsets = np.load(folder / "seq_offsets.npy", mmap_mode="r")
    lengths = np.diff(np.asarray(offsets, dtype=np.int64))
    return {
        "item_map": {"index": _map_indices(folder / "item_map.tsv")},
        "sequence_items": {"item": seq_items},
        "seq_offsets": {"offset": offsets},
        "users": {"length": lengths, "train_samples": lengths - MIN_SEQUENCE_LENGTH},
    }


def splits_tables(columns: dict[str, dict[str, np.ndarray]], every: int = 1) -> dict[str, pd.DataFrame]:
    """The tables GX sees: every `every`-th row of each table of splits_columns."""
    return {
        table: pd.DataFrame({name: np.asarray(values[::every]) for name, values in cols.items()})
        for table, cols in columns.items()
    }


# Rows per NumPy pass of splits_every_row: 32 MiB of int64 at a time, whatever the folder's size.
CHUNK_ROWS = 1 << 22


def _chunks(values: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for lo in range(0, len(values), CHUNK_ROWS):
        yield lo, np.asarray(values[lo : lo + CHUNK_ROWS], dtype=np.int64)


def splits_every_row(columns: dict[str, dict[str, np.ndarray]], entry: dict) -> dict | None:
    """One splits-suite expectation's outcome over every row, computed with NumPy in chunks
    (the same keys and values GX reports on the whole table); None for an unknown expectation."""
    kind, kwargs = entry["expectation"], entry["kwargs"]
    table = columns[entry["table"]]
    # A table-level expectation (row count) names no column: any column has the table's rows.
    values = table[kwargs["column"]] if "column" in kwargs else next(iter(table.values()))
    n = len(values)
    if kind == "expect_table_row_count_to_equal":
        return {"success": n == kwargs["value"], "observed_value": n}
    if kind in (
        "expect_column_min_to_be_between",
        "expect_column_max_to_be_between",
        "expect_column_sum_to_be_between",
        "expect_column_unique_value_count_to_be_between",
    ):
        if n == 0:
            return {"success": False}
        if kind == "expect_column_unique_value_count_to_be_between":
            seen: set[int] = set()
            for _, block in _chunks(values):
                seen.update(np.unique(block).tolist())
            observed = len(seen)
        else:
            statistic = kind.split("_")[2]  # min, max or sum: of the chunks' own
            parts = [int(getattr(block, statistic)()) for _, block in _chunks(values)]
            observed = min(parts) if statistic == "min" else max(parts) if statistic == "max" else sum(parts)
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        ok = (low is None or observed >= low) and (high is None or observed <= high)
        return {"success": ok, "observed_value": observed}
    bad_parts: list[int] = []
    examples: list[int] = []
    if kind == "expect_column_values_to_be_unique":
        unique, counts = np.unique(np.asarray(values), return_counts=True)
        bad = np.isin(np.asarray(values), unique[counts > 1])
        bad_parts, examples = [int(bad.sum())], np.asarray(values)[bad][:EXAMPLE_ROWS].tolist()
    elif kind in ("expect_column_values_to_be_between", "expect_column_values_to_be_increasing"):
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        previous = None
        for _, block in _chunks(values):
            if kind == "expect_column_values_to_be_increasing":
                # GX's non-strict form: a row below the row before it is unexpected.
                before = np.concatenate([[block[0] if previous is None else previous], block[:-1]])
                bad = block < before
                previous = block[-1]
            else:
                bad = np.zeros(len(block), dtype=bool)
                if low is not None:
                    bad |= block < low
                if high is not None:
                    bad |= block > high
            bad_parts.append(int(bad.sum()))
            if len(examples) < EXAMPLE_ROWS:
                examples += block[bad][: EXAMPLE_ROWS - len(examples)].tolist()
    else:
        return None
    unexpected = sum(bad_parts)
    result: dict[str, Any] = {
        "success": unexpected == 0,
        "unexpected_count": unexpected,
        "unexpected_percent": 100.0 * unexpected / n if n else None,
        "element_count": n,
    }
    if examples:
        result["example_values"] = examples
    return {k: v for k, v in result.items() if v is not None}


def _map_indices(path: Path) -> np.ndarray:
    table = pd.read_csv(path, sep="\t", dtype={"index": "int64", "original_id": str}, keep_default_na=False)
    return table["index"].to_numpy()


# --------------------------------------------------------------------------------------------
# Running a suite and writing the report
# --------------------------------------------------------------------------------------------


def run_suite(
    suite_name: str,
    expectations,
    tables: dict[str, pd.DataFrame],
    out,
    source: dict,
    recheck: Callable[[str, dict], dict | None] | None = None,
    sample: dict | None = None,
    table_rows: dict[str, int] | None = None,
) -> dict:
    """Validate `tables` against `expectations`; write report.json and data_docs/ to out.

    When `sample` describes the tables as a sample of a larger log ({"rows": n, "of": N, "rule":
    ...}), `recheck(table, result)` gives an expectation's outcome over every row (or None where
    it has none): it replaces GX's sample outcome, and each result says what it was checked on.
    `table_rows` gives each table's whole row count where the tables are samples of several."""
    gx, _ = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    started = time.perf_counter()
    out = Path(out).resolve()  # GX's site store wants an absolute base directory
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out)
    try:
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        # The ephemeral context makes a default docs site in a fresh /tmp folder; ours replaces it.
        for name, site in dict(context.variables.data_docs_sites or {}).items():
            context.delete_data_docs_site(name)
            base = site.get("store_backend", {}).get("base_directory")
            if base and Path(base).is_dir() and Path(base).name.startswith("tmp"):
                shutil.rmtree(base, ignore_errors=True)
        context.add_data_docs_site(
            "local",
            {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(tmp / "data_docs"),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        datasource = context.data_sources.add_pandas("diffurec")
        results, evaluated = [], 0
        for table_name in dict.fromkeys(t for t, _ in expectations):
            asset = datasource.add_dataframe_asset(table_name)
            batch = asset.add_batch_definition_whole_dataframe("all")
            suite = context.suites.add(gx.ExpectationSuite(name=f"{suite_name}.{table_name}"))
            for t, expectation in expectations:
                if t == table_name:
                    suite.add_expectation(expectation)
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=f"{suite_name}.{table_name}", data=batch, suite=suite)
            )
            frame = tables[table_name]
            run = definition.run(
                batch_parameters={"dataframe": frame},
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLE_ROWS},
            )
            evaluated += run.statistics["evaluated_expectations"]
            for result in run.results:
                entry = _describe_result(table_name, result, frame)
                every_row = recheck(table_name, entry) if sample is not None and recheck else None
                if every_row is not None:
                    entry = {
                        k: v for k, v in entry.items() if k not in ("example_file_rows", "example_values")
                    }
                    entry.update(every_row)
                entry["checked_on"] = "sample" if sample is not None and every_row is None else "all rows"
                results.append(entry)
        context.build_data_docs()

        expected = len(expectations)
        rows = table_rows or {
            name: int(sample["of"] if sample else len(frame)) for name, frame in tables.items()
        }
        failed = [r for r in results if not r["success"] and r["severity"] == "critical"]
        warnings = [r for r in results if not r["success"] and r["severity"] != "critical"]
        ran_all = evaluated == expected and expected > 0
        report = {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "suite": suite_name,
            "success": ran_all and not failed,
            "expectations_expected": expected,
            "expectations_evaluated": evaluated,
            "failed": len(failed),
            "warnings": len(warnings),
            "rows": rows,
            "rows_validated": int(sum(rows.values())),
            # Which results hold for every row and which only for the sample GX saw.
            "checked_on": {
                "all_rows": sum(r["checked_on"] == "all rows" for r in results),
                "sample": sum(r["checked_on"] == "sample" for r in results),
            },
            "sample": sample,
            # Offending values of every unmet expectation, warnings included (a row that breaks
            # two expectations counts twice).
            "rows_rejected": int(sum(r.get("unexpected_count") or 0 for r in failed + warnings)),
            "source": source,
            "data_docs": "data_docs/index.html",
            "results": results,
        }
        # No timings in the file: the same data gives the same report.json (a DVC dependency).
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report["seconds"] = round(time.perf_counter() - started, 3)
    log.info(
        "%s: %d/%d expectations evaluated, %d failed, %d warnings in %.1f s (report %s)",
        suite_name,
        evaluated,
        expected,
        len(failed),
        len(warnings),
        report["seconds"],
        out / "report.json",
    )
    return report


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _describe_result(table: str, result, frame: pd.DataFrame) -> dict:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    details = result.result or {}
    entry = {
        "table": table,
        "expectation": config.type,
        "kwargs": kwargs,
        "severity": str(getattr(config, "severity", "critical") or "critical").split(".")[-1].lower(),
        "success": bool(result.success),
    }
    for key in ("observed_value", "unexpected_count", "unexpected_percent", "element_count"):
        if key in details and details[key] is not None:
            entry[key] = details[key]
    indices = details.get("partial_unexpected_index_list")
    if indices and "row" in frame:
        entry["example_file_rows"] = [
            int(frame["row"].iat[int(i)]) for i in indices[:EXAMPLE_ROWS] if isinstance(i, (int, np.integer))
        ]
    elif details.get("partial_unexpected_list"):
        entry["example_values"] = details["partial_unexpected_list"][:EXAMPLE_ROWS]
    if result.exception_info and result.exception_info.get("raised_exception"):
        entry["error"] = str(result.exception_info.get("exception_message", "")).splitlines()[0][:300]
    return entry


def summarize_failures(report: dict, limit: int = 3) -> str:
    """One line naming the first failed expectations (for the CLI's error message)."""
    parts = []
    if report["expectations_evaluated"] != report["expectations_expected"]:
        parts.append(
            f"{report['expectations_evaluated']} of {report['expectations_expected']} expectations ran"
        )
    for r in [r for r in report["results"] if not r["success"] and r["severity"] == "critical"][:limit]:
        what = r["kwargs"].get("column") or r["kwargs"].get("column_list") or ""
        text = f"{r['expectation']}({what})" if what else r["expectation"]
        if r.get("unexpected_count"):
            text += f": {r['unexpected_count']} bad row(s)"
        if r.get("example_file_rows"):
            text += f", e.g. file row {r['example_file_rows'][0]}"
        elif "observed_value" in r:
            text += f": observed {r['observed_value']}"
        parts.append(text)
    more = report["failed"] - min(report["failed"], limit)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def validate_file(
    path, out, format=None, user_col=None, item_col=None, time_col=None, rating_col=None, sep=None
) -> dict:
    """Validate a raw interaction log with the raw suite; returns the report dict.

    DuckDB reads the log (load_interactions, strict=False: problems stay in the rows for the
    suite to report); GX sees every row up to FULL_ROWS rows, else a sample while DuckDB checks
    every row (see FULL_ROWS)."""
    from diffurec.data.readers import duckdb_session, load_interactions

    out = Path(out)
    work = out.absolute().parent
    while not work.is_dir():
        work = work.parent
    with duckdb_session(work) as con:
        loaded = load_interactions(
            con,
            path,
            format=format,
            user_col=user_col,
            item_col=item_col,
            time_col=time_col,
            rating_col=rating_col,
            sep=sep,
            strict=False,
        )
        checks = EveryRowChecks(con, loaded)
        sampled = loaded.rows > FULL_ROWS
        every = max(1, -(-loaded.rows // SAMPLE_ROWS)) if sampled else 1
        frame = checks.frame(every)
        sample = None
        if sampled:
            sample = {"rows": len(frame), "of": loaded.rows, "rule": f"every {every}th row in file order"}
        source = {"path": str(path), "format": loaded.format, "columns": loaded.source_columns}
        expectations = raw_expectations(set(frame.columns))
        return run_suite(
            "raw_interactions",
            expectations,
            {"interactions": frame},
            out,
            source,
            recheck=lambda table, entry: checks.check(entry, _described(expectations)),
            sample=sample,
        )


def _described(expectations) -> list[dict]:
    """Each expectation as its report entry names it (type and kwargs)."""
    return [
        {
            "expectation": e.expectation_type,
            "kwargs": {k: v for k, v in e.configuration.kwargs.items() if k != "batch_id"},
        }
        for _, e in expectations
    ]


def validate_splits_folder(folder, out) -> dict:
    """Validate a splits folder with the processed-splits suite; returns the report dict.

    Up to FULL_ROWS sequence items GX sees every row of every table; above, NumPy computes
    every expectation over every row in chunks (splits_every_row) and GX runs on every k-th
    row of each table (about SAMPLE_ROWS sequence items) for its Data Docs."""
    folder = Path(folder)
    load_splits(folder)  # the format checks: a folder that is not version 1 or 2 splits is a user error
    header = json.loads((folder / "format.json").read_text())
    columns = splits_columns(folder)
    num_sequence_items = len(columns["sequence_items"]["item"])
    sampled = num_sequence_items > FULL_ROWS
    every = max(1, -(-num_sequence_items // SAMPLE_ROWS)) if sampled else 1
    tables = splits_tables(columns, every)
    sample = None
    if sampled:
        sample = {
            "rows": len(tables["sequence_items"]),
            "of": num_sequence_items,
            "rule": f"every {every}th row of each table",
        }
    expectations = splits_expectations(
        int(header["num_users"]),
        int(header["num_items"]),
        int(header["num_train_samples"]),
        num_sequence_items,
    )
    return run_suite(
        "processed_splits",
        expectations,
        tables,
        out,
        {"path": str(folder)},
        recheck=lambda table, entry: splits_every_row(columns, entry),
        sample=sample,
        table_rows={table: len(next(iter(cols.values()))) for table, cols in columns.items()},
    )
