"""reports/quality.py end to end on a few examples per row (--smoke), so the report script keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not DATA.is_dir(), reason=f"no datasets folder at {DATA}")
def test_quality_script_measures_every_row_and_renders(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "reports/quality.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "quality.md").read_text()
    assert "not measured" not in report
    rows = sorted((tmp_path / "results").glob("*/*.json"))
    tables = report.split("\n\n")
    sweep_lines = [line for table in tables if table.startswith("| sweep:") for line in table.splitlines()]
    table_lines = [line for line in report.splitlines() if line.startswith("| ") and line not in sweep_lines]
    experiments = report.count("\n## ")  # each has a header line here and a line in the summary table
    assert len(rows) == len(table_lines) - 2 * experiments - 1
    swept = 0
    for path in rows:
        row = json.loads(path.read_text())
        assert row["test"] and all(0 <= v <= 100 for v in row["test"].values()), path
        assert row["device"].startswith("CPU"), path
        trained = row["trainable_parameters"] > 0
        assert trained == ("untuned" not in path.stem and "hand" not in path.stem), path
        if trained:
            assert row["steps"] >= 1 and row["train_seconds"] > 0
        if "sweep" in row:  # smoke: two grid points on dev, the chosen one with two seeds on test
            swept += 1
            assert len(row["sweep"]) == 2 and row["chosen"] in [point["point"] for point in row["sweep"]]
            assert [seed["seed"] for seed in row["seeds"]] == [42, 43] and set(row["test_sd"]) == set(row["test"])
            stored = (path.parent / "seeds" / f"{path.stem}-seed43.json").read_text()
            assert json.loads(stored)["point"] == row["chosen"]
    assert swept == 5  # SmolLM2: SST-2 and RTE P-Tuning and Prompt Tuning, E2E Prompt Tuning
    assert len(sweep_lines) == 5 * 2 + 2 * 3  # a header and a rule per experiment, a line per grid point


def test_missing_data_is_skipped_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "reports/quality.py"), "--data", str(tmp_path / "none"),
                           "--out", str(tmp_path), "--only", "minilm-sst2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping minilm-sst2: sst2/train.tsv" in done.stderr
    assert "| not measured |" in (tmp_path / "quality.md").read_text()
