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
import re
import zlib
from pathlib import Path

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
        missing = values.isna().to_numpy()
        if values.dtype == object:
            missing |= values.astype(str).str.strip().eq("").to_numpy() & ~missing
        if missing.any():
            first = int(np.flatnonzero(missing)[0])
            raise located(
                path,
                f"{role} id is empty ({int(missing.sum())} row(s) with no {role} id)",
                row=int(frame["row"].iat[first]),
                column=source[role],
            )


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
        what = "is empty" if pd.isna(shown) else f"{shown!r} is not a number"
        unit = " (unix seconds or an ISO 8601 date)" if role == "timestamp" else ""
        raise located(
            path,
            f"{role} {what}{unit}; {int(bad.sum())} such row(s)",
            row=int(frame["row"].iat[first]),
            column=source,
        )
    if not allow_negative and (values < 0).any():
        first = int(np.flatnonzero((values < 0).to_numpy())[0])
        raise located(
            path, f"{role} {values.iat[first]:g} is negative", row=int(frame["row"].iat[first]), column=source
        )
    return values


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
        for role, given in (
            ("user", user_col),
            ("item", item_col),
            ("time", time_col),
            ("rating", rating_col),
        ):
            if given is not None:
                raise DiffuRecError(
                    f"--{role}-col does not apply to format {name!r} "
                    f"(it has no header; its columns are {', '.join(spec.positional)})"
                )
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
