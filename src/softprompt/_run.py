"""The run folder a training writes and that eval, generate and inspect read back.

    RUN/config.yaml     resolved train arguments (the base model's name or path among them)
    RUN/metrics.jsonl   one JSON object per log or eval event
    RUN/curves.png      training loss and dev metric against the step
    RUN/checkpoint/     PromptModel.save + trainer_state.pt (optimizer, scheduler, RNG, step)
    RUN/best/           export of the prompt with the best dev score
    RUN/prompt/         export at the end of training

Every file is written beside its destination and moved into place with ``os.replace``, so a run
killed at any instant leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .checkpoint import CheckpointError, replace_folder
from .model import PromptModel

CONFIG, METRICS, CURVES = "config.yaml", "metrics.jsonl", "curves.png"
CHECKPOINT, BEST, PROMPT, STATE = "checkpoint", "best", "prompt", "trainer_state.pt"


def write_config(run: Path, values: dict[str, Any]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    temp = run / f".{CONFIG}.tmp"
    temp.write_text(yaml.safe_dump(values, sort_keys=False))
    os.replace(temp, run / CONFIG)


def read_config(run: Path) -> dict[str, Any]:
    path = run / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run} is not a softprompt run folder: it has no {CONFIG}; "
                              f"pass the --out folder of a `softprompt train` run")
    return yaml.safe_load(path.read_text()) or {}


def log_event(run: Path, event: dict[str, Any]) -> None:
    with open(run / METRICS, "a") as f:
        f.write(json.dumps(event) + "\n")


def read_events(run: Path) -> list[dict[str, Any]]:
    path = run / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def plot_curves(run: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = read_events(run)
    train = [e for e in events if e.get("event") == "train"]
    dev = [e for e in events if e.get("event") == "eval" and metric in e]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([e["step"] for e in train], [e["loss"] for e in train])
    left.set(xlabel="step", ylabel="training loss", title="loss")
    right.plot([e["step"] for e in dev], [e[metric] for e in dev], marker="o")
    right.set(xlabel="step", ylabel=f"dev {metric}", title=f"dev {metric}")
    figure.tight_layout()
    temp = run / f".{CURVES}.tmp.png"
    figure.savefig(temp)
    plt.close(figure)
    os.replace(temp, run / CURVES)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run: Path, pm: PromptModel, state: dict[str, Any]) -> None:
    """Prompt + trainer state into RUN/checkpoint, swapped in as a whole."""
    staging = run / f".{CHECKPOINT}.new"
    shutil.rmtree(staging, ignore_errors=True)
    pm.save(staging)
    torch.save(state, staging / f".{STATE}.tmp")
    os.replace(staging / f".{STATE}.tmp", staging / STATE)
    replace_folder(staging, run / CHECKPOINT)


def checkpoint_dir(run: Path) -> Path | None:
    """The last complete checkpoint (a kill between the two renames leaves it at .old)."""
    for folder in (run / CHECKPOINT, run / f".{CHECKPOINT}.old"):
        if (folder / STATE).is_file():
            return folder
    return None


def load_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / STATE, weights_only=False)


def prompt_dir(path: Path) -> tuple[Path, Path]:
    """(run folder, prompt folder) for a run folder (best/ first, then prompt/) or a prompt folder in one."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such folder; pass the --out folder of a `softprompt train` run")
    if (path / "softprompt.json").is_file():
        return path.parent, path
    for name in (BEST, PROMPT, CHECKPOINT):
        if (path / name / "softprompt.json").is_file():
            return path, path / name
    raise CheckpointError(f"{path} holds no trained prompt (no {BEST}/, {PROMPT}/ or {CHECKPOINT}/); "
                          f"finish a `softprompt train --out {path}` run first")


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
