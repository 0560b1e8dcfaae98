"""The model card (``README.md``) every export folder carries, in the Hugging Face Hub's format.

YAML front matter (written by ``huggingface_hub``'s :class:`ModelCardData`, so the Hub reads it as
it reads any card): ``library_name``, ``base_model`` where the base model's name or path is known,
and ``tags``; then a body with each task's method, soft tokens, where the prompt enters, its
parameters, how to load the folder, and the run's data and metrics when the caller passes them
(:class:`RunInfo`). Loading a folder never reads its card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from huggingface_hub import ModelCardData

Format = Literal["softprompt", "peft"]

_WHERE = {
    "prompt-tuning": "soft tokens in the input",
    "p-tuning": "soft tokens in the input",
    "prefix-tuning": "keys and values in every attention layer",
    "p-tuning-v2": "keys and values in every attention layer",
}


@dataclass
class RunInfo:
    """What a training run knows about itself, for the card; every field is optional."""

    data: str | None = None
    """The training data: a file, a dataset name, or a short description."""
    examples: int | None = None
    """Number of training examples."""
    steps: int | None = None
    """Optimizer steps taken."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Scores of the exported prompt, e.g. {"dev accuracy": 0.81}."""


def _where(config: dict[str, Any]) -> str:
    where = _WHERE.get(config["method"], config["method"])
    if config.get("template"):
        return f"template `{config['template']}`"
    if config.get("placement") not in (None, "prefix"):
        where += f" ({config['placement']})"
    if config.get("stacks"):
        where += f" ({', '.join(config['stacks'])} attention)"
    if config.get("layers"):
        where = where.replace("every attention layer", f"attention layers {config['layers'][0]} to {config['layers'][1] - 1}")
    return where


def model_card(
    *,
    base_model: str | None,
    tasks: dict[str, dict[str, Any]],
    num_parameters: dict[str, int],
    format: Format = "softprompt",
    run: RunInfo | None = None,
) -> str:
    """The README.md text for an export folder.

    tasks: task name -> ``TaskConfig.to_dict()``; num_parameters: task name -> stored values.
    A PEFT-format folder is labelled ``library_name: peft``, the library that loads it on the Hub.
    """
    methods = sorted({config["method"] for config in tasks.values()})
    tags = ["softprompt", *methods] + (["peft"] if format == "peft" else [])
    extra = {"base_model_relation": "adapter"} if base_model else {}
    data = ModelCardData(
        library_name="peft" if format == "peft" else "softprompt",
        base_model=base_model or None,
        tags=tags,
        metrics=sorted(run.metrics) if run and run.metrics else None,
        **extra,
    )
    base = f"the frozen base model `{base_model}`" if base_model else "a frozen base model whose name was not recorded"
    lines = [
        f"# {', '.join(methods)} for {base_model or 'a frozen model'}",
        "",
        f"Soft prompts for {base}, exported by softprompt; they leave the base model's weights unchanged.",
        "",
        "| task | method | soft tokens | where the prompt enters | head | labels | parameters |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, config in tasks.items():
        labels = ", ".join(config.get("labels") or []) or "–"
        lines.append(
            f"| {name} | {config['method']} | {config.get('num_virtual_tokens')} | {_where(config)} | "
            f"{config.get('head') or '–'} | {labels} | {num_parameters.get(name, 0):,} |"
        )
    lines += ["", "## Loading", "", "```python"]
    if format == "peft":
        lines += ["from peft import PeftModel", "", 'model = PeftModel.from_pretrained(base_model, "path/to/this/folder")',
                  "# or, with softprompt's placement of the prompt:", "import softprompt", "",
                  'pm = softprompt.load(base_model, "path/to/this/folder", tokenizer=tokenizer)']
    else:
        lines += ["import softprompt", "", 'pm = softprompt.load(base_model, "path/to/this/folder", tokenizer=tokenizer)']
    lines += ["```", "", "## Training", ""]
    if run is None or (run.data is None and run.examples is None and run.steps is None and not run.metrics):
        lines.append("Data and metrics were not recorded with this export.")
    else:
        facts = [("data", run.data), ("examples", run.examples), ("steps", run.steps)]
        lines += [f"- {key}: {value}" for key, value in facts if value is not None]
        if run.metrics:
            lines += ["", "| metric | value |", "| --- | --- |"]
            lines += [f"| {key} | {value:.4g} |" for key, value in run.metrics.items()]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
