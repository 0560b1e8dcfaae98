"""The run folder a training writes and that eval, generate and inspect read back.

    RUN/config.yaml     resolved train arguments (the base model's name or path among them)
    RUN/metrics.jsonl   one JSON object per log or eval event
    RUN/curves.png      training loss and dev metric against the step
    RUN/checkpoint/     PromptModel.save, Accelerate's training state (optimizer, scheduler, every
                        process's RNG) and trainer_state.json (step, best score), written last
    RUN/best/           export of the prompt with the best dev score
    RUN/prompt/         export at the end of training

A folder that holds a run is only written over when asked (``--overwrite``, ``--resume``), and
then only once the new run has something to write. Every file is written beside its destination
and moved into place with ``os.replace``, every folder through ``.<name>.new`` (see
:func:`softprompt.checkpoint.replace_folder`), so a run killed at any instant leaves the previous
version or the new one, and :func:`recover` finishes or rolls back what a kill interrupted before
anything reads the folder again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import is_prompt_folder, read_meta, read_tensors, recover_folder, replace_folder, staging_folder
from .errors import CheckpointError, TrainError
from .model import PromptModel

CONFIG, METRICS, CURVES = "config.yaml", "metrics.jsonl", "curves.png"
CHECKPOINT, BEST, PROMPT, STATE = "checkpoint", "best", "prompt", "trainer_state.json"
FOLDERS = (CHECKPOINT, BEST, PROMPT)
LOCK = ".training.pid"
"""Holds the process id of the training that writes the folder, while it runs."""


def _checkpoint_complete(folder: Path) -> bool:
    return (folder / STATE).is_file()


def training_pid(run: Path) -> int | None:
    """The process id of a training that is writing `run` right now, if one is."""
    try:
        pid = int((run / LOCK).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() else None


def lock(run: Path) -> None:
    (run / LOCK).write_text(str(os.getpid()))


def unlock(run: Path) -> None:
    (run / LOCK).unlink(missing_ok=True)


def recover(run: Path) -> list[str]:
    """Finish or roll back every publish a kill interrupted; one notice per repair.

    Nothing is touched while a training is writing the folder: its half-written folders are its own.
    """
    if training_pid(run) is not None:
        return []
    notices = []
    for name in FOLDERS:
        done = recover_folder(run / name, _checkpoint_complete if name == CHECKPOINT else is_prompt_folder)
        if done:
            notices.append(done)
    for leftover in run.glob(".*"):
        if leftover.is_dir() and any(leftover.name.lstrip(".").startswith(f"{name}.") for name in FOLDERS):
            shutil.rmtree(leftover, ignore_errors=True)  # staging of a save inside a killed checkpoint, older names
        elif leftover.is_file() and ".tmp" in leftover.name:  # a config, metrics or curves file killed mid-write
            leftover.unlink(missing_ok=True)
    return notices


def holds_run(run: Path) -> bool:
    names = {CONFIG, METRICS, LOCK, *FOLDERS} | {f".{n}.{s}" for n in FOLDERS for s in ("new", "old")}
    return run.is_dir() and any((run / name).exists() for name in names)


def check_out(run: Path, overwrite: bool, resume: bool) -> None:
    """Refuse an --out folder that would lose something: a run (unless asked), a live run, or files of another kind."""
    if run.exists() and not run.is_dir():
        raise TrainError(f"--out {run} is a file; name a folder for the run")
    pid = training_pid(run)
    if pid is not None:
        raise TrainError(f"--out {run} is being written by another softprompt train (process {pid}); "
                         "wait for it to end or choose another --out")
    if resume or not run.is_dir():
        return
    if holds_run(run):
        if not overwrite:
            what = ""
            try:
                values = read_config(run)
                what = f" ({values.get('method')} on {values.get('model')})"
            except CheckpointError:
                pass
            raise TrainError(f"--out {run} already holds a run{what}; pass --resume to continue it, "
                             f"--overwrite to replace it, or choose another --out")
        return
    other = sorted(p.name for p in run.iterdir())
    if other:
        shown = ", ".join(other[:5]) + (" ..." if len(other) > 5 else "")
        raise TrainError(f"--out {run} holds files that are not a run ({shown}); choose a new or empty folder")


def start(run: Path, values: dict[str, Any]) -> None:
    """Make `run` the new run's folder: the old run's files go, the new config is written."""
    run.mkdir(parents=True, exist_ok=True)
    for name in (METRICS, CURVES, *FOLDERS):
        for path in (run / name, run / f".{name}.new", run / f".{name}.old", run / f"..{name}.new.new"):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    for path in run.glob("eval_*.json"):
        path.unlink()
    lock(run)
    write_config(run, values)


def write_config(run: Path, values: dict[str, Any]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    temp = run / f".{CONFIG}.tmp"
    temp.write_text(yaml.safe_dump(values, sort_keys=False))
    os.replace(temp, run / CONFIG)


def read_config(run: Path) -> dict[str, Any]:
    """The run's resolved train arguments, checked enough that the commands can rely on them."""
    path = run / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run} is not a softprompt run folder: it has no {CONFIG}; "
                              f"pass the --out folder of a `softprompt train` run")
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is damaged (not valid YAML: {first}); restore it or train again") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} is damaged: it holds a {type(values).__name__}, not the run's settings")
    for key in ("method", "model", "task_type"):
        if not isinstance(values.get(key), str):
            raise CheckpointError(f"{path} is damaged: {key!r} is missing or not a string; restore it or train again")
    return values


