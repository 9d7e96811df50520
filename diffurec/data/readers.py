"""Readers: every supported interaction-log format -> one pandas DataFrame.

One entry point, `read_interactions`, detects the format from the file name (or takes an
explicit `format=`) and returns columns `user`, `item` (strings), `rating` and `timestamp`
(float64, when the source has them) and `row`: where the interaction sits in the file, so
later steps can name it in messages. For text files `row` is the line number (the header is
line 1); for Parquet it is the 1-based record number; for sequence files every interaction of
a line carries that line's number.

Every structural problem (missing file, empty file, header only, missing column, wrong
delimiter, null id, non-numeric or negative timestamp, undecodable bytes, truncated gzip)
raises a DiffuRecError naming the file, and the row and column where known.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffurec.data.formats import FORMAT_NAMES, FORMATS, FormatSpec, detect_format
from diffurec.errors import DiffuRecError, located

__all__ = ["FORMATS", "FORMAT_NAMES", "FormatSpec", "detect_format", "read_interactions", "to_numbers"]

log = logging.getLogger(__name__)


_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe", "::": "'::'", " ": "space"}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by magic number, not only by name)."""
    if not path.exists():
        raise DiffuRecError(f"{path}: no such file")
    if path.is_dir():
        raise DiffuRecError(f"{path}: is a folder, expected a file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as error:
            raise DiffuRecError(f"{path}: corrupt or truncated gzip file ({error})") from None
    elif path.name.endswith(".gz") and raw:
        raise DiffuRecError(f"{path}: name ends in .gz but the file is not gzip-compressed")
    return raw


def _decode(path: Path, raw: bytes, sep: str | None = None, names: list[str] | None = None) -> str:
    """UTF-8 text of the file; a bad byte is reported with its row and, given the delimiter
    and the column names (None: the header line's), its column."""
    if not raw.strip():
        raise DiffuRecError(f"{path}: file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        row = raw[: error.start].count(b"\n") + 1
        bad = raw[error.start : error.start + 4]
        column = None
        if sep is not None:
            line_start = raw.rfind(b"\n", 0, error.start) + 1
            index = raw[line_start : error.start].count(sep.encode())
            if names is None:  # the header names the columns
                header = raw[: raw.find(b"\n")].decode("utf-8", "replace").rstrip("\r")
                names = [c.split(":")[0].strip() for c in header.split(sep)]
            if names:
                column = names[min(index, len(names) - 1)]
        raise located(
            path, f"bytes {bad!r} are not valid UTF-8 (re-encode the file as UTF-8)", row=row, column=column
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _pick(
    path: Path,
    columns: list[str],
    explicit: str | None,
    candidates: tuple[str, ...],
    role: str,
    required: bool,
    sep: str | None,
) -> str | None:
    """The source column for one role: the explicit name, else the first candidate present."""
    if explicit is not None:
        if explicit in columns:
            return explicit
        raise located(
            path, f"{role} column not found; the header has {_describe(columns, sep)}", row=1, column=explicit
        )
    for name in candidates:
        if name in columns:
            return name
    if role in ("user", "item"):
        wanted = (
            f"{candidates[0]!r}"
            if len(candidates) == 1
            else "one of " + ", ".join(repr(c) for c in candidates[:4]) + ", ..."
        )
        error = located(
            path,
            f"no {role} column ({wanted}); the header has "
            f"{_describe(columns, sep)}; name it with --{role}-col",
            row=1,
        )
        if required:
            raise error
        log.warning("%s", error)  # validation goes on and reports the missing column
    return None


def _describe(columns: list[str], sep: str | None) -> str:
    """The header as found, with a hint when it looks split on the wrong delimiter."""
    shown = ", ".join(repr(c) for c in columns[:8]) + (", ..." if len(columns) > 8 else "")
    text = f"{len(columns)} column(s): {shown}"
    if len(columns) == 1 and sep is not None:
        for other, name in _DELIMITER_NAMES.items():
            if other != sep and other in columns[0]:
                text += (
                    f" (wrong delimiter? the file seems {name}-separated, this format "
                    f"expects {_DELIMITER_NAMES.get(sep, repr(sep))}; use --format or --sep)"
                )
                break
    return text


def _parse_table(
    path: Path, text: str, spec: FormatSpec, sep: str, nrows: int | None = None, as_text: tuple = ()
) -> pd.DataFrame:
    """Parse a delimited table; columns in `as_text` stay strings (ids as written, '007' keeps
    its zeros), the others get pandas' inferred types. Missing fields become NaN."""
    if sep == "::":  # pandas' C parser takes one-character delimiters only
        text = text.replace("::", "\x1f")
        sep = "\x1f"
    tab_like = sep in ("\t", "\x1f")
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            header=0 if spec.header else None,
            nrows=nrows,
            dtype={c: str for c in as_text} or None,
            # Tab files (RecBole, MovieLens) never quote; titles may contain '"'.
            quoting=csv.QUOTE_NONE if tab_like else csv.QUOTE_MINIMAL,
            skip_blank_lines=True,
            engine="c",
            na_values=[""],
            keep_default_na=False,
        )
    except pd.errors.ParserError as error:
        message = str(error).strip()
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
        if found:
            expected, line, saw = (int(g) for g in found.groups())
            if sep == "\x1f":
                sep = "::"
            raise located(
                path,
                f"expected {expected} fields separated by "
                f"{_DELIMITER_NAMES.get(sep, repr(sep))}, found {saw} "
                f"(wrong delimiter or a stray field?)",
                row=line,
            ) from None
        raise DiffuRecError(f"{path}: malformed table ({message})") from None
    except pd.errors.EmptyDataError:
        raise DiffuRecError(f"{path}: file is empty") from None
    except ValueError as error:  # e.g. a column declared text that the parser cannot convert
        raise DiffuRecError(f"{path}: cannot parse the table ({error})") from None
    return frame


def _check_field_count(path: Path, table: pd.DataFrame, expected: int, sep: str) -> None:
    """A headerless file must have exactly `expected` fields on every row."""
    fields = table.drop(columns="__row__")
    counts = fields.notna().to_numpy()[:, ::-1].argmax(axis=1)  # trailing empty fields
    counts = np.where(fields.notna().to_numpy().any(axis=1), fields.shape[1] - counts, 0)
    wrong = np.flatnonzero(counts != expected)
    if len(wrong):
        first = int(wrong[0])
        raise located(
            path,
            f"expected {expected} fields separated by "
            f"{_DELIMITER_NAMES.get(sep, repr(sep))}, found {int(counts[first])} "
            f"(wrong delimiter or wrong --format?)",
            row=int(table["__row__"].iat[first]),
        )


def _line_numbers(text: str, spec: FormatSpec, count: int) -> np.ndarray:
    """Line number of each parsed row (blank lines are skipped by the parser)."""
    first = 2 if spec.header else 1
    body = text.rstrip()
    if (
        "\n\n" not in body and "\n\r\n" not in body and not body.startswith(("\n", "\r\n"))
    ):  # the common case: row i is line first + i
        return np.arange(first, first + count, dtype=np.int64)
    lines = text.split("\n")
    nonblank = np.flatnonzero(np.fromiter((bool(line.strip()) for line in lines), bool, count=len(lines))) + 1
    if spec.header:
        nonblank = nonblank[1:]
    return nonblank[:count].astype(np.int64)


def _table_from_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise DiffuRecError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DiffuRecError(f"{path}: file is empty")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DiffuRecError(f"{path}: not a readable Parquet file ({error})") from None
    return table.to_pandas()


def _read_sequences(path: Path, text: str) -> pd.DataFrame:
    """'user item1 item2 ...' lines -> one row per interaction, in file order."""
    users, items, rows = [], [], []
    for number, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 1:
            raise located(
                path,
                f"line has a user id ({fields[0]!r}) but no items; expected "
                f"'user item1 item2 ...' separated by spaces",
                row=number,
            )
        users.append(np.full(len(fields) - 1, fields[0], dtype=object))
        items.append(np.asarray(fields[1:], dtype=object))
        rows.append(np.full(len(fields) - 1, number, dtype=np.int64))
    if not users:
        raise DiffuRecError(f"{path}: file is empty")
    return pd.DataFrame(
        {"user": np.concatenate(users), "item": np.concatenate(items), "row": np.concatenate(rows)}
    )


def _check_ids(path: Path, frame: pd.DataFrame, source: dict[str, str | None]) -> None:
    for role in ("user", "item"):
        values = frame[role]
        missing = np.array(values.isna(), dtype=bool)
        if values.dtype == object or pd.api.types.is_string_dtype(values):  # whitespace only
            missing |= np.array(values.astype(str).str.strip().eq(""), dtype=bool)
        if missing.any():
            first = int(np.flatnonzero(missing)[0])
            raise _empty_id_error(path, role, int(missing.sum()), int(frame["row"].iat[first]), source[role])


def _empty_id_error(path: Path, role: str, count: int, row: int, column: str | None) -> DiffuRecError:
    return located(path, f"{role} id is empty ({count} row(s) with no {role} id)", row=row, column=column)


def _not_a_number_error(
    path: Path, role: str, shown: object, count: int, row: int, column: str | None
) -> DiffuRecError:
    what = "is empty" if shown is None or pd.isna(shown) else f"{shown!r} is not a number"
    unit = " (unix seconds or an ISO 8601 date)" if role == "timestamp" else ""
    return located(path, f"{role} {what}{unit}; {count} such row(s)", row=row, column=column)


def _negative_error(path: Path, role: str, value: float, row: int, column: str | None) -> DiffuRecError:
    return located(path, f"{role} {value:g} is negative", row=row, column=column)


def to_numbers(values: pd.Series, role: str) -> pd.Series:
    """float64 values, NaN where a value is missing or not a number.

    Timestamps may also be dates: a datetime column, or a text column in which no value is a
    number and every value is an ISO 8601 date, becomes unix seconds (UTC).
    """
    if role == "timestamp" and pd.api.types.is_datetime64_any_dtype(values):
        stamps = pd.to_datetime(values, utc=True)
        # (stamp - epoch) / 1 s is exact whatever the column's resolution (s, ms, us, ns); NaT -> NaN
        return ((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).astype(np.float64)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype(np.float64)
    parsed = pd.to_numeric(values, errors="coerce").astype(np.float64)
    present = values.notna().to_numpy()
    if role == "timestamp" and present.any() and parsed[present].isna().all():
        dates = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
        if dates[present].notna().all():
            return to_numbers(dates, role)
    return parsed


def _numeric(
    path: Path, frame: pd.DataFrame, role: str, source: str | None, allow_negative: bool
) -> pd.Series:
    values = to_numbers(frame[role], role)
    bad = values.isna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        shown = frame[role].iat[first]
        raise _not_a_number_error(path, role, shown, int(bad.sum()), int(frame["row"].iat[first]), source)
    if not allow_negative and (values < 0).any():
        first = int(np.flatnonzero((values < 0).to_numpy())[0])
        raise _negative_error(path, role, values.iat[first], int(frame["row"].iat[first]), source)
    return values


def _refuse_column_flags(
    name: str,
    positional: Sequence[str],
    user_col: str | None,
    item_col: str | None,
    time_col: str | None,
    rating_col: str | None,
) -> None:
    """A headerless format has fixed columns: naming one with --X-col is an error."""
    for role, given in (("user", user_col), ("item", item_col), ("time", time_col), ("rating", rating_col)):
        if given is not None:
            raise DiffuRecError(
                f"--{role}-col does not apply to format {name!r} "
                f"(it has no header; its columns are {', '.join(positional)})"
            )


def read_interactions(
    path,
    format: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    rating_col: str | None = None,
    sep: str | None = None,
    strict: bool = True,
) -> pd.DataFrame:
    """Read an interaction log into DataFrame[user, item, (rating), (timestamp), row].

    format: one of FORMAT_NAMES, or None to detect it from the file name. *_col: the source
    column for each role (defaults per format; generic tables try common names). sep overrides
    the delimiter of a delimited format. Without a timestamp the file order is taken as
    chronological.

    strict=False is for validation: problems in values (a missing user/item column, null ids,
    non-numeric or negative timestamps and ratings) are left in the frame as found, for the
    Great Expectations suite to report; problems that stop any reading still raise.
    """
    path = Path(path)
    name = format or detect_format(path)
    if name not in FORMATS:
        raise DiffuRecError(f"unknown format {name!r}: use one of {', '.join(FORMAT_NAMES)}")
    spec = FORMATS[name]

    if name == "sequences":
        frame = _read_sequences(path, _decode(path, _read_bytes(path), " ", ["user", "item"]))
        if strict:
            _check_ids(path, frame, {"user": "user", "item": "item"})
        frame.attrs.update(format=name, source_columns={})
        log.info(
            "read %s: %d interactions of %d users (sequences)", path, len(frame), frame["user"].nunique()
        )
        return frame

    if name == "parquet":
        table = _table_from_parquet(path)
        table["__row__"] = np.arange(1, len(table) + 1, dtype=np.int64)
        delimiter = None
        columns = [str(c) for c in table.columns if c != "__row__"]
    else:
        delimiter = sep or spec.sep
        assert delimiter is not None  # sequences (no delimiter) are read before this point
        text = _decode(path, _read_bytes(path), delimiter, None if spec.header else list(spec.positional))
        if spec.header:
            head = text[: text.find("\n") + 1] if "\n" in text else text
            raw = [str(c) for c in _parse_table(path, head, spec, delimiter, nrows=0).columns]
            # RecBole headers are 'name:type'; the name alone is the column.
            columns = [(c.split(":")[0] if name == "inter" else c).strip() for c in raw]
            raw_of = dict(zip(columns, raw, strict=True))
        else:
            columns = list(spec.positional)
    if spec.header:
        source = {
            "user": _pick(path, columns, user_col, spec.user, "user", strict, delimiter),
            "item": _pick(path, columns, item_col, spec.item, "item", strict, delimiter),
            "timestamp": _pick(path, columns, time_col, spec.time, "time", False, delimiter),
            "rating": _pick(path, columns, rating_col, spec.rating, "rating", False, delimiter),
        }
    else:
        source = {role: role for role in ("user", "item", "timestamp", "rating")}
        _refuse_column_flags(name, spec.positional, user_col, item_col, time_col, rating_col)
    if spec.header and source["timestamp"] is None:
        log.warning(
            "%s: no time column (tried %s); the file order is taken as chronological "
            "(name one with --time-col)",
            path,
            ", ".join(spec.time),
        )
    if name != "parquet":
        assert delimiter is not None  # set above for every delimited format
        ids = [column for column in (source["user"], source["item"]) if column is not None]
        table = _parse_table(
            path,
            text,
            spec,
            delimiter,
            as_text=tuple(raw_of[c] for c in ids) if spec.header else tuple(columns.index(c) for c in ids),
        )
        table["__row__"] = _line_numbers(text, spec, len(table))
        if spec.header:
            table.columns = columns + ["__row__"]
        else:
            _check_field_count(path, table, len(columns), delimiter)
            table.columns = columns + ["__row__"]
    if len(table) == 0:
        raise DiffuRecError(f"{path}: has a header ({', '.join(map(str, columns))}) but no data rows")
    frame = pd.DataFrame({"row": table["__row__"].to_numpy()})
    for role in ("user", "item", "rating", "timestamp"):
        if source[role] is not None:
            values = table[source[role]]
            if role in ("user", "item") and not pd.api.types.is_string_dtype(values):
                values = values.astype("string")
            frame[role] = values.array
    frame = frame[[c for c in ("user", "item", "rating", "timestamp", "row") if c in frame]]
    if strict:
        _check_ids(path, frame, source)
        if "timestamp" in frame:
            frame["timestamp"] = _numeric(path, frame, "timestamp", source["timestamp"], False)
        if "rating" in frame:
            frame["rating"] = _numeric(path, frame, "rating", source["rating"], True)
    for role in ("user", "item"):
        if role in frame:
            frame[role] = frame[role].str.strip()
    frame.attrs.update(format=name, source_columns={k: v for k, v in source.items() if v})
    log.info("read %s (%s): %d interactions", path, name, len(frame))
    return frame


# --------------------------------------------------------------------------------------------
# The same reading into DuckDB, out of core: preprocess and validate read logs of any size
# this way. Ids stay DuckDB strings; only final integer arrays come back to Python.
# --------------------------------------------------------------------------------------------

# Bad input in a file up to this size is re-read by read_interactions, so its message is the
# in-memory reader's own; larger files get the same message built from DuckDB's counts.
EXACT_MESSAGE_BYTES = 256 << 20
# str.strip()'s ASCII whitespace: ids are stripped as read_interactions strips them.
_ID_WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


@dataclass
class LoadedLog:
    """What load_interactions put into DuckDB: the view `interactions` with columns user, item
    (stripped strings), rating and timestamp (DOUBLE, where the source has them; strict=False
    adds rating_text/timestamp_text as found), row (line number, or record number in Parquet and
    delimited files until line_numbers() maps them), pos (the order the rows were read in) and
    seq (the order of file position: row, then pos; equal to pos when reading a file)."""

    path: Path
    format: str
    source_columns: dict[str, str]
    rows: int
    roles: tuple[str, ...]  # which of "rating", "timestamp" the source has
    rows_are_records: bool = False  # row counts records of a text file, not its lines
    header: bool = False
    scan: str = ""  # the DuckDB table function that reads the file
    _blank_lines: np.ndarray | None = None

    def line_numbers(self, rows: np.ndarray) -> np.ndarray:
        """File rows as read_interactions numbers them (line numbers of text files)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self.rows_are_records:
            return rows
        if self._blank_lines is None:
            self._blank_lines = _blank_line_numbers(self.path)
        lines = rows + int(self.header)
        # Each empty line at or before a record's line pushes it one further.
        for blank in self._blank_lines:
            lines = lines + (lines >= blank)
        return lines


def sql_text(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _gzip_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _head_text(path: Path, limit: int = 1 << 16) -> str | None:
    """The file's first line, decoded (None when it is not UTF-8 or the gzip is broken)."""
    try:
        with gzip.open(path, "rb") if _gzip_magic(path) else open(path, "rb") as f:
            raw = f.read(limit)
    except (EOFError, OSError, zlib.error):
        return None
    raw = raw[: raw.index(b"\n") + 1] if b"\n" in raw else raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text[1:] if text.startswith("\ufeff") else text


def _blank_line_numbers(path: Path) -> np.ndarray:
    """Line numbers of the empty lines of a text file, read in chunks of whole lines."""
    found: list[int] = []
    lines_before = 0
    carry = b""
    with gzip.open(path, "rb") if _gzip_magic(path) else open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 24)
            text = carry + chunk
            cut = len(text) if not chunk else text.rfind(b"\n") + 1
            part, carry = text[:cut], text[cut:]
            for match in re.finditer(rb"(?m)^\r?$", part):
                if match.start() < len(part):
                    found.append(lines_before + part.count(b"\n", 0, match.start()) + 1)
            lines_before += part.count(b"\n")
            if not chunk:
                return np.asarray(found, dtype=np.int64)


def _stripped_sql(value: str) -> str:
    """An id without surrounding whitespace; trimming with a character set is slow in DuckDB,
    so only values that start or end with a byte <= ' ' (all of _ID_WHITESPACE) are trimmed."""
    return (
        f"(CASE WHEN {value}[1] > ' ' AND {value}[-1] > ' ' THEN {value} "
        f"ELSE trim({value}, {sql_text(_ID_WHITESPACE)}) END)"
    )


def _numeric_sql(column: str) -> str:
    """A text value as DOUBLE; NULL where it is missing or not a number (NaN included)."""
    value = f"TRY_CAST(trim({column}) AS DOUBLE)"
    return f"(CASE WHEN isnan({value}) THEN NULL ELSE {value} END)"


def _date_sql(column: str) -> str:
    """An ISO 8601 text value as unix seconds (the session is UTC: naive dates are UTC)."""
    return f"(epoch_us(TRY_CAST(trim({column}) AS TIMESTAMPTZ)) / 1e6)"


def _exact_error(path: Path, kwargs: dict, error: Exception | None) -> DiffuRecError | None:
    """read_interactions' own message for a problem DuckDB met (small files only), else None."""
    if path.stat().st_size <= EXACT_MESSAGE_BYTES:
        try:
            read_interactions(path, **kwargs)
        except DiffuRecError as exact:
            return exact
    return None


def _read_error(path: Path, kwargs: dict, error: Exception | None) -> DiffuRecError:
    """The message for a file DuckDB could not read: read_interactions' own where it has one."""
    exact = _exact_error(path, kwargs, error)
    if exact is not None:
        return exact
    if error is None:
        return DiffuRecError(f"{path}: has no data rows")
    detail = " ".join(str(error).split())[:300]
    if "Out of Memory" in detail:
        return DiffuRecError(
            f"{path}: DuckDB ran out of its memory limit; raise DIFFUREC_DUCKDB_MEMORY ({detail})"
        )
    return DiffuRecError(f"{path}: cannot read the table ({detail})")


def _csv_scan(path: Path, spec: FormatSpec, delimiter: str, width: int) -> str:
    """DuckDB's CSV reader set up like _parse_table: every field text, tab-like files unquoted."""
    quote = "''" if delimiter in ("\t", "::") else "'\"'"
    fields = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(width)) + "}"
    header = str(spec.header).lower()
    compression = "gzip" if _gzip_magic(path) else "none"
    return (
        f"read_csv({sql_text(str(path))}, delim={sql_text(delimiter)}, header={header}, "
        f"quote={quote}, escape={quote}, columns={fields}, null_padding={header}, strict_mode=true, "
        f"auto_detect=false, nullstr='', compression='{compression}')"
    )


def load_interactions(
    con,
    path,
    format: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    rating_col: str | None = None,
    sep: str | None = None,
    strict: bool = True,
) -> LoadedLog:
    """read_interactions into the DuckDB connection `con` (see LoadedLog): same rows, values and
    errors. Delimited formats and Parquet go through DuckDB's readers; sequence files are parsed
    by read_interactions and handed over."""
    import duckdb

    path = Path(path)
    kwargs: dict[str, Any] = dict(
        format=format,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        rating_col=rating_col,
        sep=sep,
        strict=strict,
    )
    name = format or detect_format(path)
    if name not in FORMATS:
        raise DiffuRecError(f"unknown format {name!r}: use one of {', '.join(FORMAT_NAMES)}")
    spec = FORMATS[name]
    if name == "sequences":
        frame = read_interactions(path, **kwargs)
        return load_frame(con, frame, path, name, frame.attrs.get("source_columns", {}))
    if not path.exists():
        raise DiffuRecError(f"{path}: no such file")
    if path.is_dir():
        raise DiffuRecError(f"{path}: is a folder, expected a file")

    delimiter = None
    if name == "parquet":
        if path.stat().st_size == 0:
            raise DiffuRecError(f"{path}: file is empty")
        scan = f"read_parquet({sql_text(str(path))})"
        try:
            schema = con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()
        except duckdb.Error as error:
            raise _read_error(path, kwargs, error) from None
        types = {str(r[0]): str(r[1]).upper() for r in schema}
        columns = list(types)
        field = {c: '"' + c.replace('"', '""') + '"' for c in columns}
    else:
        delimiter = sep or spec.sep
        assert delimiter is not None  # sequences (no delimiter) are read above
        head = _head_text(path)
        if head is None or not head.strip():
            raise _read_error(path, kwargs, None)
        if spec.header:
            raw = [str(c) for c in _parse_table(path, head, spec, delimiter, nrows=0).columns]
            columns = [(c.split(":")[0] if name == "inter" else c).strip() for c in raw]
        else:
            columns = list(spec.positional)
        scan = _csv_scan(path, spec, delimiter, len(columns))
        types = {c: "VARCHAR" for c in columns}
        field = {c: f"c{i}" for i, c in enumerate(columns)}

    if spec.header:
        source = {
            "user": _pick(path, columns, user_col, spec.user, "user", strict, delimiter),
            "item": _pick(path, columns, item_col, spec.item, "item", strict, delimiter),
            "timestamp": _pick(path, columns, time_col, spec.time, "time", False, delimiter),
            "rating": _pick(path, columns, rating_col, spec.rating, "rating", False, delimiter),
        }
        if source["timestamp"] is None:
            log.warning(
                "%s: no time column (tried %s); the file order is taken as chronological "
                "(name one with --time-col)",
                path,
                ", ".join(spec.time),
            )
    else:
        _refuse_column_flags(name, spec.positional, user_col, item_col, time_col, rating_col)
        source = {role: role for role in ("user", "item", "timestamp", "rating")}

    named = {role: column for role, column in source.items() if column is not None}
    roles = tuple(role for role in ("rating", "timestamp") if role in named)
    select: dict[str, str] = {}
    for role in ("user", "item"):
        if role in named:  # strict=False leaves a missing id column out, as read_interactions does
            select[role] = _stripped_sql(f"CAST({field[named[role]]} AS VARCHAR)")
    for role in roles:
        column, kind = field[named[role]], types[named[role]]
        if role == "timestamp" and kind.startswith("TIMESTAMP"):
            select[role] = f"epoch_us({column}) / 1e6"
        elif role == "timestamp" and kind == "DATE":
            select[role] = f"epoch_us(CAST({column} AS TIMESTAMP)) / 1e6"
        elif kind == "VARCHAR":
            select[role] = _numeric_sql(column)
        else:
            select[role] = f"TRY_CAST({column} AS DOUBLE)"
        if not strict:
            select[f"{role}_text"] = f"CAST({column} AS VARCHAR)"

    def create() -> int:
        listed = ", ".join(f'{sql} AS "{as_name}"' for as_name, sql in select.items())
        con.execute("DROP TABLE IF EXISTS interactions_read")
        con.execute(f"CREATE TABLE interactions_read AS SELECT {listed} FROM {scan}")
        return int(con.execute("SELECT count(*) FROM interactions_read").fetchone()[0])

    try:
        rows = create()
        if rows and "timestamp" in roles and types[named["timestamp"]] == "VARCHAR":
            numbers = con.execute("SELECT count(timestamp) FROM interactions_read").fetchone()[0]
            if numbers == 0:  # no value is a number: a column of ISO 8601 dates?
                column = field[named["timestamp"]]
                dates, present = con.execute(
                    f"SELECT count({_date_sql(column)}), count({column}) FROM {scan}"
                ).fetchone()
                if present and dates == present:
                    select["timestamp"] = _date_sql(column)
                    rows = create()
    except duckdb.Error as error:
        raise _read_error(path, kwargs, error) from None
    if rows == 0:
        raise _read_error(path, kwargs, None)
    # Rows keep the file's order: `rowid` numbers them as read.
    con.execute(
        "CREATE OR REPLACE VIEW interactions AS SELECT *, rowid + 1 AS row, rowid AS pos, rowid AS seq FROM "
        "interactions_read"
    )
    loaded = LoadedLog(
        path,
        name,
        named,
        rows,
        roles,
        rows_are_records=name != "parquet",
        header=spec.header,
        scan=scan,
    )
    if strict:
        _check_loaded(con, loaded, kwargs, field)
    log.info("read %s (%s): %d interactions", path, name, rows)
    return loaded


def load_frame(
    con, frame: pd.DataFrame, path, format: str | None = None, source_columns: dict | None = None
) -> LoadedLog:
    """A read_interactions frame into `con` as the view `interactions` (see LoadedLog)."""
    roles = tuple(role for role in ("rating", "timestamp") if role in frame)
    table = pd.DataFrame({role: frame[role].to_numpy(dtype=object) for role in ("user", "item")})
    for role in roles:
        table[role] = frame[role].to_numpy(dtype=np.float64)
    table["row"] = frame["row"].to_numpy(dtype=np.int64)
    # Ties in time keep file order: the rank by (row, position) (sequence lines share a row).
    seq = np.empty(len(table), dtype=np.int64)
    seq[np.lexsort((np.arange(len(table)), table["row"].to_numpy()))] = np.arange(len(table))
    table["seq"] = seq
    con.register("interactions_frame", table)
    con.execute("DROP TABLE IF EXISTS interactions_read")
    con.execute("CREATE TABLE interactions_read AS SELECT * FROM interactions_frame")
    con.unregister("interactions_frame")
    con.execute("CREATE OR REPLACE VIEW interactions AS SELECT *, rowid AS pos FROM interactions_read")
    return LoadedLog(
        Path(path),
        format or frame.attrs.get("format") or "frame",
        dict(source_columns if source_columns is not None else frame.attrs.get("source_columns", {})),
        len(frame),
        roles,
    )


def _check_loaded(con, loaded: LoadedLog, kwargs: dict, field: dict[str, str]) -> None:
    """read_interactions' strict checks (empty ids, non-numeric or negative timestamps, non-numeric
    ratings), in its order, computed by DuckDB over every row."""
    checks = [
        ("user", "empty", '"user" IS NULL OR "user" = \'\''),
        ("item", "empty", "item IS NULL OR item = ''"),
    ]
    if "timestamp" in loaded.roles:
        checks += [("timestamp", "number", "timestamp IS NULL"), ("timestamp", "negative", "timestamp < 0")]
    if "rating" in loaded.roles:
        checks += [("rating", "number", "rating IS NULL")]
    listed = ", ".join(f"count(*) FILTER (WHERE {c}), min(pos) FILTER (WHERE {c})" for _, _, c in checks)
    found = con.execute(f"SELECT {listed} FROM interactions").fetchone()
    for index, (role, kind, _) in enumerate(checks):
        count, first = found[2 * index], found[2 * index + 1]
        if not count:
            continue
        path = loaded.path
        exact = _exact_error(path, kwargs, None)
        if exact is not None:
            raise exact
        column = loaded.source_columns[role]
        row = int(loaded.line_numbers(np.asarray([first + 1]))[0]) if loaded.rows_are_records else first + 1
        if kind == "empty":
            raise _empty_id_error(path, role, int(count), row, column)
        if kind == "negative":
            value = con.execute(f"SELECT {role} FROM interactions WHERE pos = {int(first)}").fetchone()[0]
            raise _negative_error(path, role, value, row, column)
        shown = con.execute(
            f"SELECT {field[column]} FROM {loaded.scan} LIMIT 1 OFFSET {int(first)}"
        ).fetchone()[0]
        raise _not_a_number_error(path, role, shown, int(count), row, column)


DUCKDB_MEMORY_LIMIT = "2GB"  # DIFFUREC_DUCKDB_MEMORY overrides; DuckDB spills the rest to disk
DUCKDB_THREADS = 2  # DIFFUREC_DUCKDB_THREADS overrides


@contextmanager
def duckdb_session(work_dir) -> Iterator:
    """A DuckDB connection whose database and spill files live in a fresh folder inside
    work_dir (removed afterwards), with a memory limit, so a log larger than memory streams
    through disk instead of failing. Timestamps are read in UTC."""
    import duckdb

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".duckdb-", dir=work_dir))
    con = duckdb.connect(":memory:")
    try:
        con.execute(
            f"SET memory_limit = {sql_text(os.environ.get('DIFFUREC_DUCKDB_MEMORY', DUCKDB_MEMORY_LIMIT))}"
        )
        con.execute(f"SET threads = {int(os.environ.get('DIFFUREC_DUCKDB_THREADS', DUCKDB_THREADS))}")
        con.execute(f"SET temp_directory = {sql_text(str(folder / 'spill'))}")
        con.execute("SET preserve_insertion_order = true")  # rowid = the order rows were read in
        con.execute("SET enable_progress_bar = false")
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()
        shutil.rmtree(folder, ignore_errors=True)
