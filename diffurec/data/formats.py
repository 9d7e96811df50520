"""The interaction-log formats: one table of how each is laid out and how its files are named.

Kept apart from the readers (which import pandas) so the command line can list the formats in
`--help` cheaply. A new delimited format is one entry here; `read_interactions`
(diffurec/data/readers.py) reads it from its entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffurec.errors import DiffuRecError


@dataclass(frozen=True)
class FormatSpec:
    """How one format is laid out (delimiter, header, default source column names) and which file
    names imply it."""

    name: str
    description: str
    sep: str | None  # None: not a delimited table (parquet, sequences)
    header: bool
    user: tuple[str, ...] = ()
    item: tuple[str, ...] = ()
    time: tuple[str, ...] = ()
    rating: tuple[str, ...] = ()
    positional: tuple[str, ...] = ()  # column names for headerless files
    file_names: tuple[str, ...] = ()  # lower-case names that imply the format (checked first)
    suffixes: tuple[str, ...] = ()  # lower-case endings that imply it


# Candidate source names for generic tables, tried in order when no --*-col is given.
GENERIC_USER = ("user_id", "user", "userId", "userid", "UserID", "reviewerID", "visitorid")
GENERIC_ITEM = ("item_id", "item", "itemId", "itemid", "movieId", "MovieID", "movie_id", "asin", "product_id")
GENERIC_TIME = ("timestamp", "time", "Timestamp", "unixReviewTime", "ts", "datetime", "date")
GENERIC_RATING = ("rating", "Rating", "score", "overall")
GENERIC = {"user": GENERIC_USER, "item": GENERIC_ITEM, "time": GENERIC_TIME, "rating": GENERIC_RATING}
MOVIELENS_COLUMNS = ("user", "item", "rating", "timestamp")

FORMATS = {
    spec.name: spec
    for spec in (
        FormatSpec(
            "inter",
            "RecBole atomic .inter file (tab-separated, 'name:type' header)",
            "\t",
            True,
            ("user_id",),
            ("item_id",),
            ("timestamp",),
            ("rating",),
            suffixes=(".inter",),
        ),
        FormatSpec(
            "ml-100k",
            "MovieLens 100K u.data (tab-separated: user item rating timestamp)",
            "\t",
            False,
            positional=MOVIELENS_COLUMNS,
            file_names=("u.data",),
        ),
        FormatSpec(
            "ml-1m",
            "MovieLens 1M ratings.dat (UserID::MovieID::Rating::Timestamp)",
            "::",
            False,
            positional=MOVIELENS_COLUMNS,
            file_names=("ratings.dat",),
            suffixes=(".dat",),
        ),
        FormatSpec(
            "movielens-csv",
            "MovieLens ratings.csv (userId,movieId,rating,timestamp)",
            ",",
            True,
            ("userId",),
            ("movieId",),
            ("timestamp",),
            ("rating",),
            file_names=("ratings.csv",),
        ),
        FormatSpec("csv", "comma-separated table with a header", ",", True, **GENERIC, suffixes=(".csv",)),
        FormatSpec(
            "tsv", "tab-separated table with a header", "\t", True, **GENERIC, suffixes=(".tsv", ".tab")
        ),
        FormatSpec("parquet", "Parquet table", None, True, **GENERIC, suffixes=(".parquet", ".pq")),
        FormatSpec(
            "sequences",
            "one user per line: 'user item1 item2 ...' in time order",
            None,
            False,
            suffixes=(".txt",),
        ),
    )
}
FORMAT_NAMES = tuple(FORMATS)


def detect_format(path: str | Path) -> str:
    """The format implied by a file's name (a trailing .gz is ignored): an exact file name of
    any format first, then the first format (in table order) whose suffix it has."""
    path = Path(path)
    name = (path.name[:-3] if path.name.endswith(".gz") else path.name).lower()
    for spec in FORMATS.values():
        if name in spec.file_names:
            return spec.name
    for spec in FORMATS.values():
        if spec.suffixes and name.endswith(spec.suffixes):
            return spec.name
    raise DiffuRecError(
        f"{path}: cannot tell the format from the file name; give --format ({', '.join(FORMAT_NAMES)})"
    )


def format_help() -> str:
    """The `--format` help of the command line, from the table."""
    listed = "; ".join(f"{spec.name}: {spec.description}" for spec in FORMATS.values())
    return f"input format ({listed}); detected from the file name when omitted; .gz is fine"