def log_event(run: Path, event: dict[str, Any]) -> None:
    with open(run / METRICS, "a") as f:
        f.write(json.dumps(event) + "\n")


def read_events(run: Path) -> list[dict[str, Any]]:
    path = run / METRICS
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            continue
    return events


def drop_events_after(run: Path, step: int) -> None:
    """On resume: forget what the killed run logged past its checkpoint, which the resumed run logs again."""
    kept = [e for e in read_events(run) if e.get("step", 0) <= step and e.get("event") != "end"]
    temp = run / f".{METRICS}.tmp"
    temp.write_text("".join(json.dumps(e) + "\n" for e in kept))
    os.replace(temp, run / METRICS)


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


def save_checkpoint(run: Path, pm: PromptModel, accelerator: Any, state: dict[str, Any]) -> None:
    """Prompt, Accelerate's state and the trainer's counters into RUN/checkpoint, swapped in as a whole.

    Every process takes part: each writes its own RNG state into the staging folder.
    """
    staging = staging_folder(run / CHECKPOINT)
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        pm.save(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        temp = staging / f".{STATE}.tmp"
        temp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(temp, staging / STATE)  # last: marks the checkpoint complete
        replace_folder(staging, run / CHECKPOINT)
    accelerator.wait_for_everyone()


def checkpoint_dir(run: Path) -> Path | None:
    """The last complete checkpoint, if any (after :func:`recover`)."""
    folder = run / CHECKPOINT
    return folder if _checkpoint_complete(folder) else None


AGAIN = "train the run again with --overwrite instead of --resume"


def trainer_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); {AGAIN}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path} is damaged: no step count; {AGAIN}")
    return state


ACCELERATE_FILES = ("optimizer.bin", "custom_checkpoint_0.pkl")  # the optimizer; the scheduler, registered
RNG_KEYS = {"random_state", "numpy_random_seed", "torch_manual_seed"}


def check_training_state(folder: Path, process: int) -> None:
    """Refuse a checkpoint whose Accelerate files (optimizer, scheduler, this process's RNG) are missing or damaged.

    Accelerate itself skips a random-state file it cannot read with a log line only; the resumed run
    would then draw other dropout masks than the interrupted one, so here that is an error too.
    """
    import torch

    for name in (*ACCELERATE_FILES, f"random_states_{process}.pkl"):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing, so the checkpoint cannot be resumed exactly; {AGAIN}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # whatever unpickling a cut or overwritten file raises: the file is damaged
            raise CheckpointError(f"{path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                  f"{AGAIN}") from None
        if name.startswith("random_states") and not (isinstance(state, dict) and RNG_KEYS <= set(state)):
            raise CheckpointError(f"{path} is damaged: it holds no random-number states; {AGAIN}")


def prompt_dir(path: Path) -> tuple[Path, Path]:
    """(run folder, prompt folder) for a run folder (best/ first, then prompt/, then checkpoint/) or a prompt folder in one."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such folder; pass the --out folder of a `softprompt train` run")
    if (path / "softprompt.json").exists() or (path / "prompts.safetensors").exists():
        _check_prompt(path)
        return path.parent, path
    for notice in recover(path):  # said, never silent: the user sees which version of a folder came back
        print(f"softprompt: {notice}", file=sys.stderr)
    for name in FOLDERS[1:] + FOLDERS[:1]:  # best, prompt, checkpoint
        if (path / name).is_dir():
            _check_prompt(path / name)  # a damaged folder is an error, never skipped for the next one
            return path, path / name
    raise CheckpointError(f"{path} holds no trained prompt (no {BEST}/, {PROMPT}/ or {CHECKPOINT}/); "
                          f"finish a `softprompt train --out {path}` run first")


def _check_prompt(folder: Path) -> None:
    read_meta(folder)
    read_tensors(folder)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
