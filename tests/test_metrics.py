"""Tests for softprompt.metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from softprompt.metrics import accuracy, bleu, compute, entity_prf, macro_f1, rouge_l


def test_accuracy():
    assert accuracy(["a", "b", "b", "c"], ["a", "b", "c", "c"]) == 0.75
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_macro_f1_by_hand():
    pred, gold = ["a", "a", "b", "c"], ["a", "b", "b", "b"]
    # a: TP 1, predicted 2, gold 1 -> F1 2/3; b: TP 1, predicted 1, gold 3 -> 1/2;
    # c: predicted once, never gold -> 0.  Mean over the three classes:
    assert macro_f1(pred, gold) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert macro_f1(["x", "y"], ["x", "y"]) == 1.0


def test_entity_prf_strict_iob2():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O"]]
    # gold entities: PER(0-1), LOC(3), ORG(0 of sentence 2) = 3.
    # predicted: PER(0-1) right, ORG(3) wrong type; a sentence-initial I-ORG is no
    # entity in strict IOB2 (lenient conlleval would count it and match gold ORG).
    scores = entity_prf(pred, gold)
    assert scores["precision"] == pytest.approx(1 / 2)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))  # 0.4


def test_entity_prf_no_predicted_entities_is_zero_not_an_error():
    assert entity_prf([["O", "O"]], [["B-PER", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="sentence 0"):
        entity_prf([["O"]], [["B-PER", "O"]])


def test_bleu_single_reference_by_hand_and_against_sacrebleu():
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so brevity penalty 1.
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu([hyp], [[ref]]) == pytest.approx(expected)
    assert bleu([hyp], [[ref]]) == pytest.approx(sacrebleu.corpus_bleu([hyp], [[ref]]).score)
    assert bleu([ref], [[ref]]) == pytest.approx(100.0)


def test_bleu_three_references_and_a_variable_count():
    hyps = ["a b c d", "e f"]
    refs = [["a b x y", "x b c d", "q q q q"], ["e f"]]
    # corpus counts: 1-grams 6/6, 2-grams 4/4, 3-grams 1/2 ("b c d" in ref 2),
    # 4-grams 0/1 -> sacrebleu's exp smoothing makes it 1/(2*1); lengths 6 vs 6.
    expected = 100 * (1 * 1 * 0.5 * 0.5) ** 0.25
    assert bleu(hyps, refs) == pytest.approx(expected)
    assert math.isclose(expected, 100 / math.sqrt(2))
    # Padding the short reference list with a copy of its reference changes no count,
    # so sacrebleu's own equal-length-streams call must agree.
    padded = [["a b x y", "e f"], ["x b c d", "e f"], ["q q q q", "e f"]]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, padded).score)


def test_bleu_rejects_missing_references():
    with pytest.raises(ValueError, match=r"references\[1\]"):
        bleu(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="non-empty list"):
        bleu(["a"], ["a"])  # type: ignore[list-item]


def test_rouge_l_takes_the_best_reference():
    # "the cat sat" vs "the cat": LCS 2, P 2/3, R 1 -> F 0.8 (vs "cat sat here": F 2/3).
    # "a b" vs "c d": no overlap -> 0.  Mean 0.4, times 100.
    assert rouge_l(["the cat sat", "a b"], [["the cat", "cat sat here"], ["c d"]]) == pytest.approx(40.0)


def test_compute_dispatches_by_task():
    assert compute("classification", ["a", "b"], ["a", "a"]) == {
        "accuracy": 0.5, "macro_f1": pytest.approx((2 / 3 + 0) / 2)}
    assert compute("token-classification", [["B-PER"]], [["B-PER"]]) == {
        "precision": 1.0, "recall": 1.0, "f1": 1.0}
    same = "the cat sat on the mat"  # 4+ tokens: corpus BLEU of a 3-token text is 0
    scores = compute("generation", [same], [same])  # a plain string is one reference
    assert scores["bleu"] == pytest.approx(100.0) and scores["rouge_l"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="unknown task"):
        compute("regression", [1.0], [1.0])
