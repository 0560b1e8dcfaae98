"""Evaluation metrics for the three task families, as thin wrappers over the
libraries the papers' numbers come from: seqeval (strict IOB2 entity F1, as in
P-Tuning v2's NER tables), sacrebleu (corpus BLEU with several references per
source, as in Prefix-Tuning's E2E results) and rouge-score (ROUGE-L).  Accuracy
and macro-F1 are a few lines of counting, written here because scikit-learn is
not a dependency.  Scales follow each field's habit: accuracy, macro-F1 and
entity precision/recall/F1 are fractions in [0, 1]; BLEU and ROUGE-L are in
[0, 100].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sacrebleu.metrics import BLEU

__all__ = ["accuracy", "macro_f1", "entity_prf", "bleu", "rouge_l", "compute"]


def _check_pairs(pred: Sequence[object], gold: Sequence[object], what: str) -> None:
    if len(pred) != len(gold):
        raise ValueError(f"{what}: {len(pred)} predictions but {len(gold)} gold items; "
                         f"they must pair up one to one")
    if not gold:
        raise ValueError(f"{what}: nothing to score (no examples)")


def accuracy(pred: list[str], gold: list[str]) -> float:
    """Fraction of exact matches."""
    _check_pairs(pred, gold, "accuracy")
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def macro_f1(pred: list[str], gold: list[str]) -> float:
    """Unweighted mean of per-class F1 over every class seen in gold or predictions.

    Same definition as scikit-learn's ``f1_score(average="macro")``: a class that
    is predicted but never gold (or the reverse) counts with F1 = 0.
    """
    _check_pairs(pred, gold, "macro_f1")
    true_pos: Counter[str] = Counter(g for p, g in zip(pred, gold) if p == g)
    n_pred, n_gold = Counter(pred), Counter(gold)
    scores = []
    for label in set(n_pred) | set(n_gold):
        # F1 = 2TP / (2TP + FP + FN) = 2TP / (#predicted + #gold); no 0/0 here since
        # every label in the union was predicted or is gold at least once.
        scores.append(2 * true_pos[label] / (n_pred[label] + n_gold[label]))
    return sum(scores) / len(scores)


def entity_prf(pred_tags: list[list[str]], gold_tags: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 (seqeval, strict mode, IOB2 scheme).

    Strict mode counts an entity only when its type and exact span match, so an
    ill-formed ``I-`` start is not silently repaired into an entity.
    """
    _check_pairs(pred_tags, gold_tags, "entity_prf")
    for index, (p, g) in enumerate(zip(pred_tags, gold_tags)):
        if len(p) != len(g):
            raise ValueError(f"entity_prf: sentence {index} has {len(p)} predicted tags but "
                             f"{len(g)} gold tags")
    # zero_division=0: no predicted entities means precision 0, not a warning.
    # seqeval imports scikit-learn, and rouge-score nltk (about 2 s each): imported where they score, so that
    # commands that score neither start faster.
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    kwargs = dict(mode="strict", scheme=IOB2, zero_division=0)
    return {
        "precision": float(precision_score(gold_tags, pred_tags, **kwargs)),
        "recall": float(recall_score(gold_tags, pred_tags, **kwargs)),
        "f1": float(f1_score(gold_tags, pred_tags, **kwargs)),
    }


def _check_references(hypotheses: list[str], references: list[list[str]], what: str) -> None:
    _check_pairs(hypotheses, references, what)
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"{what}: references[{index}] must be a non-empty list of "
                             f"strings (one list per hypothesis), got {refs!r}")


def bleu(hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, exp smoothing), 0-100.

    ``references[i]`` holds every reference of hypothesis ``i``; counts may differ.
    """
    _check_references(hypotheses, references, "bleu")
    # sacrebleu wants one stream per reference position, all as long as the
    # hypotheses; a None entry means "this segment has fewer references" and is
    # dropped per segment (an empty string would instead count as a reference).
    width = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references]
               for k in range(width)]
    return float(BLEU().corpus_score(hypotheses, streams).score)  # type: ignore[arg-type]


def rouge_l(hypotheses: list[str], references: list[list[str]]) -> float:
    """Mean over hypotheses of the best ROUGE-L F-measure among its references, x100."""
    _check_references(hypotheses, references, "rouge_l")
    from rouge_score.rouge_scorer import RougeScorer  # see entity_prf

    scorer = RougeScorer(["rougeL"])
    # score_multi keeps, per hypothesis, the reference with the highest F-measure.
    total = sum(scorer.score_multi(refs, hyp)["rougeL"].fmeasure
                for hyp, refs in zip(hypotheses, references))
    return 100.0 * total / len(hypotheses)


def compute(task: str, predictions: list, golds: list) -> dict[str, float]:
    """All metrics of ``task``.

    classification: ``predictions``/``golds`` are label strings -> accuracy, macro_f1.
    token-classification: lists of tag lists -> precision, recall, f1.
    generation: ``predictions`` are strings; ``golds`` are reference lists (a plain
    string counts as a single reference) -> bleu, rouge_l.
    """
    if task == "classification":
        return {"accuracy": accuracy(predictions, golds), "macro_f1": macro_f1(predictions, golds)}
    if task == "token-classification":
        return entity_prf(predictions, golds)
    if task == "generation":
        refs = [[g] if isinstance(g, str) else list(g) for g in golds]
        return {"bleu": bleu(predictions, refs), "rouge_l": rouge_l(predictions, refs)}
    raise ValueError(f"unknown task {task!r}; expected classification, "
                     f"token-classification or generation")
