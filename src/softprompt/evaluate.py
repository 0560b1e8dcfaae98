"""Scoring a prompt on labelled examples: predictions in batches, then ``metrics.compute``.

The score that picks the best checkpoint is one number per task kind: accuracy for
classification, entity F1 for token classification, BLEU for generation.
"""

from __future__ import annotations

import torch

from . import metrics
from ._collate import Collator
from .data import Example

PRIMARY = {"classification": "accuracy", "token-classification": "f1", "generation": "bleu"}


@torch.no_grad()
def predict(collator: Collator, examples: list[Example], batch_size: int = 32, max_new_tokens: int = 64) -> list:
    was_training = collator.pm.training
    collator.pm.eval()
    try:
        out: list = []
        for start in range(0, len(examples), batch_size):
            out += collator.predict(examples[start : start + batch_size], max_new_tokens=max_new_tokens)
        return out
    finally:
        collator.pm.train(was_training)


def evaluate(collator: Collator, examples: list[Example], batch_size: int = 32,
             max_new_tokens: int = 64) -> tuple[dict[str, float], list]:
    """(metrics, predictions) of the PromptModel behind ``collator`` on ``examples``."""
    predictions = predict(collator, examples, batch_size, max_new_tokens)
    return metrics.compute(collator.kind, predictions, collator.golds(examples)), predictions
