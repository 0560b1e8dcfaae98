"""Run folders lose nothing and say what they do: overwrite, resume, interrupted publishes, damaged files,
Ctrl-C, out-of-range options, inputs longer than the model's positions, headers, single-class data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from softprompt import cli

import _tiny
from test_cli import assert_fails

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("run")
    return {"bert": _tiny.bert(root / "bert"), "gpt2": _tiny.gpt2(root / "gpt2"),
            "train": _tiny.sentiment(root / "train.jsonl"), "dev": _tiny.sentiment(root / "dev.jsonl", 16, seed=1),
            "root": root}


def _train(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(files["bert"]), "--data", str(files["train"]), "--out", str(out),
            "--num-virtual-tokens", "4", "--batch-size", "8", "--lr", "0.05", "--log-every", "2", *extra]


def _subprocess(*argv: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "softprompt.cli", *argv], env=ENV, capture_output=True, text=True, **kwargs)


def _command_fails(*argv: str, expected: tuple[str, ...] = ()) -> str:
    """The installed command exits 2 with one line on stderr holding every expected text, and prints nothing."""
    done = _subprocess(*argv)
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("softprompt") and done.stdout == "", err
    for text in expected:
        assert text in err, err
    return err


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- losing work -----------------------------------------------------------------------------------
def test_a_run_folder_is_not_overwritten_without_asking(files, tmp_path, capsys) -> None:
    out = tmp_path / "r"
    assert cli.main(_train(files, out, "--max-steps", "4", "--dev", str(files["dev"]))) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert_fails(_train(files, out, "--max-steps", "4"), capsys, "already holds a run (p-tuning-v2", "--overwrite", "--resume")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # A folder of other files is no run folder: nothing is written into it.
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    assert_fails(_train(files, tmp_path / "other", "--max-steps", "2"), capsys, "holds files that are not a run", "notes.txt")
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]


def test_the_command_refuses_a_run_folder_and_a_folder_of_other_files(files, trained, tmp_path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    before = _tree(run)
    _command_fails(*_train(files, run, "--max-steps", "4"), expected=("already holds a run (p-tuning-v2", "--overwrite"))
    assert _tree(run) == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/important.txt").write_text("keep me")
    _command_fails(*_train(files, tmp_path / "mine", "--max-steps", "2"), expected=("not a run", "important.txt"))
    assert _tree(tmp_path / "mine") == {"important.txt": b"keep me"}


def test_an_overwriting_run_killed_before_it_writes_leaves_the_old_run_whole(files, trained, tmp_path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    before = _tree(run)
    # A new run that would first write at step 1,000 is killed (SIGKILL) once it trains.
    argv = _train(files, run, "--overwrite", "--method", "prompt-tuning", "--max-steps", "1000", "--log-every", "1000",
                  "--eval-every", "1000", "--dev-fraction", "0")
    process = subprocess.Popen([sys.executable, "-m", "softprompt.cli", *argv], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:  # the setup's notice: the model is loaded, the steps begin
        if "inputs are capped" in line:
            break
    time.sleep(0.5)
    process.kill()
    process.wait()
    assert _tree(run) == before
    done = _subprocess("inspect", str(run))
    assert done.returncode == 0 and json.loads(done.stdout)["method"] == "p-tuning-v2"


def test_overwrite_keeps_the_old_run_until_the_new_one_writes(files, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "r"
    assert cli.main(_train(files, out, "--max-steps", "4", "--dev", str(files["dev"]))) == 0
    config, metrics = (out / "config.yaml").read_text(), (out / "metrics.jsonl").read_text()

    def crash(self, rows):
        raise KeyboardInterrupt  # the new run dies in its first step

    monkeypatch.setattr("softprompt.train.Trainer.step", crash)
    assert cli.main(_train(files, out, "--overwrite", "--method", "prompt-tuning", "--max-steps", "4")) == 130
    assert (out / "config.yaml").read_text() == config and (out / "metrics.jsonl").read_text() == metrics
    assert (out / "best").is_dir()
    monkeypatch.undo()
    # Replaced for real: the old best/ goes with the old run, so eval scores the new run's prompt.
    capsys.readouterr()
    assert cli.main(_train(files, out, "--overwrite", "--method", "prompt-tuning", "--max-steps", "4",
                           "--dev-fraction", "0")) == 0
    assert not (out / "best").exists()
    capsys.readouterr()
    assert cli.main(["inspect", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "prompt-tuning" and info["prompt"] == str(out / "prompt")


def test_a_kill_between_the_renames_of_best_is_repaired(files, tmp_path, capsys) -> None:
    out = tmp_path / "r"
    assert cli.main(_train(files, out, "--max-steps", "4", "--dev", str(files["dev"]))) == 0
    # What a SIGKILL between `best -> .best.old` and `.best.new -> best` leaves, plus a half-written checkpoint.
    shutil.copytree(out / "best", out / ".best.new")
    (out / ".best.new/softprompt.json").unlink()  # not complete: the old one must come back
    os.replace(out / "best", out / ".best.old")
    (out / ".checkpoint.new").mkdir()
    (out / ".checkpoint.new.4711").mkdir()  # staging of an older layout
    done = _subprocess("eval", "--prompt", str(out), "--data", str(files["dev"]))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prompt"] == str(out / "best")
    assert f"restored {out / 'best'} from .best.old" in done.stderr and f"using {out / 'best'}" in done.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    # A complete .best.new beside a missing best/ was about to be published: it is.
    shutil.copytree(out / "best", out / ".best.new")
    (out / ".best.new/marker").write_text("new")
    os.replace(out / "best", out / ".best.old")
    assert cli.main(["inspect", str(out)]) == 0
    assert (out / "best/marker").read_text() == "new" and not (out / ".best.old").exists()


# -- resuming --------------------------------------------------------------------------------------
def test_resume_refuses_flags_that_conflict_with_the_checkpoint(files, tmp_path, capsys) -> None:
    out = tmp_path / "r"
    assert cli.main(_train(files, out, "--max-steps", "4", "--save-every", "2", "--dev", str(files["dev"]))) == 0
    err = _command_fails(*_train(files, out, "--resume", "--method", "prompt-tuning", "--lr", "0.3", "--max-steps", "4"),
                         expected=("--method prompt-tuning (the checkpoint has p-tuning-v2)",
                                   "--lr 0.3 (the checkpoint has 0.05)"))
    assert "--max-steps" not in err
    # Settings that can change on resume apply, and the output says so.
    capsys.readouterr()
    assert cli.main(["train", "--out", str(out), "--resume", "--max-steps", "6", "--patience", "0"]) == 0
    captured = capsys.readouterr()
    assert "--max-steps 6 (was 4)" in captured.err and json.loads(captured.out)["steps"] == 6
    # Labels the checkpoint does not know are an error that names them.
    other = tmp_path / "other.jsonl"
    other.write_text(files["train"].read_text() + '{"text": "the film", "label": "mixed"}\n'
                     '{"text": "a film", "label": "meh"}\n')
    _command_fails("train", "--out", str(out), "--resume", "--data", str(other), "--max-steps", "8",
                   expected=("'meh', 'mixed'", "does not know"))


def test_the_loss_logged_after_a_resume_is_the_uninterrupted_one(files, tmp_path, monkeypatch) -> None:
    flags = ["--max-steps", "12", "--save-every", "3", "--log-every", "5", "--dev-fraction", "0", "--head-dropout", "0",
             "--prefix-dropout", "0"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert cli.main(_train(files, straight, *flags)) == 0
    from softprompt.train import Trainer

    real = Trainer.step

    def step(self, rows):
        if self.state["step"] == 7:
            raise KeyboardInterrupt  # Ctrl-C after the checkpoint of step 6, inside a logging window
        return real(self, rows)

    monkeypatch.setattr(Trainer, "step", step)
    assert cli.main(_train(files, stopped, *flags)) == 130
    monkeypatch.undo()
    assert cli.main(_train(files, stopped, *flags, "--resume")) == 0

    def losses(run: Path) -> list[tuple[int, float]]:
        events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(e["step"], e["loss"]) for e in events if e["event"] == "train"]

    assert [s for s, _ in losses(straight)] == [5, 10, 12]
    assert losses(stopped) == losses(straight)


def test_a_resume_after_sigkill_at_any_moment_logs_the_uninterrupted_losses(files, tmp_path) -> None:
    flags = ["--max-steps", "120", "--save-every", "7", "--log-every", "5", "--dev-fraction", "0"]  # dropout on
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _subprocess(*_train(files, straight, *flags)).returncode == 0
    process = subprocess.Popen([sys.executable, "-m", "softprompt.cli", *_train(files, killed, *flags)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint/trainer_state.json").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    time.sleep(0.2)  # somewhere after it: inside a logging window, maybe inside a save
    process.kill()
    process.wait()
    assert not (killed / "prompt").exists(), "the run finished before the kill; make it longer"
    done = _subprocess(*_train(files, killed, *flags, "--resume"))
    assert done.returncode == 0, done.stderr

    def losses(run: Path) -> list[tuple[int, float]]:
        events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(e["step"], e["loss"]) for e in events if e["event"] == "train"]

    assert [s for s, _ in losses(straight)] == list(range(5, 121, 5))
    assert losses(killed) == losses(straight)
    assert _tree(killed / "prompt") == _tree(straight / "prompt")


@pytest.mark.slow
def test_a_two_process_resume_restores_every_process_random_state(files, tmp_path) -> None:
    # Dropout is on (the head's 0.1), and each process draws its own masks from its own RNG: the run resumed
    # from step 4 gives the prompt of the run that went straight to step 8 only if both processes' states
    # come back. A constant rate after no warm-up makes the 4-step run the first half of the 8-step one.
    # torchrun, not `accelerate launch --cpu`: on a machine without GPUs the latter starts one process only.
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "softprompt.cli"]
    flags = ["--schedule", "constant", "--warmup-steps", "0", "--dev-fraction", "0", "--save-every", "2"]

    def launched(*argv: str) -> None:
        done = subprocess.run([*launch, *argv], env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launched(*_train(files, straight, *flags, "--max-steps", "8"))
    launched(*_train(files, resumed, *flags, "--max-steps", "4"))
    assert {p.name for p in (resumed / "checkpoint").glob("random_states_*.pkl")} == {"random_states_0.pkl",
                                                                                      "random_states_1.pkl"}
    launched(*_train(files, resumed, *flags, "--max-steps", "8", "--resume"))
    assert _tree(resumed / "prompt") == _tree(straight / "prompt")


# -- signals and damaged files -------------------------------------------------------------------------
def test_ctrl_c_names_the_checkpoint_and_exits_130(files, tmp_path) -> None:
    out = tmp_path / "r"
    argv = _train(files, out, "--epochs", "400", "--min-steps", "1", "--save-every", "5", "--dev-fraction", "0")
    # A shell that starts the test run in the background (`cmd &`) ignores SIGINT in it and its children, and
    # Python keeps an ignored SIGINT ignored: Ctrl-C gets its default action back in the command, as in a terminal.
    process = subprocess.Popen([sys.executable, "-m", "softprompt.cli", *argv], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "checkpoint/trainer_state.json").exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read() if process.stderr else ""
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"softprompt: interrupted; the last checkpoint is {out / 'checkpoint'} (step ")
    assert last.endswith("add --resume to continue")


@pytest.fixture(scope="module")
def trained(files: dict[str, Path]) -> Path:
    out = files["root"] / "trained"
    assert cli.main(_train(files, out, "--max-steps", "4", "--dev", str(files["dev"]))) == 0
    return out


@pytest.mark.parametrize("damage, expected", [
    (lambda run: (run / "best/prompts.safetensors").write_bytes(b""), "best/prompts.safetensors is damaged"),
    (lambda run: (run / "best/prompts.safetensors").write_bytes((run / "best/prompts.safetensors").read_bytes()[:300]),
     "best/prompts.safetensors is damaged"),
    (lambda run: (run / "best/softprompt.json").write_text('{"format_version": 1, "base_model": [], "tasks": {}}'),
     "'base_model' is a list"),
    (lambda run: (run / "best/softprompt.json").write_text('{"format_version": 1, "base_model": {}}'), "'tasks' is missing"),
    (lambda run: (run / "best/softprompt.json").write_text("{"), "best/softprompt.json is damaged (not valid JSON"),
    (lambda run: (run / "best/softprompt.json").write_text(
        json.dumps(json.loads((run / "best/softprompt.json").read_text()) | {"tasks": {"default": {"method": "p-tuning-v2",
                                                                                                  "layers": "all"}}})),
     "best/softprompt.json is damaged"),
    (lambda run: (run / "config.yaml").write_text("method: [p-tuning-v2\n"), "config.yaml is damaged (not valid YAML"),
    (lambda run: (run / "config.yaml").write_text("- a list\n"), "config.yaml is damaged"),
    (lambda run: (run / "config.yaml").write_text("method: p-tuning-v2\n"), "'model' is missing"),
], ids=["empty-tensors", "truncated-tensors", "meta-wrong-type", "meta-missing-key", "meta-not-json", "meta-bad-config",
        "config-not-yaml", "config-a-list", "config-missing-key"])
def test_damaged_files_are_one_line_errors(trained, tmp_path, files, capsys, damage, expected) -> None:
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    damage(run)
    assert_fails(["eval", "--prompt", str(run), "--data", str(files["dev"])], capsys, expected)
    assert_fails(["inspect", str(run)], capsys, expected)


@pytest.mark.parametrize("name, damage, expected", [
    ("optimizer.bin", b"", "optimizer.bin is damaged"),
    ("custom_checkpoint_0.pkl", None, "custom_checkpoint_0.pkl is missing"),
    ("random_states_0.pkl", b"\x80\x04junk", "random_states_0.pkl is damaged"),
    ("random_states_0.pkl", None, "random_states_0.pkl is missing"),
    ("trainer_state.json", b"{", "trainer_state.json is damaged"),
    ("prompts.safetensors", b"", "checkpoint/prompts.safetensors is damaged"),
], ids=["optimizer-empty", "scheduler-missing", "rng-damaged", "rng-missing", "state-not-json", "prompt-empty"])
def test_a_damaged_training_state_is_refused_on_resume(trained, tmp_path, capsys, name, damage, expected) -> None:
    # Accelerate alone would resume with fresh random states when their file does not read: no longer exact.
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    path = run / "checkpoint" / name
    path.unlink()
    if damage is not None:
        path.write_bytes(damage)
    assert_fails(["train", "--out", str(run), "--resume", "--max-steps", "6"], capsys, expected,
                 "--overwrite" if name != "prompts.safetensors" else "again")


def test_damaged_files_through_the_command(trained, files, tmp_path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    (run / "checkpoint/random_states_0.pkl").write_bytes(b"")
    before = _tree(run)
    _command_fails("train", "--out", str(run), "--resume", "--max-steps", "6",
                   expected=("checkpoint/random_states_0.pkl is damaged",))
    assert _tree(run) == before  # the refused resume touched nothing
    meta = (run / "best/softprompt.json").read_text()
    (run / "best/softprompt.json").write_text(json.dumps(json.loads(meta) | {"tasks": "default"}))
    _command_fails("eval", "--prompt", str(run), "--data", str(files["dev"]),
                   expected=("best/softprompt.json is damaged: 'tasks' is a str",))
    (run / "best/softprompt.json").write_text(meta)
    (run / "config.yaml").write_text("method: p-tuning-v2\nmodel: [unclosed\n")
    _command_fails("inspect", str(run), expected=("config.yaml is damaged (not valid YAML",))


def test_a_best_prompt_of_another_run_is_called_damage(trained, tmp_path, capsys) -> None:
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    values = yaml.safe_load((run / "config.yaml").read_text()) | {"method": "prompt-tuning"}
    (run / "config.yaml").write_text(yaml.safe_dump(values))
    assert_fails(["inspect", str(run)], capsys, "holds a p-tuning-v2 prompt but the run's config.yaml says prompt-tuning")


# -- options and limits ----------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--batch-size", "-4"), ("--max-steps", "-1"),
                                         ("--max-steps", "0"), ("--epochs", "0"), ("--epochs", "-2"),
                                         ("--eval-every", "0"), ("--log-every", "0"), ("--grad-accum", "0"),
                                         ("--lr", "0"), ("--num-virtual-tokens", "0")])
def test_numbers_out_of_range_are_refused_before_any_model_loads(flag, value, tmp_path, files, capsys) -> None:
    # The model does not exist: the number must be refused first.
    assert_fails(["train", "--model", "no-such-model", "--data", str(files["train"]), "--out", str(tmp_path / "r"),
                  flag, value], capsys, f"{flag} {value}")


def test_numbers_out_of_range_through_the_command(files, tmp_path) -> None:
    # Once silent success with 0 steps, a full epoch instead of none, a ZeroDivisionError (every value of the
    # request is checked in process above).
    for flag, value in (("--max-steps", "0"), ("--epochs", "0"), ("--grad-accum", "0")):
        _command_fails("train", "--model", "no-such-model", "--data", str(files["train"]), "--out", str(tmp_path / "r"),
                       flag, value, expected=(f"{flag} {value}: give a whole number of at least 1",))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, expected", [
    (["eval", "--batch-size", "0"], "--batch-size 0"), (["eval", "--batch-size", "-1"], "--batch-size -1"),
    (["eval", "--limit", "0"], "--limit 0"), (["generate", "--max-new-tokens", "0"], "--max-new-tokens 0"),
], ids=["eval-batch-0", "eval-batch-negative", "eval-limit-0", "generate-tokens-0"])
def test_numbers_out_of_range_in_eval_and_generate(trained, files, capsys, argv, expected) -> None:
    command, *flags = argv
    data = ["--data", str(files["dev"])]
    assert_fails([command, "--prompt", str(trained), *data, *flags], capsys, expected, "give a whole number of at least 1")


def test_inspect_and_demo_refuse_counts_below_one(trained, capsys, tmp_path) -> None:
    assert_fails(["inspect", str(trained), "--nearest", "0"], capsys, "--nearest 0: give a whole number of at least 1")
    assert_fails(["demo", "--examples", "0", "--out", str(tmp_path / "d")], capsys, "--examples 0")
    assert not (tmp_path / "d").exists()


def test_a_gpt2_input_of_126_tokens_with_4_soft_tokens_is_cut_with_a_notice(files, tmp_path) -> None:
    rows = tmp_path / "long.jsonl"
    words = ["good", "bad", "fine"] * 42  # 126 words, 126 tokens: with P = 4 the 128 positions would overflow
    rows.write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i]), "label": ["neg", "pos"][i % 2]}) + "\n"
                            for i in range(8)))
    out = tmp_path / "r"
    done = _subprocess("train", "--model", str(files["gpt2"]), "--method", "prompt-tuning", "--data", str(rows),
                       "--out", str(out), "--num-virtual-tokens", "4", "--max-steps", "1", "--dev-fraction", "0")
    assert done.returncode == 0, done.stderr
    assert "--max-length 128 does not fit the model's positions with the prompt; inputs are capped at 124 tokens" in done.stderr
    assert "8 of 8 training rows are longer than 124 tokens (--max-length) and are cut to fit, keeping their start" in done.stderr
    done = _subprocess("generate", "--prompt", str(out), "--data", str(rows))
    assert done.returncode == 0 and len(done.stdout.split()) == 8, done.stderr
    assert "8 of 8 input rows are longer than 124 tokens" in done.stderr


@pytest.mark.slow
def test_minilm_p_tuning_v2_with_max_length_512_fits_its_positions(tmp_path) -> None:
    # The real MiniLM has 512 positions and P-Tuning v2 numbers the input after its 16 prefix positions.
    rows = tmp_path / "long.jsonl"
    text = " ".join(["a gorgeous , witty film", "a tired mess"] * 120)  # about 600 tokens
    rows.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for label in ("pos", "neg") * 2))
    out = tmp_path / "r"
    done = _subprocess("train", "--model", "minilm", "--method", "p-tuning-v2", "--data", str(rows), "--out", str(out),
                       "--max-length", "512", "--max-steps", "1", "--batch-size", "2", "--dev-fraction", "0")
    assert done.returncode == 0, done.stderr
    assert "--max-length 512 does not fit the model's positions with the prompt; inputs are capped at 496 tokens" in done.stderr
    assert "4 of 4 training rows are longer than 496 tokens" in done.stderr
    done = _subprocess("generate", "--prompt", str(out), text)
    assert done.returncode == 0 and done.stdout.strip() in ("neg", "pos"), done.stderr


def test_a_cut_input_keeps_the_template_prompt_and_anchors(files) -> None:
    import softprompt
    from softprompt.models import load_model

    model, tokenizer = load_model(str(files["gpt2"]))
    config = softprompt.PTuningConfig(template="[P:2] {text} [P:2] it was very [MASK]", label_words={"neg": "bad", "pos": "good"})
    pm = softprompt.attach(model, config, tokenizer)
    long = " ".join(["the", "movie", "is", "fine"] * 50)
    batch = pm.tokenize([long, "the movie is bad"], max_length=16)
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    anchors = tokenizer("it was very", add_special_tokens=False)["input_ids"]
    assert len(anchors) == 3 and len(ids) == 16
    # Slots, then the field cut to what fits, then slots and the anchors: the end the label word follows.
    assert tokenizer.decode(ids[2:11]) == "the movie is fine the movie is fine the"
    assert ids[-3:] == anchors
    short = batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist()
    assert ids[:2] == short[:2] and ids[-5:] == short[-5:]  # the same soft slots and anchors as an uncut row


@pytest.mark.parametrize("model", ["gpt2", "bert"])
def test_a_cut_row_of_several_fields_keeps_a_part_of_each(files, model) -> None:
    import softprompt
    from softprompt.models import load_model

    base, tokenizer = load_model(str(files[model]))
    pm = softprompt.attach(base, softprompt.PTuningV2Config(num_virtual_tokens=4, num_labels=2), tokenizer)
    premise, hypothesis = " ".join(["the", "movie", "is", "fine"] * 50), "the film was bad"
    short = {"premise": "the movie is fine", "hypothesis": hypothesis}
    batch = pm.tokenize([{"premise": premise, "hypothesis": hypothesis}, short], max_length=16)
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    empty = tokenizer("")["input_ids"]
    begin, end = empty[:1], empty[1:]
    fields = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (premise, " " + hypothesis)]
    assert len(ids) == 16 and len(fields[1]) == 4
    # The long premise gives up its end; the short hypothesis after it is whole.
    assert ids[: len(begin)] == begin and ids[len(ids) - len(end):] == end
    assert ids[len(begin): len(ids) - len(end)] == fields[0][: 16 - len(empty) - 4] + fields[1]
    # A row that fits is the fields joined by a space, as before.
    whole = batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist()
    assert whole == tokenizer("the movie is fine the film was bad")["input_ids"]


def test_inputs_longer_than_the_positions_are_capped_with_a_notice(files, tmp_path, capsys) -> None:
    long = tmp_path / "long.jsonl"
    words = ["good", "bad"] * 100  # 200 tokens; GPT-2 and BERT here have 128 positions
    long.write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i]), "label": ["neg", "pos"][i % 2]}) + "\n"
                            for i in range(16)))
    for model, method in ((files["gpt2"], "prompt-tuning"), (files["gpt2"], "p-tuning-v2"), (files["bert"], "p-tuning-v2")):
        out = tmp_path / f"{model.name}-{method}"
        assert cli.main(["train", "--model", str(model), "--method", method, "--data", str(long), "--out", str(out),
                         "--num-virtual-tokens", "4", "--max-length", "512", "--max-steps", "2", "--dev-fraction", "0"]) == 0
        err = capsys.readouterr().err
        assert "--max-length 512 does not fit the model's positions with the prompt; inputs are capped at 124 tokens" in err
        assert "16 of 16 training rows are longer than 124 tokens (--max-length) and are cut to fit" in err
        assert cli.main(["eval", "--prompt", str(out), "--data", str(long)]) == 0
        assert "16 of 16 input rows are longer than 124 tokens" in capsys.readouterr().err


def test_a_header_read_as_data_is_caught(files, tmp_path, capsys) -> None:
    table = tmp_path / "t.csv"
    table.write_text("text,label\nthe movie was good,pos\nthe movie was bad,neg\n")
    assert_fails(["train", "--model", str(files["bert"]), "--data", str(table), "--columns", "text,label",
                  "--out", str(tmp_path / "r")], capsys, "t.csv:1", "looks like a header", "drop --columns")


def test_header_and_single_class_through_the_command(files, tmp_path) -> None:
    table = tmp_path / "t.tsv"
    table.write_text("sentence\tlabel\nthe movie was good\tpos\nthe movie was bad\tneg\n")
    _command_fails("train", "--model", str(files["bert"]), "--data", str(table), "--columns", "text,label",
                   "--out", str(tmp_path / "r"), expected=("t.tsv:1", "looks like a header"))
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": "the movie was good", "label": "pos"}) + "\n" for _ in range(8)))
    _command_fails("train", "--model", str(files["bert"]), "--data", str(one), "--out", str(tmp_path / "r"),
                   expected=("every row has the label 'pos'", "at least two classes"))
    assert not (tmp_path / "r").exists()


def test_single_class_data_is_refused(files, tmp_path, capsys) -> None:
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": "the movie was good", "label": "pos"}) + "\n" for _ in range(8)))
    assert_fails(["train", "--model", str(files["bert"]), "--data", str(one), "--out", str(tmp_path / "r")], capsys,
                 "every row has the label 'pos'", "at least two classes")


# -- defaults that learn -----------------------------------------------------------------------------
def test_without_dev_a_stratified_part_is_held_out_and_the_verdict_is_printed(files, tmp_path, capsys) -> None:
    out = tmp_path / "r"
    assert cli.main(_train(files, out, "--max-steps", "6", "--eval-every", "3")) == 0
    captured = capsys.readouterr()
    assert "no --dev file: 12 of the 64 training rows (19 %, stratified by label) are held out" in captured.err
    summary = json.loads(captured.out)
    assert summary["dev_examples"] == 12 and summary["train_examples"] == 52
    assert {"dev_accuracy", "dev_macro_f1", "majority_accuracy", "majority_macro_f1"} <= set(summary)
    assert "best prompt (step" in captured.err and "always answering" in captured.err


def test_a_collapsed_prompt_is_called_out(files, tmp_path, capsys) -> None:
    # One step at a tiny rate cannot move the fresh head off one class.
    out = tmp_path / "r"
    assert cli.main(_train(files, out, "--max-steps", "1", "--lr", "1e-6", "--dev", str(files["dev"]))) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert len(summary["dev_predictions"]) == 1
    assert "softprompt: warning: the best prompt predicts one class" in captured.err


def test_a_live_training_is_left_alone(files, tmp_path, capsys) -> None:
    out = tmp_path / "r"
    assert cli.main(_train(files, out, "--max-steps", "4", "--dev", str(files["dev"]))) == 0
    assert not (out / ".training.pid").exists()  # released at the end
    # While a training writes the folder (its process id in .training.pid), readers leave its staging
    # folders alone and a second training is refused.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".training.pid").write_text(str(sleeper.pid))
        (out / ".best.new").mkdir()
        assert cli.main(["inspect", str(out)]) == 0
        assert (out / ".best.new").is_dir()
        assert_fails(_train(files, out, "--resume", "--max-steps", "6"), capsys, f"another softprompt train (process {sleeper.pid})")
    finally:
        sleeper.kill()
        sleeper.wait()
    # Once that process is gone, the next command cleans up after it.
    assert cli.main(["inspect", str(out)]) == 0
    assert not (out / ".best.new").exists()


def test_the_installed_command_exits_2_with_one_line(files, trained, tmp_path) -> None:
    # The same checks as above, through the process boundary: exit status and stderr as a shell sees them.
    done = _subprocess("train", "--model", "no-such-model", "--data", str(files["train"]), "--out", str(tmp_path / "r"),
                       "--batch-size", "0")
    assert done.returncode == 2 and done.stderr.strip() == "softprompt: error: --batch-size 0: give a whole number of at least 1"
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    (run / "best/prompts.safetensors").write_bytes(b"")
    done = _subprocess("inspect", str(run))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "is damaged" in done.stderr
    assert done.stdout == ""
