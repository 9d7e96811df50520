"""One exception type for every user-facing failure.

The command line prints a DiffuRecError as one line (no traceback) and exits non-zero, so a
message must say what is wrong and where: the file, and the row and column when known.
"""


class DiffuRecError(Exception):
    """A failure caused by the user's input or environment, not by a bug."""


def located(path, message, row=None, column=None):
    """Build a DiffuRecError whose text names the file, and the row/column when known."""
    where = str(path)
    if row is not None:
        where += f", row {row}"
    if column is not None:
        where += f", column {column!r}"
    return DiffuRecError(f"{where}: {message}")
