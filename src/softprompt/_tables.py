"""Splitting CSV/TSV text into rows, deciding whether its quotes quote or are part of the text.

Two conventions share the ``.csv``/``.tsv`` extensions.  Writers such as pandas, spreadsheets
and ``datasets`` follow RFC 4180: a field holding the separator, a newline or a quote is wrapped
in quotes, with its inner quotes doubled.  GLUE-style TSVs never quote: a quote belongs to the
text and is often unbalanced (``" the movie ...``).  The two readings differ only where a field
starts with a quote, so :func:`split_rows` reads such a file both ways and keeps the reading whose
every row has the header's width; where both fit it needs a writer's mark (a doubled quote inside
a quoted field, or a column quoted on every row) before it drops quotes from a TSV, and where
neither fits or nothing tells them apart it raises :class:`TableError` naming the line and the
cause.  Line numbers are physical lines of the file (1-based, counting ``\\n``); a row spanning
several lines has the number of the line where it starts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Literal, NamedTuple

__all__ = ["QUOTINGS", "Quoting", "Row", "TableError", "split_rows"]

Quoting = Literal["auto", "rfc4180", "none"]
QUOTINGS: tuple[Quoting, ...] = ("auto", "rfc4180", "none")
_FIELD_LIMIT = 2**31 - 1  # the largest a C long holds on every platform
_FIX = ("pass quoting='rfc4180' (--quoting rfc4180) to read quotes as quoting, or quoting='none' "
        "(--quoting none) to keep them in the text")


class TableError(ValueError):
    """The rows of a table cannot be told apart; ``line`` is where the reader should look."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class Row(NamedTuple):
    line: int  # physical line where the row starts
    # A tuple, not a list: the garbage collector stops tracking tuples of strings, and
    # tracking 10^5 row lists made the collector's passes cost more than the reading.
    cells: tuple[str, ...]


@dataclass(frozen=True)
class _Problem:
    line: int
    cause: str


def _literal(text: str, delimiter: str) -> list[Row]:
    # GLUE style: one row per line, quotes are text.  Split on "\n" only, so that a
    # stray "\r" or U+2028 inside a sentence does not shift later line numbers.
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        cells = tuple(line.rstrip("\r").split(delimiter))
        if any(cell.strip() for cell in cells):
            rows.append(Row(number, cells))
    return rows


def _quoted(text: str, delimiter: str) -> tuple[list[Row], _Problem | None]:
    """RFC 4180 reading; strict, so a malformed quote is a problem rather than a merged field."""
    lines = [line + "\n" for line in text.split("\n")]  # one item per physical line: line_num counts them
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    rows: list[Row] = []
    start = 1
    # csv refuses fields over 128 KiB, a limit set for the whole process; a long document is
    # a valid field, so lift it for this reading only.
    previous_limit = csv.field_size_limit(_FIELD_LIMIT)
    try:
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return rows, None
            except csv.Error as exc:
                return rows, _csv_problem(str(exc), start, reader.line_num)
            if any(cell.strip() for cell in cells):
                rows.append(Row(start, tuple(cells)))
            start = reader.line_num + 1
    finally:
        csv.field_size_limit(previous_limit)


def _csv_problem(message: str, start: int, end: int) -> _Problem:
    if "unexpected end of data" in message:
        return _Problem(start, f"the quote that opens a field in the row of line {start} is never "
                               f"closed (the file ends inside it)")
    if "expected after" in message:
        # Point at the opening quote: in a GLUE-style file that is where the trouble starts.
        where = "" if end == start else f" (the field opened with a quote at line {start})"
        return _Problem(start, f"a quoted field's closing quote is followed by more text at line "
                               f"{end}{where}, where the separator should come")
    return _Problem(end, message)


def _width_problem(rows: list[Row], width: int | None) -> _Problem | None:
    if not rows:
        return None
    expected = width if width is not None else len(rows[0].cells)
    for row in rows:
        if len(row.cells) != expected:
            return _Problem(row.line, f"{len(row.cells)} column{'s' if len(row.cells) != 1 else ''} "
                                      f"where the header has {expected}")
    return None


def _wrapped(cell: str) -> bool:
    return len(cell) >= 2 and cell[0] == cell[-1] == '"' and '"' not in cell[1:-1].replace('""', "")


def _writer_mark(rows: list[Row]) -> _Problem | None:
    """Where the literal reading shows a quoting writer at work: doubled quotes, or quoting by column."""
    for row in rows:
        for cell in row.cells:
            if _wrapped(cell) and '""' in cell[1:-1]:
                return _Problem(row.line, f"a quoted field with doubled quotes, {_shown(cell)}")
    if len(rows) >= 2:
        for column in range(min(len(row.cells) for row in rows)):
            if all(_wrapped(row.cells[column]) for row in rows):
                return _Problem(rows[0].line, f"column {column + 1} quoted on every row")
    return None


def _shown(cell: str) -> str:
    return repr(cell if len(cell) <= 40 else cell[:37] + "...")


def _first_difference(quoted: list[Row], literal: list[Row]) -> _Problem:
    for q, lit in zip(quoted, literal):
        if q != lit:
            cell = next((c for c in lit.cells if c.startswith('"')), lit.cells[0])
            return _Problem(lit.line, f"the field {_shown(cell)} starts with a quote, which may be CSV "
                                      f"quoting (RFC 4180, as pandas writes) or part of the text "
                                      f"(GLUE style), and nothing else in the file tells which")
    line = (literal[len(quoted)] if len(literal) > len(quoted) else quoted[len(literal)]).line
    return _Problem(line, "quoted fields span lines here, or the quotes are part of the text; "
                          "nothing in the file tells which")


def split_rows(text: str, delimiter: str, quoting: Quoting = "auto",
               width: int | None = None) -> list[Row]:
    """Non-blank rows of ``text``; ``width`` is the column count when the file has no header row.

    ``quoting`` forces a reading: ``"rfc4180"`` (quotes quote) or ``"none"`` (quotes are text).
    """
    if quoting not in QUOTINGS:
        raise ValueError(f"unknown quoting {quoting!r}; use one of {list(QUOTINGS)}")
    if quoting == "none" or (quoting == "auto" and '"' not in text):
        return _literal(text, delimiter)
    quoted, failure = _quoted(text, delimiter)
    if quoting == "rfc4180":
        if failure is not None:
            raise TableError(failure.line, f"{failure.cause}; fix the quoting, or pass quoting='none' "
                                           f"(--quoting none) if the quotes are part of the text")
        return quoted
    literal = _literal(text, delimiter)
    if failure is None and quoted == literal:
        return quoted  # quotes only inside fields, where both readings keep them
    quoted_problem = failure or _width_problem(quoted, width)
    literal_problem = _width_problem(literal, width)
    mark = _writer_mark(literal)
    if quoted_problem is None and (literal_problem is not None or mark is not None or delimiter == ","):
        return quoted  # a CSV is RFC 4180 by definition; a TSV needs the writer's evidence
    if quoted_problem is None:
        ambiguous = _first_difference(quoted, literal)
        raise TableError(ambiguous.line, f"{ambiguous.cause}; {_FIX}")
    if literal_problem is None:
        if mark is None:
            return literal
        raise TableError(quoted_problem.line,
                         f"{quoted_problem.cause}; the rest of the file is quoted as in CSV "
                         f"(line {mark.line}: {mark.cause}), so fix the quoting there, or pass "
                         f"quoting='none' (--quoting none) if the quotes are part of the text")
    # Neither reading fits: name both problems, first the one of the reading that the
    # writer's mark points to, or else of the reading that gets further into the file.
    readings = [(quoted_problem, "with quotes as CSV quoting (RFC 4180)"),
                (literal_problem, "with quotes as text (GLUE style)")]
    if mark is None and literal_problem.line >= quoted_problem.line:
        readings.reverse()
    (first, how_first), (second, how_second) = readings
    raise TableError(first.line, f"no reading fits: {how_first}, {first.cause}; {how_second}, "
                                 f"line {second.line}: {second.cause}; fix the row that is wrong "
                                 f"(a field holding the separator, a newline or a quote must be "
                                 f"wrapped in quotes, with its quotes doubled)")
